"""Driver-side writes: the experiment, and each run found or created by its key.

`Tracker` creates the store and experiment (before any worker starts: many workers creating a
fresh SQLite database at once fail), and finds or creates each run by a deterministic key tag,
so re-running the same name continues the same run. Every write is a call of MLflow's public
client (`MlflowClient`); a run gets its key tag in the call that creates it, so a process
killed half-way leaves a run that is found again by its key, or no run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.tracking.checkpoints import checkpoint_models_of
from orchestrator.tracking.names import EXPERIMENT_KIND_TAG, FINGERPRINT_TAG, RUN_KEY_TAG
from orchestrator.tracking.reader import ClientReader, tag_filter, tracked_run
from orchestrator.tracking.records import DATA_CONTEXT_TAG, TrackedModel, TrackedRun
from orchestrator.tracking.reporter import MlflowReporter
from orchestrator.tracking.store import use_wal

PLANNED_TRIALS_FILE = "planned_trials.json"


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
        self.reader = ClientReader(tracking_uri)
        # Runs of one set-up found in one search, by key (`prefetch_runs`).
        self._scope: tuple[str, str] | None = None
        self._scoped: dict[str, TrackedRun] = {}
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
        """The MLflow run recorded under `key`, or None."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=tag_filter({RUN_KEY_TAG: key}), max_results=2
        )
        return runs[0] if runs else None

    def known_runs(self, tag: str, value: str) -> dict[str, RunHandle]:
        """Key -> handle of every run of the experiment tagged `tag` = `value` (a sweep's
        parent and trials), in one paginated search; creates nothing."""
        found = self.reader.tagged([self.experiment_id], {tag: value})
        return {
            run.tags[RUN_KEY_TAG]: _handle(run, self.experiment_id)
            for run in found
            if RUN_KEY_TAG in run.tags
        }

    def prefetch_runs(self, tag: str, value: str) -> int:
        """Find every run tagged `tag` = `value` in one search; until `end_prefetch`,
        `open_run` finds such a run by its key among them instead of asking the store. It is
        meant for one set-up: runs other processes make meanwhile are not seen."""
        found = self.reader.tagged([self.experiment_id], {tag: value})
        self._scope = (tag, value)
        self._scoped = {run.tags[RUN_KEY_TAG]: run for run in found if RUN_KEY_TAG in run.tags}
        return len(self._scoped)

    def end_prefetch(self) -> None:
        self._scope, self._scoped = None, {}

    def _in_scope(self, tags: Mapping[str, str]) -> bool:
        return self._scope is not None and tags.get(self._scope[0]) == self._scope[1]

    def _existing(self, key: str, tags: Mapping[str, str]) -> TrackedRun | None:
        if self._in_scope(tags):
            return self._scoped.get(key)
        found = self.find_run(key)
        return tracked_run(found) if found is not None else None

    def open_run(
        self,
        key: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_name: str | None = None,
        parent_run_id: str | None = None,
    ) -> RunHandle:
        """The run recorded under `key`, reopened; or a new one with `params` logged.

        Two processes opening the same new key at the same moment would each create a run:
        a key is opened by one process at a time (the driver, or the trial that owns it)."""
        from mlflow.entities import Param, RunTag

        existing = self._existing(key, tags)
        run_tags = {**{k: str(v) for k, v in tags.items()}, RUN_KEY_TAG: key}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        items = {k: _param_value(v) for k, v in params.items()}
        if existing is not None:
            # The status stays as it was until training really starts (`mark_running`):
            # a finished sweep trial that is not run again must not look RUNNING. Only what
            # changed is written: tags that differ, and params a killed process never logged
            # (a logged param cannot change in MLflow).
            self._log_batch(
                existing.run_id,
                params=[Param(k, v) for k, v in items.items() if k not in existing.params],
                tags=[RunTag(k, v) for k, v in run_tags.items() if existing.tags.get(k) != v],
            )
            if self._in_scope(run_tags):
                self._scoped[key] = _updated(existing, run_tags, items)
            return _handle(existing, self.experiment_id)
        run = self.client.create_run(self.experiment_id, run_name=run_name or key, tags=run_tags)
        run_id = run.info.run_id
        self._log_batch(run_id, params=[Param(k, v) for k, v in items.items()])
        if self._in_scope(run_tags):
            self._scoped[key] = _updated(tracked_run(run), run_tags, items)
        return RunHandle(run_id, self.experiment_id, resumed=False)

    def _log_batch(self, run_id: str, params: list[Any], tags: list[Any] | None = None) -> None:
        tags = tags or []
        for start in range(0, max(len(params), 1), 100):  # MLflow caps a batch at 100 params
            batch = params[start : start + 100]
            if batch or tags:
                self.client.log_batch(run_id, params=batch, tags=tags)
            tags = []

    def log_planned_trials(self, run_id: str, trials: Sequence[Mapping[str, Any]]) -> None:
        """List a sweep's planned trials on its parent run (`planned_trials.json`), before
        any of them has a run of its own."""
        self.client.log_text(run_id, json.dumps(list(trials), indent=1), PLANNED_TRIALS_FILE)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_dataset(
        self,
        run_id: str,
        name: str,
        uri: str,
        digest: str,
        num_rows: int,
        context: str,
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare the data a run read (MLflow dataset input): lineage from run to data.
        `profile`: more facts about the data for its MLflow profile (e.g. `max_side`)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        dataset = Dataset(
            name=name,
            digest=digest[:36],  # MLflow's limit; the profile keeps the whole digest
            source_type="s3" if uri.startswith("s3://") else "mimray",
            source=json.dumps({"uri": uri}),
            profile=json.dumps({"num_rows": num_rows, "digest": digest, **(profile or {})}),
        )
        tags = [InputTag(DATA_CONTEXT_TAG, context)]
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
        points = self.reader.metric_histories([run_id], key)[run_id]
        return [(step, value) for step, _, value in points]

    def checkpoint_models(self, run_id: str) -> list[TrackedModel]:
        """The run's checkpoints (LoggedModels), oldest epoch first."""
        return checkpoint_models_of(self.reader, self.experiment_id, [run_id])[run_id]

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


def _handle(run: TrackedRun, experiment_id: str) -> RunHandle:
    return RunHandle(
        run.run_id,
        experiment_id,
        resumed=True,
        previous_fingerprint=run.tags.get(FINGERPRINT_TAG),
        previous_status=run.status,
    )


def _updated(run: TrackedRun, tags: Mapping[str, str], params: Mapping[str, str]) -> TrackedRun:
    """`run` as the store holds it after `open_run` wrote `tags` and new `params`."""
    return replace(run, tags={**run.tags, **tags}, params={**params, **run.params})


def _param_value(value: Any) -> str:
    text = "" if value is None else str(value)
    return text[:6000]  # MLflow's param length limit
