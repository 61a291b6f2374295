"""One-worker runs in the calling process: the worker loop with an in-process session.

A one-worker CPU run (a `mimray pretrain`, a sweep trial, an evaluation) needs no worker
group: `InProcessTrainer.fit()` calls the loop here with an `InProcessSession`
(`workloads/session.py`'s interface), on public APIs only:

- each reported checkpoint is persisted where Ray Train would put it,
  `{storage}/{name}/{dir_name}` (local folder or s3://, through pyarrow), older ones pruned to
  `keep_checkpoints`; the loop then registers it (MLflow) before anything else happens;
- the session's latest checkpoint starts at the run's last persisted one, so re-running a name
  resumes it, whichever path trained it before;
- inside a Tune trial (a plain function trainable) every report also goes to Tune with
  `ray.tune.report`, so ASHA sees `loss` and `knn/top1` per epoch; a crash fails the trial and
  Tune's FailureConfig restarts it, which resumes from the last checkpoint the same way;
- outside Tune, a failed attempt is retried from the last checkpoint up to
  `train.max_failures` times, as Ray Train's FailureConfig would.
"""

from __future__ import annotations

import contextlib
import pickle
import posixpath
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from workloads.checkpoint import CHECKPOINT_FILE  # a folder holding it is a complete checkpoint
from workloads.session import OnCheckpoint, Session

# Folder names as `workloads.checkpoint.checkpoint_dir_name` writes them: after N epochs, or
# N epochs and some steps (a checkpoint taken mid-epoch).
CHECKPOINT_DIR = re.compile(r"checkpoint_epoch_(\d+)(?:_step_(\d+))?$")


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

    def _complete(self) -> dict[tuple[int, int], str]:
        """(epoch, step) -> folder name of every complete checkpoint."""
        import pyarrow.fs

        found = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        folders = {}
        for info in found:
            match = CHECKPOINT_DIR.search(info.base_name)
            if info.type == pyarrow.fs.FileType.Directory and match:
                state = self.fs.get_file_info(posixpath.join(info.path, CHECKPOINT_FILE))
                if state.type == pyarrow.fs.FileType.File:  # an interrupted copy has none
                    folders[(int(match.group(1)), int(match.group(2) or 0))] = info.base_name
        return folders

    def latest(self) -> Any:
        from ray.train import Checkpoint

        folders = self._complete()
        if not folders:
            return None
        return Checkpoint(posixpath.join(self.root, folders[max(folders)]), filesystem=self.fs)

    def persist(self, folder: str, dir_name: str) -> Any:
        """Copy a local checkpoint folder into the run's storage as `dir_name`."""
        import pyarrow.fs
        from ray.train import Checkpoint

        target = posixpath.join(self.root, dir_name)
        self.fs.create_dir(target, recursive=True)
        # The state file goes last: a folder holding it is a complete checkpoint.
        names = sorted(_files(folder), key=lambda name: name == CHECKPOINT_FILE)
        local = pyarrow.fs.LocalFileSystem()
        for name in names:
            pyarrow.fs.copy_files(
                posixpath.join(folder, name),
                posixpath.join(target, name),
                source_filesystem=local,
                destination_filesystem=self.fs,
            )
        self._prune()
        return Checkpoint(target, filesystem=self.fs)

    def _prune(self) -> None:
        if self.keep is None:
            return
        folders = self._complete()
        for key in sorted(folders)[: -self.keep]:
            self.fs.delete_dir(posixpath.join(self.root, folders[key]))


def _files(folder: str) -> list[str]:
    import os

    return [
        os.path.relpath(os.path.join(parent, name), folder)
        for parent, _, names in os.walk(folder)
        for name in names
    ]


class InProcessSession:
    """The session of a loop running in this process as the only worker (CPU)."""

    rank = 0
    world_size = 1

    def __init__(
        self,
        experiment_name: str,
        datasets: dict[str, Any],
        store: CheckpointStore,
        report_to_tune: bool,
    ) -> None:
        import torch

        self.experiment_name = experiment_name
        self.device = torch.device("cpu")
        self._datasets = datasets
        self._store = store
        self._report_to_tune = report_to_tune
        self.last_checkpoint = store.latest()
        self.last_metrics: dict[str, Any] = {}

    def latest_checkpoint(self) -> Any:
        return self.last_checkpoint

    def dataset_shard(self, name: str) -> Any:
        return self._datasets[name]  # the whole dataset: this is the only worker

    def prepare_model(self, model: Any) -> Any:
        return model.to(self.device)

    def report(
        self,
        metrics: dict[str, Any],
        checkpoint_folder: str | None = None,
        dir_name: str | None = None,
        on_checkpoint: OnCheckpoint | None = None,
    ) -> None:
        if checkpoint_folder is not None:
            try:
                name = dir_name or f"checkpoint_{len(metrics)}"
                self.last_checkpoint = self._store.persist(checkpoint_folder, name)
            finally:
                shutil.rmtree(checkpoint_folder, ignore_errors=True)
        self.last_metrics = dict(metrics)
        # The checkpoint is recorded before Tune sees the report: Tune may stop the trial at
        # this report (ASHA, by raising SystemExit here), and nothing of it must be lost.
        if on_checkpoint is not None:
            on_checkpoint()
        if self._report_to_tune:
            # The checkpoint stays in Ray storage (a restored trial resumes from it by name);
            # handing it to Tune too would copy the weights a second time.
            from ray import tune

            tune.report(dict(metrics))

    def preemption_notice(self) -> bool:
        return False  # a preempted node takes this process with it: Tune restarts the trial

    def finish(self) -> None:
        pass  # checkpoints are persisted (and recorded) as they are reported


def in_tune_trial() -> bool:
    """Whether this code runs inside a Tune trial (Tune's context knows its trial id)."""
    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # outside Tune it warns that it returns None
        return tune.get_context().get_trial_id() is not None


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


@dataclass
class InProcessTrainer:
    """A one-worker fit in this process, with what `TorchTrainer` offers a worker group:
    `fit()` returns the last report and checkpoint.

    `to_tune=False` keeps the reports out of Tune even inside a trial: an evaluation chained
    after a trial's training reports its own metrics, which are not the trial's results."""

    loop: Callable[[dict[str, Any], Session], None]
    train_loop_config: dict[str, Any]
    datasets: dict[str, Any]
    name: str
    run_path: str
    keep: int | None
    max_failures: int
    cpus: float
    to_tune: bool = True
    # The same loop's Ray Train entry point, for running this fit in a worker group instead.
    train_loop_per_worker: Callable[[dict[str, Any]], None] | None = field(default=None)

    def fit(self) -> InProcessResult:
        store = CheckpointStore(self.run_path, self.keep)
        report_to_tune = self.to_tune and in_tune_trial()
        # A fresh copy of the config per attempt, as a restarted worker would unpickle it:
        # the reporter in it holds per-attempt state.
        config = pickle.dumps(self.train_loop_config)
        datasets = {k: v() if callable(v) else v for k, v in self.datasets.items()}
        attempt = 0
        while True:
            session = InProcessSession(self.name, datasets, store, report_to_tune)
            try:
                with _torch_threads(self.cpus):
                    self.loop(pickle.loads(config), session)
                return InProcessResult(session.last_metrics, session.last_checkpoint)
            except Exception as err:  # not Ctrl-C, and not Tune's stop (SystemExit)
                if report_to_tune or attempt >= self.max_failures:
                    raise  # in a trial, Tune's FailureConfig decides
                attempt += 1
                sys.stdout.write(
                    f"[mimray] attempt {attempt} of {self.max_failures + 1} failed "
                    f"({type(err).__name__}: {str(err)[:200]}); retrying from the last "
                    "checkpoint\n"
                )
                sys.stdout.flush()
