"""Driver-side writes: the experiment, and each run found or created by its key.

`Tracker` creates the store and experiment (before any worker starts: many workers creating a
fresh SQLite database at once fail), and finds or creates each run by a deterministic key tag,
so re-running the same name continues the same run. A sweep's runs are found in one search
(`prefetch_runs`) and, on an SQL store, its new runs are written a few hundred per transaction
(`pending_runs.py`): creating 1,000 trial runs was 71 s with a search and three writes per
trial.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.tracking.checkpoints import checkpoint_models_of
from orchestrator.tracking.names import EXPERIMENT_KIND_TAG, FINGERPRINT_TAG, RUN_KEY_TAG
from orchestrator.tracking.pending_runs import KnownRun, PendingRun, sql_store, write_runs
from orchestrator.tracking.reporter import MlflowReporter
from orchestrator.tracking.store import use_wal


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
        self._scoped: dict[str, KnownRun] = {}
        self._scoped_ids: dict[str, KnownRun] = {}  # the same runs by run id
        # New runs of that sweep not written yet (SQL stores: see `write_pending_runs`).
        self._pending: dict[str, PendingRun] = {}
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
        runs other processes make later are not seen.

        On an SQL store the new runs (tags and params) wait until `end_prefetch` or the first
        other use of one of them, and are written a few hundred per transaction
        (`pending_runs.write_runs`): MLflow's API took three calls per run with the dataset
        input, ~25 ms of CPU (1,000 trials: ~25 s). A killed set-up leaves whole runs or none."""
        self._scope, self._scoped, self._scoped_ids = (tag, value), {}, {}
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
                    self._remember(key, KnownRun.of(run))
            token = page.token
            if not token:
                return len(self._scoped)

    def end_prefetch(self) -> None:
        self.write_pending_runs()
        self._scope, self._scoped, self._scoped_ids = None, {}, {}

    def _remember(self, key: str, run: KnownRun) -> None:
        self._scoped[key] = run
        self._scoped_ids[run.run_id] = run

    def write_pending_runs(self) -> None:
        if self._pending:
            pending, self._pending = list(self._pending.values()), {}
            write_runs(self.client, self.experiment_id, pending)

    @property
    def writes_in_batches(self) -> bool:
        """Whether a set-up's new runs wait and are written together (an SQL store)."""
        return sql_store(self.client) is not None

    def _batches_new_runs(self, tags: Mapping[str, str]) -> bool:
        in_scope = self._scope is not None and tags.get(self._scope[0]) == self._scope[1]
        return in_scope and self.writes_in_batches

    def _existing(self, key: str, tags: Mapping[str, str]) -> KnownRun | None:
        if self._scope is not None and tags.get(self._scope[0]) == self._scope[1]:
            return self._scoped.get(key)
        found = self.find_run(key)
        return KnownRun.of(found) if found is not None else None

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
            self._written(existing.run_id)  # opened twice in one set-up: write it, then update
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
        items = {k: _param_value(v) for k, v in params.items()}
        if self._batches_new_runs(run_tags):
            pending = PendingRun.new(run_name or key, run_tags, items)
            self._pending[pending.run_id] = pending
            self._remember(key, KnownRun(pending.run_id, "RUNNING", run_tags, items, frozenset()))
            return RunHandle(pending.run_id, self.experiment_id, resumed=False)
        run = self.client.create_run(self.experiment_id, run_name=run_name or key, tags=run_tags)
        run_id = run.info.run_id
        self._log_batch(run_id, params=[Param(k, v) for k, v in items.items()])
        if self._scope is not None and run_tags.get(self._scope[0]) == self._scope[1]:
            self._remember(key, KnownRun(run_id, run.info.status, run_tags, items, frozenset()))
        return RunHandle(run_id, self.experiment_id, resumed=False)

    def _log_batch(self, run_id: str, params: list[Any], tags: list[Any] | None = None) -> None:
        tags = tags or []
        for start in range(0, max(len(params), 1), 100):  # MLflow caps a batch at 100 params
            batch = params[start : start + 100]
            if batch or tags:
                self.client.log_batch(run_id, params=batch, tags=tags)
            tags = []

    def _written(self, run_id: str) -> str:
        """`run_id`, once the store holds it (a pending run is written first, with the rest)."""
        if run_id in self._pending:
            self.write_pending_runs()
        return run_id

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(self._written(run_id), text, artifact_file)

    def log_dataset(
        self, run_id: str, name: str, uri: str, digest: str, num_rows: int, context: str
    ) -> None:
        """Declare the data a run read (MLflow dataset input): lineage from run to data.

        Within a prefetch, a run that already holds this input is not written to again, and a
        pending run is written first."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        dataset = Dataset(
            name=name,
            digest=digest[:36],  # MLflow's limit; the profile keeps the whole digest
            source_type="s3" if uri.startswith("s3://") else "mimray",
            source=json.dumps({"uri": uri}),
            profile=json.dumps({"num_rows": num_rows, "digest": digest}),
        )
        tags = [InputTag("mlflow.data.context", context)]
        run_id = self._written(run_id)
        # By id, not a scan of every run: set-up threads add runs meanwhile (a scan then failed
        # with "dictionary changed size during iteration" at 5,000 trials) and it was O(N).
        known = self._scoped_ids.get(run_id)
        if known is not None and (dataset.name, dataset.digest, context) in known.datasets:
            return
        try:  # MLflow keeps one input of a data set per run: logged again, it stays one
            self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])
        except MlflowException:
            # Runs starting at once (sweep trials) may each insert this data set as new; the
            # store keys it by experiment, name and digest and refuses all but the first. A
            # second try finds it; any other failure fails again.
            self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])

    def log_model_input(self, run_id: str, model_id: str) -> None:
        """Declare the checkpoint (LoggedModel) a run consumed: lineage from eval to model."""
        from mlflow.entities import LoggedModelInput

        self.client.log_inputs(self._written(run_id), models=[LoggedModelInput(model_id)])

    def log_model_metrics(
        self, run_id: str, model_id: str, metrics: Mapping[str, float], step: int
    ) -> None:
        """Metrics of `run_id` that also belong to the model: its page lists them."""
        for key, value in metrics.items():
            self.client.log_metric(
                self._written(run_id), key, float(value), step=step, model_id=model_id
            )

    def mark_running(self, run_id: str) -> None:
        self.client.update_run(self._written(run_id), status="RUNNING")

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(self._written(run_id), status=status)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        history = self.client.get_metric_history(self._written(run_id), key)
        return [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]

    def checkpoint_models(self, run_id: str) -> list[Any]:
        """The run's checkpoints (LoggedModels), oldest epoch first."""
        models = checkpoint_models_of(self.client, self.experiment_id, [self._written(run_id)])
        return models[run_id]

    def reporter(
        self,
        run_id: str,
        system_metrics: bool = True,
        system_metrics_interval_s: float = 10.0,
        commit_on_checkpoint: bool = False,
    ) -> MlflowReporter:
        return MlflowReporter(
            tracking_uri=self.tracking_uri,
            run_id=self._written(run_id),
            experiment_id=self.experiment_id,
            system_metrics=system_metrics,
            system_metrics_interval_s=system_metrics_interval_s,
            commit_on_checkpoint=commit_on_checkpoint,
        )


def _param_value(value: Any) -> str:
    text = "" if value is None else str(value)
    return text[:6000]  # MLflow's param length limit
