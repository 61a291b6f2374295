"""The pretrain loop: one `train_loop_per_worker` function run by every Ray Train worker.

It reads its Ray Data shard, trains the method's model, reports epoch metrics and checkpoints
through `ray.train.report`, and resumes from `ray.train.get_checkpoint()`. Rank 0 also
writes to the `Reporter` passed in the config (MLflow in production, a recorder in tests).

The config is plain data (the resolved spec as a dict), so nothing here depends on the
orchestrator's spec classes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from workloads.data.stream import batch_shuffle_options
from workloads.methods import get_method
from workloads.metrics import TrainingMetrics
from workloads.optim import build_optimizer, lr_at, scaled_lr, set_lr
from workloads.progress import EpochProgress
from workloads.reporting import NullReporter, Reporter

CHECKPOINT_FILE = "checkpoint.pt"
SPEC_FILE = "spec.json"
# ImageNet statistics, as in the MAE recipe; targets are normalised per patch anyway.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Schedule:
    """Step counts derived once by the driver, so every worker agrees on them."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    min_lr: float


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


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """The method's model from a resolved spec dict."""
    method = get_method(spec["method"]["name"])
    return method.build(spec["model"], method.knobs.model_validate(spec["method"]))


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, C) from Ray Data -> normalised float (B, C, H, W) on device."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def unwrap(model: nn.Module) -> nn.Module:
    """The method's own module inside torch.compile's and DDP's wrappers (their state_dict
    keys carry `_orig_mod.`/`module.` prefixes that checkpoints must not)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def select_decodable(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, int]:
    """The batch's decodable images and how many were not (sources mark them `ok=False`).

    None when nothing in the batch decoded; the caller then steps with zero weight.
    """
    if "ok" not in batch:
        return batch["image"], 0
    ok = batch["ok"].bool()
    corrupt = int((~ok).sum())
    if corrupt == len(ok):
        return None, corrupt
    return (batch["image"][ok] if corrupt else batch["image"]), corrupt


class DataQualityError(RuntimeError):
    """Too many undecodable images: the source is broken, not just a few bad records."""


def check_skipped_share(skipped: int, seen: int, threshold: float, epoch: int) -> None:
    if seen and skipped / seen > threshold:
        raise DataQualityError(
            f"data: {skipped} of {seen} images ({skipped / seen:.1%}) in epoch {epoch} could "
            f"not be decoded, above data.max_skipped_share={threshold:.1%}; fix the source "
            "or raise the threshold"
        )


def global_sum(values: list[int], device: torch.device) -> list[int]:
    """Element-wise sum over every worker (all ranks get the same totals)."""
    totals = torch.tensor(values, device=device, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    return [int(v) for v in totals.tolist()]


def global_mean(values: list[float], device: torch.device) -> float:
    """Mean over every worker's values (the epoch loss every rank saw, not rank 0's only)."""
    totals = torch.tensor([sum(values), float(len(values))], device=device, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    return (totals[0] / totals[1].clamp(min=1)).item()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    # Ray hard-sets `ray.train` to INFO inside workers (LoggingConfig cannot lower it): its
    # per-report lines would bury the progress lines. They stay in the session's worker logs.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    spec: dict[str, Any] = config["spec"]
    train: dict[str, Any] = spec["train"]
    schedule: Schedule = config["schedule"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    per_worker_batch = max(1, train["batch_size"] // world_size)

    torch.manual_seed(train["seed"] * 1000 + rank)
    device = ray.train.torch.get_device()
    model = build_model(spec)
    optimizer = build_optimizer(model, lr=schedule.peak_lr, weight_decay=train["weight_decay"])
    amp_dtype = autocast_dtype(train["precision"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            # CPU first: a GPU checkpoint would otherwise land on the saving rank's GPU.
            state = torch.load(
                os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=False
            )
        model.load_state_dict(state["model"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step = state["epoch"], state["step"]
    model = ray.train.torch.prepare_model(model)
    if state is not None:
        # After the move to the device: load_state_dict puts the optimizer state on its
        # parameters' device, so loaded before the move it stays on the CPU and step() fails.
        optimizer.load_state_dict(state["optimizer"])
    if train.get("compile"):
        # Compiled after prepare_model, i.e. around DDP: that is the order PyTorch documents
        # for DDP (its DDPOptimizer splits the graph at gradient buckets so all-reduce
        # overlaps the backward); compiling inside DDP would all-reduce after the backward.
        model = torch.compile(model)

    reporter: Reporter = config.get("reporter") or NullReporter()
    if rank != 0:
        reporter = NullReporter()
    reporter.start()
    live = TrainingMetrics(context.get_experiment_name(), spec["method"]["name"], rank)
    if rank == 0 and start_epoch:
        say(f"resuming at epoch {start_epoch} (step {step})")

    shard = ray.train.get_dataset_shard("train")
    try:
        for epoch in range(start_epoch, train["epochs"]):
            model.train()
            started, data_wait, losses = time.perf_counter(), 0.0, []
            batches = _timed(
                shard.iter_torch_batches(
                    batch_size=per_worker_batch,
                    drop_last=True,
                    prefetch_batches=2,
                    # Pinned host batches make the copy to the GPU asynchronous.
                    pin_memory=device.type == "cuda",
                    # A new row order every epoch (file/block order is reshuffled upstream).
                    **batch_shuffle_options(
                        spec["data"].get("shuffle", "buffer"),
                        spec["data"].get("shuffle_buffer", 1024),
                        train["seed"],
                        epoch,
                        rank,
                    ),
                )
            )
            seen = skipped = 0
            progress = EpochProgress(
                epoch + 1,
                train["epochs"],
                schedule.steps_per_epoch,
                enabled=rank == 0,
                every_s=config.get("progress_every_s"),
            )
            for wait, batch in batches:
                seen += len(batch["image"])
                # Workers must take the same number of steps, or DDP's all-reduce hangs;
                # drain surplus batches rather than abandon the shard's iterator mid-stream.
                if len(losses) == schedule.steps_per_epoch:
                    continue
                data_wait += wait
                computing = time.perf_counter()
                lr = lr_at(
                    step,
                    schedule.total_steps,
                    schedule.warmup_steps,
                    schedule.peak_lr,
                    schedule.min_lr,
                )
                set_lr(optimizer, lr)
                decodable, corrupt = select_decodable(batch)
                skipped += corrupt
                images = to_model_input(
                    decodable if decodable is not None else batch["image"], device
                )
                with _autocast(device, amp_dtype):
                    out = model(images)
                # A batch with nothing decodable still steps (DDP needs every rank), weightless.
                objective = out.loss if decodable is not None else out.loss * 0.0
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(objective).backward()
                scaler.step(optimizer)
                scaler.update()
                unwrap(model).after_optimizer_step(step / max(1, schedule.total_steps))
                loss = out.loss.item()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss} at epoch {epoch} step {step}")
                losses.append(loss)
                step += 1
                live.record_step(wait + time.perf_counter() - computing, wait, len(images))
                progress.update(len(losses), loss, len(images) * world_size)
                reporter.log_metrics(
                    {
                        "train/loss": loss,
                        "train/lr": lr,
                        **{f"train/{k}": v for k, v in out.metrics.items()},
                    },
                    step,
                )
            elapsed = time.perf_counter() - started
            progress.close()
            seen, skipped = global_sum([seen, skipped], device)
            check_skipped_share(skipped, seen, spec["data"]["max_skipped_share"], epoch + 1)
            epoch_metrics = {
                "epoch": epoch + 1,
                "step": step,
                "loss": global_mean(losses, device),
                "images_per_s": len(losses) * per_worker_batch * world_size / elapsed,
                "data_wait_s": data_wait,
                "data/images_seen": seen,
                "data/skipped": skipped,
                "epoch_time_s": elapsed,
            }
            monitor = config.get("knn_monitor")
            if monitor and (epoch + 1) % monitor["every"] == 0:
                from workloads.evaluation.monitor import knn_during_training  # imports this

                epoch_metrics.update(knn_during_training(unwrap(model), monitor, device))
            live.record_epoch(
                epoch + 1, epoch_metrics["loss"], epoch_metrics["images_per_s"], data_wait, elapsed
            )
            _report_epoch(model, optimizer, scaler, epoch_metrics, config, reporter, rank)
    finally:
        live.close()
        reporter.close()


def _report_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    metrics: dict[str, float],
    config: Mapping[str, Any],
    reporter: Reporter,
    rank: int,
) -> None:
    import ray.train

    train = config["spec"]["train"]
    epoch = int(metrics["epoch"])
    reporter.log_metrics(
        {k if "/" in k else f"epoch/{k}": v for k, v in metrics.items() if k != "epoch"}, epoch
    )
    if rank == 0:
        say(
            f"epoch {epoch}/{train['epochs']}  loss {metrics['loss']:.4f}  "
            f"{metrics['images_per_s']:.0f} img/s  ({metrics['epoch_time_s']:.1f}s)"
        )
    if epoch % train["checkpoint_every"] and epoch != train["epochs"]:
        ray.train.report(metrics)
        return
    dir_name = f"checkpoint_epoch_{epoch:04d}"
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:  # DDP keeps replicas identical: one copy of the state is enough
            state = {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step": int(metrics["step"]),
                "spec": config["spec"],
            }
            torch.save(state, os.path.join(folder, CHECKPOINT_FILE))
            # The spec alone, so an evaluation can size its encoder without loading weights.
            with open(os.path.join(folder, SPEC_FILE), "w") as f:
                json.dump(config["spec"], f)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)
    reporter.log_checkpoint(
        f"{config['run_path']}/{dir_name}", epoch, int(metrics["step"]), metrics
    )


def say(message: str) -> None:
    """One progress line on the driver's console.

    Ray Train patches `print` in workers to also go through its logger, which shows each
    line twice; writing to stdout directly shows it once.
    """
    sys.stdout.write(f"[mimray] {message}\n")
    sys.stdout.flush()


def _timed(iterator: Iterator[Any]) -> Iterator[tuple[float, Any]]:
    """Yield (seconds spent waiting for the item, item): the data-stall share of a step."""
    iterator = iter(iterator)
    while True:
        started = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield time.perf_counter() - started, item


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
