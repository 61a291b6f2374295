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

import functools
import shutil
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, Protocol

import torch
from torch import nn

from workloads.report_order import InReportOrder, ReportOrder, Reserved

# Called once the checkpoint's files (this worker's part) are in storage, and before the report
# reaches anything that may stop the run or resume from it (Tune's ASHA, Ray Train's
# registration): the loop records the checkpoint (MLflow) there, so a stopped trial loses
# nothing it reported and a resume never starts after a checkpoint that is not recorded.
OnCheckpoint = Callable[[], None]

# A checkpoint is written in blocks this large: Ray Train's own upload uses the same.
_UPLOAD_CHUNK_BYTES = 64 * 1024 * 1024


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
        for their `on_checkpoint`."""
        ...


class RayTrainSession:
    """A Ray Train worker's session on Ray Train's public API.

    With `async_upload`, checkpoints travel to storage in Ray Train's background upload thread
    (`CheckpointUploadMode.ASYNC`) while the next step trains. The upload is the session's own
    `checkpoint_upload_fn`: it copies the folder to `{run_path}/{dir_name}` (Ray Train's layout
    of a run: `RunConfig(storage_path)/name/checkpoint`), then, on rank 0, runs the checkpoint's
    `on_checkpoint` in that same thread, so MLflow records a checkpoint as soon as rank 0's
    files are stored, and before Ray Train can register it (the upload thread hands the report
    to Ray only after the upload function returns).

    A record means rank 0's part is stored: the model, optimizer and spec, all that evaluation
    reads. Another rank's random-state file may still be on its way: a resume only ever starts
    from a checkpoint Ray Train registered, which it does once every rank's upload has
    reported, and a run that dies between the record and the registration redoes that epoch into
    the same folder, where the reporter finds the checkpoint already recorded. Synchronous
    upload has the same window (rank 0 records when its own upload returns).

    The record runs in the upload thread while the loop goes on logging metrics: the loop's
    reporter must be `in_report_order(reporter)`, which serialises every call and keeps their
    order (see `ReportOrder`).
    """

    def __init__(
        self,
        async_upload: bool = False,
        run_path: str | None = None,
        storage_filesystem: Any = None,
    ) -> None:
        """`run_path`: the run's folder in storage (`RunConfig.storage_path`/`name`), needed with
        `async_upload`; `storage_filesystem`: the run's `RunConfig.storage_filesystem` if it
        has one (then `run_path` has no URI scheme, as Ray Train requires)."""
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank: int = context.get_world_rank()
        self.world_size: int = context.get_world_size()
        self.experiment_name: str = context.get_experiment_name()
        self.device: torch.device = ray.train.torch.get_device()
        if async_upload and run_path is None:
            raise ValueError("background checkpoint upload needs the run's storage folder")
        self.async_upload = async_upload
        self._run_path = run_path
        self._storage_filesystem = storage_filesystem
        self._run_folder: tuple[Any, str] | None = None  # (pyarrow filesystem, path) once known
        self._order = ReportOrder()

    def in_report_order(self, reporter: Any) -> Any:
        """The reporter for the loop: with background upload, rank 0's `reporter` behind a
        `ReportOrder`; otherwise `reporter` itself."""
        if not self.async_upload or reporter is None or self.rank != 0:
            return reporter
        return InReportOrder(reporter, self._order)

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

        if checkpoint_folder is None:
            ray.train.report(metrics)
            return
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_folder)
        if not self.async_upload:
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)
            shutil.rmtree(checkpoint_folder, ignore_errors=True)
            if on_checkpoint is not None:
                on_checkpoint()
            return
        # The record's place among the reporter's calls is here, in the loop's order; what the
        # loop logs from now on waits behind it until the upload has run it. (Ray Train skips a
        # report only when a replica group is replaced, which mimray does not configure.)
        place = self._order.reserve() if self.rank == 0 and on_checkpoint is not None else None
        # Ray deletes the local folder once the upload function has returned.
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=dir_name,
            checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
            checkpoint_upload_fn=functools.partial(
                self._upload, place=place, on_checkpoint=on_checkpoint
            ),
        )

    def _upload(
        self,
        local: Any,
        dir_name: str,
        *,
        place: Reserved | None,
        on_checkpoint: OnCheckpoint | None,
    ) -> Any:
        """Ray Train's upload thread: copy this worker's checkpoint files into the run's folder
        (every rank copies into the same one; Ray Train merges them), then record it (rank 0).
        An exception here is raised in the training thread by Ray Train and fails the run."""
        import pyarrow.fs
        import ray.train

        filesystem, run_folder = self._storage()
        destination = f"{run_folder}/{dir_name}"
        filesystem.create_dir(destination)
        pyarrow.fs.copy_files(
            local.path,
            destination,
            source_filesystem=local.filesystem,
            destination_filesystem=filesystem,
            chunk_size=_UPLOAD_CHUNK_BYTES,
            # Multi-threaded uploads to S3 are unsafe in pyarrow (apache/arrow#32372): Ray
            # Train's own upload turns them off too.
            use_threads=not isinstance(filesystem, pyarrow.fs.S3FileSystem),
        )
        if place is not None and on_checkpoint is not None:
            self._order.fill(place, on_checkpoint)
        # Ray Train accepts only a checkpoint inside the run's folder on its own filesystem.
        return ray.train.Checkpoint(destination, filesystem=filesystem)

    def _storage(self) -> tuple[Any, str]:
        """The run's folder as Ray Train resolves it: on `RunConfig.storage_filesystem` when
        there is one, else on the filesystem pyarrow finds for the URI (`RunConfig`'s rule).

        Not `ray.train.get_context().get_storage()`, which Ray's upload error message suggests:
        in Ray 2.60 that is a DeveloperAPI whose `StorageContext` may change in any release."""
        if self._run_folder is None:
            import pyarrow.fs

            assert self._run_path is not None
            if self._storage_filesystem is not None:
                filesystem, path = self._storage_filesystem, self._run_path
            else:
                filesystem, path = pyarrow.fs.FileSystem.from_uri(self._run_path)
            self._run_folder = (filesystem, PurePosixPath(path).as_posix())
        return self._run_folder

    def finish(self) -> None:
        # Ray Train waits for the uploads when the loop returns; the records must be in before
        # the loop closes its reporter.
        self._order.wait_until_done()

    def preemption_notice(self) -> bool:
        import ray.train

        return ray.train.get_preemption_info() is not None
