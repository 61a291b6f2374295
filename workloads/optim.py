"""MAE optimisation recipe: scaled LR, AdamW with selective decay, warmup + cosine."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


def scaled_lr(blr: float, global_batch_size: int) -> float:
    """Linear scaling rule of MAE: lr = blr * global_batch / 256."""
    return blr * global_batch_size / 256


@runtime_checkable
class ExemptsFromDecay(Protocol):
    """What the optimizer needs of a model: every method's `PretrainModel` keeps it, and so do
    MAE's MaskedAutoencoder and the encoders and decoders they are built of."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names (as in `named_parameters`) that take no weight decay."""
        ...


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: no decay on biases, norms and the names in `model.no_weight_decay()`
    (a plain module, e.g. a probe head, names none)."""
    skip = model.no_weight_decay() if isinstance(model, ExemptsFromDecay) else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:  # fixed pos embeds
            continue
        if param.ndim <= 1 or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups_weight_decay(model, weight_decay), lr=lr, betas=betas)


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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR, scaled by its optional "lr_scale" (layer-wise decay in fine-tuning)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


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
