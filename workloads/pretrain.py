"""The pretrain loop: `pretrain(config, session)`, run by every worker.

In the shape of MAE's `main_pretrain.py`: it sets up (seed, model, optimizer, resume from the
session's latest checkpoint, reporter), then iterates epochs. Each epoch trains on the
worker's Ray Data shard (`workloads/engine.py::train_one_epoch`), sums what every worker saw,
runs the kNN monitor when asked, and reports the epoch's metrics and checkpoint through the
session (`workloads/checkpoint.py` writes it). Rank 0 also writes to the `Reporter` passed in
the config (MLflow in production, a recorder in tests).

The session (`workloads/session.py`) is where the loop runs: `train_loop_per_worker` is Ray
Train's entry point (a worker group's worker); the in-process path of one-worker runs calls
`pretrain` with its own session.

The config is plain data (`workloads/run_spec.py::PretrainLoopConfig`: the resolved spec's JSON
dump, every default filled in by the orchestrator), so nothing here depends on the
orchestrator's spec classes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from workloads.checkpoint import (
    ResumePoint,
    record_resume,
    restore_random_state,
    resume_point,
)
from workloads.console import say
from workloads.data.stream import PREFETCH_BATCHES, batch_shuffle_options
from workloads.distributed import global_mean, global_sum, unwrap
from workloads.engine import EpochStats, WorkerSetup, autocast_dtype, train_one_epoch
from workloads.evaluation.monitor import knn_during_training
from workloads.live_metrics import TrainingMetrics
from workloads.methods import get_method
from workloads.model_input import check_skipped_share
from workloads.optim import build_optimizer
from workloads.progress import EpochProgress
from workloads.run_reporter import NullReporter, Reporter
from workloads.run_spec import PretrainLoopConfig, RunSpecDump, TrainSection
from workloads.schedule import Schedule, make_schedule
from workloads.session import RayTrainSession, Session
from workloads.training_checkpoint import PreemptionNotice, save_checkpoint


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """The method's model from a resolved spec dict."""
    method = get_method(spec["method"]["name"])
    return method.build(spec["model"], method.knobs.model_validate(spec["method"]))


def train_loop_per_worker(config: PretrainLoopConfig) -> None:
    """Ray Train's entry point: the loop in one worker of a worker group."""
    # Ray hard-sets `ray.train` to INFO inside workers (LoggingConfig cannot lower it): its
    # per-report lines would bury the progress lines. They stay in the session's worker logs.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    session = RayTrainSession(
        async_upload=config["async_checkpoint_upload"],
        run_path=config["run_path"],
        storage_filesystem=config["storage_filesystem"],
    )
    # With background upload, rank 0 records checkpoints from Ray Train's upload thread while
    # the loop logs: its reporter keeps their calls one at a time and in order.
    pretrain({**config, "reporter": session.in_report_order(config["reporter"])}, session)


def pretrain(config: PretrainLoopConfig, session: Session) -> None:
    """Train from the session's latest checkpoint (or from scratch) to `train.epochs`."""
    train = config["spec"]["train"]
    rank = session.rank
    _seed_everything(train["seed"] * 1000 + rank)
    setup, resumed = _set_up(config, session)
    start_epoch, step, done_steps = 0, 0, 0
    if resumed:
        start_epoch, step = resumed.epoch, resumed.step
        done_steps = resumed.steps_into_epoch(setup.schedule.steps_per_epoch)
        if resumed.random_state is not None:
            # Continue the draws (masks, noise) where the checkpoint left them, not from the
            # start of the run again.
            restore_random_state(resumed.random_state, setup.device)
    shard = session.dataset_shard("train")
    notice = PreemptionNotice(setup, config, session)
    setup.reporter.start()
    try:
        if resumed:
            record_resume(resumed, setup.reporter, rank)
        for epoch in range(start_epoch, train["epochs"]):
            progress = EpochProgress(
                epoch + 1,
                train["epochs"],
                setup.schedule.steps_per_epoch,
                enabled=rank == 0,
                every_s=config["progress_every_s"],
            )
            batches = _epoch_batches(shard, config["spec"], epoch, rank, setup)
            notice.epoch = epoch
            stats = train_one_epoch(
                setup, batches, epoch, step, progress, done_steps, after_step=notice.check
            )
            step, done_steps = stats.step, 0
            metrics = _epoch_metrics(setup, stats, config, epoch, session)
            _report_epoch(setup, metrics, config, session)
            notice.last_metrics = metrics
        session.finish()
    finally:
        setup.live.close()
        setup.reporter.close()


def _seed_everything(seed: int) -> None:
    """Seed every generator the loop may draw from (torch's also seeds CUDA's)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _set_up(config: PretrainLoopConfig, session: Session) -> tuple[WorkerSetup, ResumePoint | None]:
    """Model, optimizer and AMP scaler (restored from the last checkpoint if there is one),
    wrapped for data-parallel training; rank 0's reporter; the live metrics."""
    spec = config["spec"]
    train, schedule = spec["train"], config["schedule"]
    device = session.device
    model = build_model(spec)
    optimizer = build_optimizer(model, lr=schedule.peak_lr, weight_decay=train["weight_decay"])
    amp_dtype = autocast_dtype(train["precision"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    resumed = resume_point(session.latest_checkpoint(), session.rank)
    if resumed:
        resumed.restore_weights(model, scaler)
    model = session.prepare_model(model)
    if resumed:
        resumed.restore_optimizer(optimizer)
    if train["compile"]:
        # Compiled after prepare_model, i.e. around DDP: that is the order PyTorch documents
        # for DDP (its DDPOptimizer splits the graph at gradient buckets so all-reduce
        # overlaps the backward); compiling inside DDP would all-reduce after the backward.
        model = torch.compile(model)
    rank = session.rank
    reporter: Reporter = (config["reporter"] if rank == 0 else None) or NullReporter()
    live = TrainingMetrics(session.experiment_name, spec["method"]["name"], rank)
    setup = WorkerSetup(
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        schedule=schedule,
        device=device,
        amp_dtype=amp_dtype,
        reporter=reporter,
        live=live,
        world_size=session.world_size,
    )
    return setup, resumed


def _epoch_batches(
    shard: Any, spec: RunSpecDump, epoch: int, rank: int, setup: WorkerSetup
) -> Iterable[dict[str, torch.Tensor]]:
    """One pass over the worker's shard, in a new row order every epoch."""
    train = spec["train"]
    return shard.iter_torch_batches(
        batch_size=_per_worker_batch(train, setup.world_size),
        drop_last=True,
        prefetch_batches=PREFETCH_BATCHES,
        # Pinned host batches make the copy to the GPU asynchronous.
        pin_memory=setup.device.type == "cuda",
        # A new row order every epoch (file/block order is reshuffled upstream).
        **batch_shuffle_options(
            spec["data"]["shuffle"],
            spec["data"]["shuffle_buffer"],
            train["seed"],
            epoch,
            rank,
        ),
    )


def _epoch_metrics(
    setup: WorkerSetup, stats: EpochStats, config: PretrainLoopConfig, epoch: int, session: Session
) -> dict[str, float]:
    """The epoch's metrics over every worker (plus kNN accuracy when the monitor is due);
    raises DataQualityError when too many images were undecodable."""
    spec = config["spec"]
    seen, skipped = global_sum([stats.seen, stats.skipped], setup.device)
    check_skipped_share(skipped, seen, spec["data"]["max_skipped_share"], epoch + 1)
    per_worker_batch = _per_worker_batch(spec["train"], setup.world_size)
    metrics = {
        "epoch": epoch + 1,
        "step": stats.step,
        "loss": global_mean(stats.losses, setup.device),
        "images_per_s": len(stats.losses) * per_worker_batch * setup.world_size / stats.elapsed_s,
        "data_wait_s": stats.data_wait_s,
        "data/images_seen": seen,
        "data/skipped": skipped,
        "epoch_time_s": stats.elapsed_s,
    }
    monitor = config["knn_monitor"]
    if monitor and (epoch + 1) % monitor["every"] == 0:
        metrics.update(
            knn_during_training(unwrap(setup.model), monitor, setup.device, session.dataset_shard)
        )
    setup.live.record_epoch(
        epoch + 1, metrics["loss"], metrics["images_per_s"], stats.data_wait_s, stats.elapsed_s
    )
    return metrics


def _report_epoch(
    setup: WorkerSetup, metrics: dict[str, float], config: PretrainLoopConfig, session: Session
) -> None:
    """The epoch's metrics to the reporter and to the session, with a checkpoint when due."""
    train, rank = config["spec"]["train"], session.rank
    epoch = int(metrics["epoch"])
    setup.reporter.log_metrics(
        {k if "/" in k else f"epoch/{k}": v for k, v in metrics.items() if k != "epoch"}, epoch
    )
    if rank == 0:
        say(
            f"epoch {epoch}/{train['epochs']}  loss {metrics['loss']:.4f}  "
            f"{metrics['images_per_s']:.0f} img/s  ({metrics['epoch_time_s']:.1f}s)"
        )
    if epoch % train["checkpoint_every"] and epoch != train["epochs"]:
        session.report(metrics)
        return
    save_checkpoint(setup, metrics, config, session, mid_epoch=False)


def _per_worker_batch(train: TrainSection, world_size: int) -> int:
    return max(1, train["batch_size"] // world_size)


# What the driver takes from here: the loop, and the schedule it sizes for it (defined with the
# lr schedule in `optim.py`; train-loop configs pickled before that name `workloads.pretrain`).
__all__ = ["Schedule", "build_model", "make_schedule", "train_loop_per_worker"]
