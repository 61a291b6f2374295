"""One epoch of pretraining on one worker, in the shape of MAE's `engine_pretrain.py`.

`train_one_epoch` does the steps: it times the wait for each batch, drops undecodable rows,
sets the step's learning rate, runs the method's forward and loss under AMP, steps the
optimizer and calls the method's `after_optimizer_step` hook (its contract in
`workloads/methods/base.py`), and logs each step's loss. Everything per run (model,
optimizer, reporter, ...) is set up once by `workloads/pretrain.py` and passed in a
`WorkerSetup`; the epoch's totals over workers and its checkpoint are the loop's business.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workloads.distributed import unwrap
from workloads.live_metrics import TrainingMetrics
from workloads.methods.base import MethodOutput
from workloads.model_input import select_decodable, to_model_input
from workloads.optim import set_lr
from workloads.progress import EpochProgress
from workloads.run_reporter import Reporter
from workloads.schedule import Schedule


@dataclass
class WorkerSetup:
    """What one worker trains with: set up once by the loop, used by every epoch."""

    model: nn.Module  # prepared for data-parallel training (and compiled, if asked)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Schedule
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    reporter: Reporter
    live: TrainingMetrics
    world_size: int


@dataclass
class EpochStats:
    """What one epoch did on this worker (the loop sums them over workers)."""

    step: int  # global steps taken by the end of the epoch
    losses: list[float] = field(default_factory=list)
    seen: int = 0  # images read, decodable or not
    skipped: int = 0  # undecodable images among those trained on
    data_wait_s: float = 0.0
    elapsed_s: float = 0.0


def train_one_epoch(
    setup: WorkerSetup,
    batches: Iterable[dict[str, torch.Tensor]],
    epoch: int,
    step: int,
    progress: EpochProgress,
    done_steps: int = 0,
    after_step: Callable[[EpochStats], None] | None = None,
) -> EpochStats:
    """Train on `batches` (this worker's shard, one pass) from global step `step`.

    `epoch` counts from 0. Every worker ends the epoch at `schedule.steps_per_epoch` steps.
    `done_steps` steps of it were trained before a mid-epoch resume: their batches are read
    and passed over. `after_step(stats)` runs after every step (the preemption check).
    """
    setup.model.train()
    started = time.perf_counter()
    stats = EpochStats(step=step)
    to_skip = done_steps
    for wait, batch in _timed(batches):
        if to_skip:  # trained before the resume
            to_skip -= 1
            continue
        stats.seen += len(batch["image"])
        # Workers must take the same number of steps, or DDP's all-reduce hangs;
        # drain surplus batches rather than abandon the shard's iterator mid-stream.
        if len(stats.losses) + done_steps == setup.schedule.steps_per_epoch:
            continue
        stats.data_wait_s += wait
        computing = time.perf_counter()
        lr = setup.schedule.lr(stats.step)
        set_lr(setup.optimizer, lr)
        decodable, corrupt = select_decodable(batch)
        stats.skipped += corrupt
        images = to_model_input(
            decodable if decodable is not None else batch["image"], setup.device
        )
        out = _optimizer_step(setup, images, stats.step, weighted=decodable is not None)
        loss = out.loss.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at epoch {epoch} step {stats.step}")
        stats.losses.append(loss)
        stats.step += 1
        setup.live.record_step(wait + time.perf_counter() - computing, wait, len(images))
        progress.update(len(stats.losses) + done_steps, loss, len(images) * setup.world_size)
        metrics = {"train/loss": loss, "train/lr": lr}
        metrics.update({f"train/{k}": v for k, v in out.metrics.items()})
        setup.reporter.log_metrics(metrics, stats.step)
        if after_step is not None:
            after_step(stats)
    stats.elapsed_s = time.perf_counter() - started
    progress.close()
    return stats


def _optimizer_step(
    setup: WorkerSetup, images: torch.Tensor, step: int, *, weighted: bool
) -> MethodOutput:
    """Forward and loss under AMP, backward, optimizer step, then the method's hook."""
    with _autocast(setup.device, setup.amp_dtype):
        out: MethodOutput = setup.model(images)
    # A batch with nothing decodable still steps (DDP needs every rank), weightless.
    objective = out.loss if weighted else out.loss * 0.0
    setup.optimizer.zero_grad(set_to_none=True)
    setup.scaler.scale(objective).backward()
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    unwrap(setup.model).after_optimizer_step(step / max(1, setup.schedule.total_steps))
    return out


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """`train.precision` as the dtype AMP computes in (None: full precision)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _timed(iterator: Iterable[Any]) -> Iterator[tuple[float, Any]]:
    """Yield (seconds spent waiting for the item, item): the data-stall share of a step."""
    iterator = iter(iterator)
    while True:
        started = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield time.perf_counter() - started, item
