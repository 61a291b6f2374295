"""Checkpoints of the pretrain loop's training state: at an epoch's report, and mid-epoch at
the first preemption notice.

Each worker writes its own random state; rank 0 also writes the model, optimizer and scaler
(DDP keeps replicas identical). The session reports the folder (Ray Train uploads it, in the
background on object storage) and runs the record once this worker's files are stored.
"""

from __future__ import annotations

import tempfile

from workloads.checkpoint import checkpoint_dir_name, write_checkpoint, write_random_state
from workloads.console import say
from workloads.engine import EpochStats, WorkerSetup
from workloads.run_spec import PretrainLoopConfig
from workloads.session import Session


def save_checkpoint(
    setup: WorkerSetup,
    metrics: dict[str, float],
    config: PretrainLoopConfig,
    session: Session,
    *,
    mid_epoch: bool,
) -> None:
    """Report `metrics` with a checkpoint of the training state after `metrics["epoch"]`
    epochs and `metrics["step"]` steps. An epoch's checkpoint is also recorded by the
    reporter (a model to evaluate); a mid-epoch one only serves a resume."""
    epoch, step = int(metrics["epoch"]), int(metrics["step"])
    dir_name = checkpoint_dir_name(epoch, step if mid_epoch else None)
    folder = tempfile.mkdtemp(prefix="mimray-checkpoint-")
    # Every worker keeps its own random generators; the rest is rank 0's, since DDP keeps
    # replicas identical and one copy of the state is enough.
    write_random_state(folder, session.rank, setup.device)
    if session.rank == 0:
        write_checkpoint(
            folder,
            setup.model,
            setup.optimizer,
            setup.scaler,
            epoch=epoch,
            step=step,
            spec=config["spec"],
        )

    def record() -> None:
        # Run by the session once this worker's files are in storage: right after the report
        # with synchronous upload, in Ray Train's upload thread with background upload.
        if not mid_epoch:
            setup.reporter.log_checkpoint(f"{config['run_path']}/{dir_name}", epoch, step, metrics)

    session.report(metrics, checkpoint_folder=folder, dir_name=dir_name, on_checkpoint=record)


class PreemptionNotice:
    """After each step, asks the session whether a node of the run is being preempted; at the
    first notice, saves a checkpoint at that step (mid-epoch), so the restarted run continues
    from it rather than from the last epoch's checkpoint. Training then goes on: the run is
    restarted when the node is gone, or finishes if the notice was a false alarm."""

    def __init__(self, setup: WorkerSetup, config: PretrainLoopConfig, session: Session) -> None:
        self.setup, self.config, self.session = setup, config, session
        self.epoch = 0  # the epoch being trained, from 0
        self.last_metrics: dict[str, float] = {}  # the last epoch's report
        self.saved = False

    def check(self, stats: EpochStats) -> None:
        if self.saved or not self.session.preemption_notice():
            return
        self.saved = True
        step = stats.step
        if self.session.rank == 0:
            say(f"preemption notice: checkpoint at step {step} (epoch {self.epoch + 1})")
        # The last epoch's metrics (what a scheduler already saw) with this step and the
        # running loss of the unfinished epoch.
        metrics = {**self.last_metrics, "epoch": self.epoch, "step": step}
        if stats.losses:
            metrics["loss"] = sum(stats.losses) / len(stats.losses)
        save_checkpoint(self.setup, metrics, self.config, self.session, mid_epoch=True)
