"""MAE's learning-rate schedule: the linear scaling rule, warmup, then half-cycle cosine.

No torch here: the drivers that plan a run (`mimray sweep`, set-up of a trial) derive the
schedule without importing it; the workers apply it with `workloads.optim.set_lr`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def scaled_lr(blr: float, global_batch_size: int) -> float:
    """Linear scaling rule of MAE: lr = blr * global_batch / 256."""
    return blr * global_batch_size / 256


def lr_at(
    step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0
) -> float:
    """Linear warmup from 0 to peak over `warmup_steps`, then half-cycle cosine to `min_lr`."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """Step counts derived once by the driver, so every worker agrees on them."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    min_lr: float

    def lr(self, step: int) -> float:
        """The learning rate of global step `step` (set every iteration, as MAE does)."""
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr, self.min_lr)


def make_schedule(train: Mapping[str, Any], num_rows: int) -> Schedule:
    steps_per_epoch = num_rows // train["batch_size"]
    if steps_per_epoch < 1:
        raise ValueError(
            f"train.batch_size: {train['batch_size']} exceeds the {num_rows} training images; "
            "allowed: at most the dataset size"
        )
    return Schedule(
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * train["epochs"],
        warmup_steps=round(steps_per_epoch * train["warmup_epochs"]),
        peak_lr=scaled_lr(train["blr"], train["batch_size"]),
        min_lr=train["min_lr"],
    )
