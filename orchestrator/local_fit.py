"""One-worker runs in the calling process: Ray Train V2's local mode, completed.

A `TorchTrainer` with `ScalingConfig(num_workers=0)` runs its training function in the
calling process: no controller, placement group or worker actors, so a one-worker run or Tune
trial starts in seconds instead of paying a worker group's start-up. Ray's local mode keeps
reported checkpoints in memory only, invokes no RunConfig callbacks and applies no
FailureConfig. `fit_in_process` runs the trainer's own training function (the same
`train_loop_per_worker`, the same config and datasets) under Ray Train's local utilities with
what a mimray run needs added back:

- each reported checkpoint is persisted where Ray Train would put it,
  `{storage}/{name}/{checkpoint_dir_name}` (local folder or s3://), older ones pruned to
  `keep_checkpoints`; the loop then registers it in MLflow as it does under Ray Train;
- `ray.train.get_checkpoint()` starts at the run's last persisted checkpoint, so re-running a
  name resumes it, whichever path trained it before;
- inside a Tune trial every report also goes to Tune (what `TuneReportCallback` does for a
  Ray Train run), so ASHA sees `loss` and `knn/top1` per epoch; a crash fails the trial and
  Tune's FailureConfig restarts it, which resumes from the last checkpoint the same way;
- outside Tune, a failed attempt is retried from the last checkpoint up to
  `train.max_failures` times, as Ray Train's FailureConfig would.
"""

from __future__ import annotations

import contextlib
import pickle
import posixpath
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from workloads.checkpoint import CHECKPOINT_FILE  # a folder holding it is a complete checkpoint

# Folder names as `workloads.checkpoint.checkpoint_dir_name` writes them.
CHECKPOINT_DIR = re.compile(r"checkpoint_epoch_(\d+)$")


@dataclass(frozen=True)
class InProcessResult:
    """What `TorchTrainer.fit()` returns that a run uses: the last report and checkpoint."""

    metrics: dict[str, Any]
    checkpoint: Any  # ray.train.Checkpoint in the run's storage, or None


class CheckpointStore:
    """A run's checkpoint folders in Ray storage: find the last, add one, prune old ones."""

    def __init__(self, run_path: str, keep: int | None) -> None:
        import pyarrow.fs

        self.run_path = run_path.rstrip("/")
        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.run_path)
        self.keep = keep

    def _epochs(self) -> dict[int, str]:
        """Epoch -> folder name of every complete checkpoint."""
        import pyarrow.fs

        found = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        epochs = {}
        for info in found:
            match = CHECKPOINT_DIR.search(info.base_name)
            if info.type == pyarrow.fs.FileType.Directory and match:
                state = self.fs.get_file_info(posixpath.join(info.path, CHECKPOINT_FILE))
                if state.type == pyarrow.fs.FileType.File:  # an interrupted copy has none
                    epochs[int(match.group(1))] = info.base_name
        return epochs

    def latest(self) -> Any:
        from ray.train import Checkpoint

        epochs = self._epochs()
        if not epochs:
            return None
        return Checkpoint(posixpath.join(self.root, epochs[max(epochs)]), filesystem=self.fs)

    def persist(self, checkpoint: Any, dir_name: str) -> Any:
        """Copy a reported (local, temporary) checkpoint into the run's storage."""
        import pyarrow.fs
        from ray.train import Checkpoint

        target = posixpath.join(self.root, dir_name)
        self.fs.create_dir(target, recursive=True)
        # The state file goes last: a folder holding it is a complete checkpoint.
        names = sorted(_files(checkpoint.path), key=lambda name: name == CHECKPOINT_FILE)
        local = pyarrow.fs.LocalFileSystem()
        for name in names:
            pyarrow.fs.copy_files(
                posixpath.join(checkpoint.path, name),
                posixpath.join(target, name),
                source_filesystem=local,
                destination_filesystem=self.fs,
            )
        self._prune()
        return Checkpoint(target, filesystem=self.fs)

    def _prune(self) -> None:
        if self.keep is None:
            return
        epochs = self._epochs()
        for epoch in sorted(epochs)[: -self.keep]:
            self.fs.delete_dir(posixpath.join(self.root, epochs[epoch]))


def _files(folder: str) -> list[str]:
    import os

    return [
        os.path.relpath(os.path.join(parent, name), folder)
        for parent, _, names in os.walk(folder)
        for name in names
    ]


def _local_utils_class() -> type:
    """Ray Train's local-mode utilities, extended to persist, resume and report to Tune."""
    from ray.train.v2._internal.execution.train_fn_utils import LocalTrainFnUtils

    class PersistingLocalTrainFnUtils(LocalTrainFnUtils):
        def __init__(
            self,
            experiment_name: str,
            datasets: dict[str, Any],
            store: CheckpointStore,
            report_to_tune: bool,
            defer_to_reporter: bool = True,
        ) -> None:
            super().__init__(experiment_name=experiment_name, dataset_shards=datasets)
            self._store = store
            self._report_to_tune = report_to_tune
            self._defer = defer_to_reporter
            self._last_checkpoint = store.latest()
            self._last_metrics = {}
            self._pending: dict[str, Any] | None = None

        def report(
            self,
            metrics: dict[str, Any],
            checkpoint: Any = None,
            checkpoint_dir_name: str | None = None,
            **_: Any,
        ) -> None:
            self.send_to_tune()  # one still pending (the loop did not log its checkpoint)
            if checkpoint is not None:
                dir_name = checkpoint_dir_name or f"checkpoint_{len(metrics)}"
                self._last_checkpoint = self._store.persist(checkpoint, dir_name)
            self._last_metrics = dict(metrics)
            if self._report_to_tune:
                # A checkpointed epoch goes to Tune once the loop has recorded it in MLflow
                # (right after this call): Tune may stop the trial at this report (ASHA),
                # and nothing of the epoch must be lost to that.
                self._pending = dict(metrics)
                if checkpoint is None or not self._defer:
                    self.send_to_tune()

        def send_to_tune(self) -> None:
            """Report the pending epoch to Tune; raises SystemExit when Tune stops the trial.

            The checkpoint stays in Ray storage (a restored trial resumes from it by name);
            handing it to Tune too would copy the weights a second time."""
            if self._pending is None:
                return
            from ray import tune

            pending, self._pending = self._pending, None
            tune.report(pending)

    return PersistingLocalTrainFnUtils


class TuneAfterCheckpointReporter:
    """The loop's reporter, sending a checkpointed epoch to Tune once it is recorded (the
    loop logs a checkpoint right after reporting it to Ray Train)."""

    def __init__(self, inner: Any, utils: Any) -> None:
        self.inner, self.utils = inner, utils

    def start(self) -> None:
        self.inner.start()

    def log_metrics(self, metrics: Any, step: int) -> None:
        self.inner.log_metrics(metrics, step)

    def log_event(self, metrics: Any, step: int) -> None:
        self.inner.log_event(metrics, step)

    def log_checkpoint(self, uri: str, epoch: int, step: int, metrics: Any) -> str | None:
        model_id = self.inner.log_checkpoint(uri, epoch, step, metrics)
        self.utils.send_to_tune()
        return model_id

    def close(self) -> None:
        self.inner.close()


def in_tune_trial() -> bool:
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return bool(_in_tune_session())


@contextlib.contextmanager
def _train_api_inside_tune(active: bool) -> Iterator[None]:
    """Ray Train V2 refuses its worker API (`ray.train.report`, `get_context`, ...) inside a
    Tune function and points at the `ray.tune` equivalents, so Ray's own local mode cannot run
    in a trial. Here those calls are answered by the local utilities installed above, whose
    reports reach Tune through `ray.tune.report`; the check is lifted while the loop runs."""
    if not active:
        yield
        return
    from ray.tune.trainable import trainable_fn_utils

    original = trainable_fn_utils._in_tune_session
    trainable_fn_utils._in_tune_session = lambda: False
    try:
        yield
    finally:
        trainable_fn_utils._in_tune_session = original


@contextlib.contextmanager
def _torch_threads(cpus: float) -> Iterator[None]:
    """As many torch threads as CPUs the worker would reserve (Ray sets OMP_NUM_THREADS so
    for worker actors); the calling process' setting comes back afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cpus)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_in_process(
    trainer: Any,
    run_path: str,
    keep: int | None,
    max_failures: int,
    cpus: float,
    to_tune: bool = True,
) -> InProcessResult:
    """Run a `num_workers=0` TorchTrainer's training function here, with checkpoints in the
    run's storage, resume from them, Tune reports inside a trial and retries outside one.

    `to_tune=False` keeps the reports out of Tune even inside a trial: an evaluation chained
    after a trial's training reports its own metrics, which are not the trial's results."""
    from ray.train.v2._internal.execution.train_fn_utils import set_train_fn_utils

    utils_class = _local_utils_class()
    store = CheckpointStore(run_path, keep)
    inside_trial = in_tune_trial()
    report_to_tune = to_tune and inside_trial
    # A fresh copy of the config per attempt, as a restarted worker would unpickle it: the
    # reporter in it holds per-attempt state.
    config = pickle.dumps(trainer.train_loop_config)
    datasets = {k: v() if callable(v) else v for k, v in trainer.datasets.items()}
    attempt = 0
    while True:
        attempt_config = pickle.loads(config)
        has_reporter = attempt_config.get("reporter") is not None
        utils = utils_class(trainer.run_config.name, datasets, store, report_to_tune, has_reporter)
        set_train_fn_utils(utils)
        try:
            if has_reporter:
                attempt_config["reporter"] = TuneAfterCheckpointReporter(
                    attempt_config["reporter"], utils
                )
            with _torch_threads(cpus), _train_api_inside_tune(inside_trial):
                trainer.train_loop_per_worker(attempt_config)
                utils.send_to_tune()
            return InProcessResult(utils._last_metrics, utils._last_checkpoint)
        except Exception as err:  # not Ctrl-C, and not Tune's stop (SystemExit)
            if report_to_tune or attempt >= max_failures:
                raise  # in a trial, Tune's FailureConfig decides
            attempt += 1
            sys.stdout.write(
                f"[mimray] attempt {attempt} of {max_failures + 1} failed "
                f"({type(err).__name__}: {str(err)[:200]}); retrying from the last checkpoint\n"
            )
            sys.stdout.flush()
        finally:
            set_train_fn_utils(None)
