"""Everything a run records in MLflow. Reads that span runs, sweeps and checkpoints live in
`lookup.py`; `report.py` reads too, and attaches its report files to the sweep's run.

Driver side: `Tracker` creates the store and experiment (before any worker starts: many
workers creating a fresh SQLite database at once fail), and finds or creates each run by a
deterministic key tag, so re-running the same name continues the same run. A sweep's runs are
found in one search (`prefetch_runs`) and each new run is written in two calls (the run with
its tags, then its params in one batch): creating 1,000 trial runs was 71 s with a search and
three writes per trial.

SQLite stores run in WAL mode with `synchronous=NORMAL`: every MLflow call is one or more
transactions, and with the default rollback journal each commit waits for several fsyncs
(~25 ms each here); in WAL mode a commit is an append, and a crash can lose at most the last
commits, never corrupt the file. (WAL needs a local disk, not a network filesystem.)

Worker side: `MlflowReporter` is the `workloads.reporting.Reporter` that rank 0 uses to write
metrics, system metrics and one LoggedModel per checkpoint. The LoggedModel points at the
checkpoint's URI in Ray storage; the weights are not copied into MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_KEY_TAG = "mimray.run_key"
FINGERPRINT_TAG = "mimray.config_fingerprint"
CHECKPOINT_URI_TAG = "mimray.checkpoint_uri"
# How sweeps and evaluations are linked (reports and eval chaining query these tags):
KIND_TAG = "mimray.kind"  # sweep | trial | eval
SWEEP_TAG = "mimray.sweep"  # on the sweep's parent, its trials and their eval runs
TRIAL_INDEX_TAG = "mimray.trial_index"
EVAL_PROTOCOL_TAG = "mimray.eval.protocol"  # knn | linear | finetune
PRETRAIN_RUN_TAG = "mimray.pretrain_run_id"  # the trial/pretrain run an eval run evaluated
MODEL_ID_TAG = "mimray.model_id"  # the LoggedModel (checkpoint) an eval run evaluated
CHECKPOINT_EPOCH_TAG = "mimray.checkpoint_epoch"
# MLflow 3 opens experiments in its GenAI layout unless told this one trains models.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
MODEL_TYPE = "mimray-pretrain-checkpoint"


def default_root() -> Path:
    """Where the embedded default keeps its SQLite store, artifacts and Ray storage."""
    return Path.cwd() / "mimray-runs"


def resolve_tracking_uri(spec_uri: str | None = None) -> str:
    """The spec's URI, else `MLFLOW_TRACKING_URI`, else an SQLite file under ./mimray-runs/."""
    if spec_uri:
        return spec_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{default_root() / 'mlflow.db'}"


@dataclass(frozen=True)
class RunHandle:
    run_id: str
    experiment_id: str
    resumed: bool
    previous_fingerprint: str | None = None
    previous_status: str | None = None  # FINISHED, FAILED, KILLED, RUNNING (None: new run)


class Tracker:
    """Driver-side access to one tracking store and experiment."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        if tracking_uri.startswith("sqlite:///"):
            use_wal(Path(tracking_uri.removeprefix("sqlite:///")))
        self.client = MlflowClient(tracking_uri)
        # Runs of one sweep found in one search, by key (see `prefetch_runs`).
        self._scope: tuple[str, str] | None = None
        self._scoped: dict[str, _KnownRun] = {}
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            self.experiment_id = self.client.create_experiment(
                experiment,
                artifact_location=self._local_artifact_root(experiment),
                tags=dict([EXPERIMENT_KIND_TAG]),
            )

    @classmethod
    def for_experiment_id(cls, tracking_uri: str, experiment_id: str) -> Tracker:
        from mlflow import MlflowClient

        return cls(tracking_uri, MlflowClient(tracking_uri).get_experiment(experiment_id).name)

    def _local_artifact_root(self, experiment: str) -> str | None:
        # Next to the SQLite file, as an absolute URI: Ray workers run in other folders.
        if not self.tracking_uri.startswith("sqlite:///"):
            return None  # a server decides where artifacts go
        db = Path(self.tracking_uri.removeprefix("sqlite:///"))
        return (db.parent / "artifacts" / experiment).resolve().as_uri()

    def find_run(self, key: str) -> Any | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
            max_results=2,
        )
        return runs[0] if runs else None

    def prefetch_runs(self, tag: str, value: str) -> int:
        """Find every run of the experiment tagged `tag` = `value` (a sweep's parent and
        trials) in one paginated search; returns how many.

        Until `end_prefetch`, `open_run` finds a run whose tags carry `tag` = `value` among
        them by its key, without a query of its own, and creates it when it is not there. That
        is exact because a run gets its tags in the call that creates it: a set-up killed
        half-way leaves runs that carry the tag, or no run at all. It is meant for one set-up:
        runs other processes make later are not seen."""
        self._scope, self._scoped = (tag, value), {}
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{tag}` = '{value}'",
                max_results=1000,
                page_token=token,
            )
            for run in page:
                key = run.data.tags.get(RUN_KEY_TAG)
                if key is not None and key not in self._scoped:
                    self._scoped[key] = _KnownRun.of(run)
            token = page.token
            if not token:
                return len(self._scoped)

    def end_prefetch(self) -> None:
        self._scope, self._scoped = None, {}

    def _existing(self, key: str, tags: Mapping[str, str]) -> _KnownRun | None:
        if self._scope is not None and tags.get(self._scope[0]) == self._scope[1]:
            return self._scoped.get(key)
        found = self.find_run(key)
        return _KnownRun.of(found) if found is not None else None

    def open_run(
        self,
        key: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_name: str | None = None,
        parent_run_id: str | None = None,
    ) -> RunHandle:
        """The run recorded under `key`, reopened; or a new one with `params` logged."""
        from mlflow.entities import Param, RunTag

        existing = self._existing(key, tags)
        run_tags = {**{k: str(v) for k, v in tags.items()}, RUN_KEY_TAG: key}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        if existing is not None:
            # The status stays as it was until training really starts (`mark_running`):
            # a finished sweep trial that is not run again must not look RUNNING. Only what
            # changed is written: tags that differ, and params a killed set-up never logged
            # (a logged param cannot change in MLflow).
            self._log_batch(
                existing.run_id,
                params=[
                    Param(k, _param_value(v)) for k, v in params.items() if k not in existing.params
                ],
                tags=[RunTag(k, v) for k, v in run_tags.items() if existing.tags.get(k) != v],
            )
            return RunHandle(
                existing.run_id,
                self.experiment_id,
                resumed=True,
                previous_fingerprint=existing.tags.get(FINGERPRINT_TAG),
                previous_status=existing.status,
            )
        run = self.client.create_run(self.experiment_id, run_name=run_name or key, tags=run_tags)
        run_id = run.info.run_id
        items = {k: _param_value(v) for k, v in params.items()}
        self._log_batch(run_id, params=[Param(k, v) for k, v in items.items()])
        if self._scope is not None and run_tags.get(self._scope[0]) == self._scope[1]:
            self._scoped[key] = _KnownRun(run_id, run.info.status, run_tags, items)
        return RunHandle(run_id, self.experiment_id, resumed=False)

    def _log_batch(self, run_id: str, params: list[Any], tags: list[Any] | None = None) -> None:
        tags = tags or []
        for start in range(0, max(len(params), 1), 100):  # MLflow caps a batch at 100 params
            batch = params[start : start + 100]
            if batch or tags:
                self.client.log_batch(run_id, params=batch, tags=tags)
            tags = []

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_dataset(
        self, run_id: str, name: str, uri: str, digest: str, num_rows: int, context: str
    ) -> None:
        """Declare the data a run read (MLflow dataset input): lineage from run to data."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name,
            digest=digest[:36],  # MLflow's limit; the profile keeps the whole digest
            source_type="s3" if uri.startswith("s3://") else "mimray",
            source=json.dumps({"uri": uri}),
            profile=json.dumps({"num_rows": num_rows, "digest": digest}),
        )
        tags = [InputTag("mlflow.data.context", context)]
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])

    def log_model_input(self, run_id: str, model_id: str) -> None:
        """Declare the checkpoint (LoggedModel) a run consumed: lineage from eval to model."""
        from mlflow.entities import LoggedModelInput

        self.client.log_inputs(run_id, models=[LoggedModelInput(model_id)])

    def log_model_metrics(
        self, run_id: str, model_id: str, metrics: Mapping[str, float], step: int
    ) -> None:
        """Metrics of `run_id` that also belong to the model: its page lists them."""
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value), step=step, model_id=model_id)

    def mark_running(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        history = self.client.get_metric_history(run_id, key)
        return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]

    def checkpoint_models(self, run_id: str) -> list[Any]:
        """LoggedModels (checkpoints) whose source run is `run_id`, oldest first."""
        models = self.client.search_logged_models(
            experiment_ids=[self.experiment_id],
            filter_string=f"source_run_id = '{run_id}'",
        )
        return sorted(models, key=lambda m: int(m.params.get("epoch", 0)))

    def reporter(
        self,
        run_id: str,
        system_metrics: bool = True,
        system_metrics_interval_s: float = 10.0,
        commit_on_checkpoint: bool = False,
    ) -> MlflowReporter:
        return MlflowReporter(
            tracking_uri=self.tracking_uri,
            run_id=run_id,
            experiment_id=self.experiment_id,
            system_metrics=system_metrics,
            system_metrics_interval_s=system_metrics_interval_s,
            commit_on_checkpoint=commit_on_checkpoint,
        )


@dataclass(frozen=True)
class _KnownRun:
    """What `open_run` needs of a run that already exists."""

    run_id: str
    status: str
    tags: Mapping[str, str]
    params: Mapping[str, str]

    @classmethod
    def of(cls, run: Any) -> _KnownRun:
        return cls(run.info.run_id, run.info.status, run.data.tags, run.data.params)


def use_wal(db: Path) -> None:
    """Put the SQLite store at `db` (created if missing) in WAL mode, and make this process's
    connections to WAL stores commit without waiting for fsync (`synchronous=NORMAL`)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    _commit_without_fsync()
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
    except sqlite3.OperationalError:
        pass  # another process holds it in rollback mode right now: works as before


_FAST_COMMITS = False


def _commit_without_fsync() -> None:
    global _FAST_COMMITS
    if _FAST_COMMITS:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_connect(connection: Any, _record: Any) -> None:
        if isinstance(connection, sqlite3.Connection):
            mode = connection.execute("PRAGMA journal_mode").fetchone()
            if mode and mode[0] == "wal":  # NORMAL is only crash-safe in WAL mode
                connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(Engine, "connect", on_connect)
    _FAST_COMMITS = True


def _param_value(value: Any) -> str:
    text = "" if value is None else str(value)
    return text[:6000]  # MLflow's param length limit


@dataclass
class MlflowReporter:
    """Rank 0's reporter: buffered per-step metrics, system metrics, a LoggedModel per checkpoint.

    It travels to the worker pickled in the train-loop config, so it holds only plain fields
    until `start()` opens the client in the worker process.

    With `commit_on_checkpoint` (training runs), a worker-group restart never records a step,
    an epoch or a checkpoint twice. MLflow's history is append-only, and a restart redoes
    everything after the last checkpoint Ray registered. So metrics wait until the next
    checkpoint is logged, and a failed attempt's are dropped in `close()`; and because a
    checkpoint the worker saved may still be lost (Ray Train registers it a poll later, seen
    here: a worker killed in that window restarted the run from epoch 1), each attempt also
    skips the steps and checkpoints the run already holds. The live view while an epoch runs
    is Prometheus' (`workloads.metrics`).
    """

    tracking_uri: str
    run_id: str
    experiment_id: str
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    flush_every_s: float = 5.0
    commit_on_checkpoint: bool = False
    _buffer: list = field(default_factory=list, repr=False)
    _uncommitted: list = field(default_factory=list, repr=False)
    _recorded_up_to: dict = field(default_factory=dict, repr=False)  # key -> last step in run
    _recorded_checkpoints: dict | None = field(default=None, repr=False)  # epoch -> model id
    _last_flush: float = field(default=0.0, repr=False)
    _client: Any = field(default=None, repr=False)
    _monitor: Any = field(default=None, repr=False)

    def start(self) -> None:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(self.tracking_uri)
        if self.tracking_uri.startswith("sqlite:///"):
            _commit_without_fsync()  # the driver put the store in WAL mode
        self._client = MlflowClient(self.tracking_uri)
        self._last_flush = time.monotonic()
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=self.system_metrics_interval_s, resume_logging=True
            )
            self._monitor.start()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if self.commit_on_checkpoint:
            self._uncommitted.extend(points)
            return
        self._buffer.extend(points)
        # Per-step metrics are cheap to buffer; a write per step would slow the loop.
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if self.commit_on_checkpoint:
            self._buffer = [m for m in self._buffer if m.step > self._recorded_step(m.key)]
        while self._buffer:
            batch, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self._client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def _recorded_step(self, key: str) -> int:
        """The last step of `key` the run held when this attempt first wrote it (-1: none).

        Read once per key and attempt, before this attempt writes it: its own later steps
        are larger. A resumed run reads its whole history of each key once, on restart.
        """
        if key not in self._recorded_up_to:
            history = self._client.get_metric_history(self.run_id, key)
            self._recorded_up_to[key] = max((m.step for m in history), default=-1)
        return self._recorded_up_to[key]

    def log_checkpoint(
        self, uri: str, epoch: int, step: int, metrics: Mapping[str, float]
    ) -> str | None:
        import mlflow
        from mlflow.entities import LoggedModelOutput

        # The checkpoint is saved (the loop logs it after `ray.train.report` returned): what
        # led to it can no longer be redone by a restart.
        self._buffer.extend(self._uncommitted)
        self._uncommitted = []
        self.flush()
        if self.commit_on_checkpoint:
            if self._recorded_checkpoints is None:
                self._recorded_checkpoints = {
                    int(m.params["epoch"]): m.model_id
                    for m in self._client.search_logged_models(
                        experiment_ids=[self.experiment_id],
                        filter_string=f"source_run_id = '{self.run_id}'",
                    )
                    if "epoch" in m.params
                }
            if epoch in self._recorded_checkpoints:
                # Redone after a lost registration: same directory (deterministic name),
                # rewritten in place, so the recorded model already points at it.
                return self._recorded_checkpoints[epoch]
        model = mlflow.create_external_model(
            name=f"checkpoint-epoch-{epoch:04d}",
            source_run_id=self.run_id,
            experiment_id=self.experiment_id,
            model_type=MODEL_TYPE,
            tags={CHECKPOINT_URI_TAG: uri},
            params={"epoch": str(epoch), "step": str(step), "checkpoint_uri": uri},
        )
        self._client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
        if "loss" in metrics:
            self._client.log_metric(
                self.run_id,
                "checkpoint/loss",
                float(metrics["loss"]),
                step=epoch,
                model_id=model.model_id,
            )
        return model.model_id

    def close(self) -> None:
        self._uncommitted = []  # no checkpoint holds them: a restarted attempt redoes them
        if self._client is not None:
            self.flush()
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None


def measured_epoch_seconds(tracking_uri: str, experiment: str, fingerprint: str) -> float | None:
    """Mean epoch time of earlier runs with this config fingerprint, read-only.

    Returns None when there is no store yet (a dry run must not create one) or no such run.
    """
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        if not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
            return None
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
    )
    times = [
        m.value
        for run in runs
        for m in client.get_metric_history(run.info.run_id, "epoch/epoch_time_s")
    ]
    return sum(times) / len(times) if times else None
