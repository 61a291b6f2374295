"""Where a worker loop runs, as the loop sees it: a small session interface.

The pretrain and evaluation loops never call Ray directly. They ask their session for their
rank, world size and device, their dataset shard, the checkpoint to resume from, whether a
preemption notice has arrived, and they report each epoch's metrics (with an optional
checkpoint folder) through it. Two implementations:

- `RayTrainSession` (here): a worker of a Ray Train worker group, on Ray Train's public API
  (`ray.train.report`, `get_checkpoint`, `get_context`, `get_dataset_shard`,
  `get_preemption_info`, `ray.train.torch`);
- `orchestrator/fit/in_process.py`'s in-process session: one CPU worker in the calling process
  (a `mimray pretrain` with one worker, a Tune function trainable, an evaluation), with
  checkpoints in mimray's own store under the run's storage path and, inside a Tune trial,
  reports through `ray.tune.report`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

# Called with the persisted checkpoint's folder name once the session has handed it to storage
# and before the report reaches a scheduler that may stop the run (Tune's ASHA): the loop
# records the checkpoint (MLflow) there, so a stopped trial loses nothing it reported.
OnCheckpoint = Callable[[], None]


class Session(Protocol):
    """What a worker loop needs from the system that runs it."""

    rank: int
    world_size: int
    device: torch.device
    experiment_name: str

    def latest_checkpoint(self) -> Any:
        """The `ray.train.Checkpoint` to resume from, or None on a fresh run."""
        ...

    def dataset_shard(self, name: str) -> Any:
        """This worker's part of the dataset `name` (anything with `iter_torch_batches`)."""
        ...

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model on this worker's device, wrapped for data-parallel training if needed."""
        ...

    def report(
        self,
        metrics: dict[str, Any],
        checkpoint_folder: str | None = None,
        dir_name: str | None = None,
        on_checkpoint: OnCheckpoint | None = None,
    ) -> None:
        """Report metrics, with this worker's checkpoint files in `checkpoint_folder` (the
        session owns the folder from here and deletes it once persisted) saved as `dir_name`.
        Every worker calls it the same number of times."""
        ...

    def preemption_notice(self) -> bool:
        """True once a node of this run is being preempted. A collective: every worker calls
        it at the same steps and gets the same answer."""
        ...

    def finish(self) -> None:
        """At the loop's normal end: wait for checkpoints still on their way to storage and
        run their `on_checkpoint`."""
        ...


class RayTrainSession:
    """A Ray Train worker's session on Ray Train's public API."""

    def __init__(self, async_upload: bool = False) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank: int = context.get_world_rank()
        self.world_size: int = context.get_world_size()
        self.experiment_name: str = context.get_experiment_name()
        self.device: torch.device = ray.train.torch.get_device()
        # Uploading in the background lets the next step start while the files travel to
        # remote storage; Ray deletes the local copy once uploaded. A checkpoint is recorded
        # (`on_checkpoint`) only once Ray Train has committed it, at the next report or at the
        # end: a record must never name a checkpoint that is not (yet) in storage.
        self.async_upload = async_upload
        self._uncommitted: list[OnCheckpoint] = []

    def latest_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def dataset_shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(
        self,
        metrics: dict[str, Any],
        checkpoint_folder: str | None = None,
        dir_name: str | None = None,
        on_checkpoint: OnCheckpoint | None = None,
    ) -> None:
        import ray.train
        from ray.train import CheckpointUploadMode

        self._record_committed()
        checkpoint = None
        if checkpoint_folder is not None:
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_folder)
        background = self.async_upload and checkpoint is not None
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=dir_name,
            checkpoint_upload_mode=(
                CheckpointUploadMode.ASYNC if background else CheckpointUploadMode.SYNC
            ),
        )
        if checkpoint_folder is not None and not background:
            shutil.rmtree(checkpoint_folder, ignore_errors=True)
        if on_checkpoint is not None:
            if background:
                self._uncommitted.append(on_checkpoint)
            else:
                on_checkpoint()

    def _record_committed(self) -> None:
        """Run the `on_checkpoint` of background uploads once Ray Train has committed them
        (usually long done: an epoch has passed). Only rank 0 records anything."""
        if not self._uncommitted:
            return
        pending, self._uncommitted = self._uncommitted, []
        if self.rank != 0:
            return
        import ray.train
        from ray.train import CheckpointConsistencyMode

        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
        for record in pending:
            record()

    def finish(self) -> None:
        self._record_committed()

    def preemption_notice(self) -> bool:
        import ray.train

        return ray.train.get_preemption_info() is not None
