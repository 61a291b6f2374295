"""The one interface every read of runs and checkpoints goes through (`RunReader`), and its
reference implementation on MLflow's public client (`ClientReader`).

Two other implementations answer the same calls with the same records, faster where MLflow's
client is slow at a sweep's size: `sql_reads.SqlReader` (plain SELECTs on an SQLite store whose
tables are exactly the ones it was written for) and `rest_reads.RestReader` (a tracking server
over its REST API, several requests in flight). Tests compare each with `ClientReader` on the
same store. Reads only: nothing here writes.
"""

from __future__ import annotations

import functools
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from orchestrator.environment import environment_variable
from orchestrator.tracking.records import MetricPoint, TrackedModel, TrackedRun, dataset_uses

# MLflow's bulk reads take at most 100 runs; `IN (...)` filters are kept to the same 100 ids.
IDS_PER_QUERY = 100
PAGE = 1000  # runs or models per page of a search
RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


class RunReader(Protocol):
    """Read-only access to one tracking store."""

    tracking_uri: str

    def experiments(self) -> dict[str, str]:
        """Active experiments: id -> name."""
        ...

    def experiment_id(self, name: str) -> str | None: ...

    def search(self, experiment_ids: Sequence[str], filter_string: str) -> list[TrackedRun]:
        """Every active run matching an MLflow filter string, newest first, then by run id."""
        ...

    def tagged(
        self, experiment_ids: Sequence[str], tags: Mapping[str, str], expected: int = 0
    ) -> list[TrackedRun]:
        """`search` for the runs carrying every tag in `tags` (`expected`: how many the caller
        thinks there are; a reader may split a large search)."""
        ...

    def prefetch(
        self, experiment_ids: Sequence[str], tags: Mapping[str, str], expected: int = 0
    ) -> None:
        """Start `tagged(...)` now where the reader can work in the background; a later call
        with the same arguments takes its result."""
        ...

    def run(self, run_id: str) -> TrackedRun | None:
        """The run with this id; None when there is none (or it is not a run id)."""
        ...

    def model(self, model_id: str) -> TrackedModel | None: ...

    def models_of(self, experiment_id: str, run_ids: Sequence[str]) -> list[TrackedModel]:
        """Every LoggedModel whose source is one of the runs."""
        ...

    def metric_histories(self, run_ids: Sequence[str], key: str) -> dict[str, list[MetricPoint]]:
        """Run id -> every point of metric `key`, sorted by (step, timestamp, value)."""
        ...

    def text_artifact(self, run_id: str, path: str) -> str | None:
        """A small artifact of the run as text; None when the run has no such file."""
        ...


def tag_filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())


def chunks(items: Sequence[str], size: int = IDS_PER_QUERY) -> Iterator[list[str]]:
    """`items` in lists of at most `size`, for queries that take a bounded list of ids."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def source_run_filter(run_ids: Sequence[str]) -> str | None:
    """The LoggedModel filter for these runs; None when none of them is a run id."""
    quoted = ", ".join(f"'{run_id}'" for run_id in run_ids if RUN_ID_PATTERN.fullmatch(run_id))
    return f"source_run_id IN ({quoted})" if quoted else None


class ClientReader:
    """The reference reader: `MlflowClient`'s search and get calls, on any store MLflow opens."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    @functools.cached_property
    def client(self) -> Any:
        """`MlflowClient` on the store, made at its first use: importing MLflow and opening
        its store cost seconds that a subclass answering from elsewhere never pays."""
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    def experiments(self) -> dict[str, str]:
        found: dict[str, str] = {}
        token = None
        while True:
            page = self.client.search_experiments(max_results=PAGE, page_token=token)
            found.update((e.experiment_id, e.name) for e in page)
            token = page.token
            if not token:
                return found

    def experiment_id(self, name: str) -> str | None:
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else None

    def search(self, experiment_ids: Sequence[str], filter_string: str) -> list[TrackedRun]:
        runs: list[TrackedRun] = []
        token = None
        while True:
            page = self.client.search_runs(
                list(experiment_ids),
                filter_string=filter_string,
                max_results=PAGE,
                page_token=token,
            )
            runs += [tracked_run(run) for run in page]
            token = page.token
            if not token:
                return runs

    def tagged(
        self, experiment_ids: Sequence[str], tags: Mapping[str, str], expected: int = 0
    ) -> list[TrackedRun]:
        return self.search(experiment_ids, tag_filter(tags))

    def prefetch(
        self, experiment_ids: Sequence[str], tags: Mapping[str, str], expected: int = 0
    ) -> None:
        pass  # reads here are synchronous

    def run(self, run_id: str) -> TrackedRun | None:
        from mlflow.exceptions import MlflowException

        if not RUN_ID_PATTERN.fullmatch(run_id):
            return None
        try:
            return tracked_run(self.client.get_run(run_id))
        except MlflowException:
            return None

    def model(self, model_id: str) -> TrackedModel | None:
        from mlflow.exceptions import MlflowException

        if not model_id.startswith("m-"):
            return None
        try:
            return tracked_model(self.client.get_logged_model(model_id))
        except MlflowException:
            return None

    def models_of(self, experiment_id: str, run_ids: Sequence[str]) -> list[TrackedModel]:
        models: list[TrackedModel] = []
        for chunk in chunks(run_ids):
            token, filter_string = None, source_run_filter(chunk)
            while filter_string:
                page = self.client.search_logged_models(
                    experiment_ids=[experiment_id],
                    filter_string=filter_string,
                    max_results=PAGE,
                    page_token=token,
                )
                models += [tracked_model(model) for model in page]
                token = page.token
                if not token:
                    break
        return models

    def metric_histories(self, run_ids: Sequence[str], key: str) -> dict[str, list[MetricPoint]]:
        return {
            run_id: sorted(
                (m.step, m.timestamp, m.value) for m in self.client.get_metric_history(run_id, key)
            )
            for run_id in run_ids
        }

    def text_artifact(self, run_id: str, path: str) -> str | None:
        from mlflow.exceptions import MlflowException

        # MLflow draws a progress bar on stderr for every download, even of one small file.
        with (
            tempfile.TemporaryDirectory() as tmp,
            environment_variable("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
        ):
            try:
                return Path(self.client.download_artifacts(run_id, path, tmp)).read_text()
            except (MlflowException, OSError):
                return None


def tracked_run(run: Any) -> TrackedRun:
    """An MLflow `Run` as mimray's record."""
    inputs = run.inputs.dataset_inputs if run.inputs is not None else []
    return TrackedRun(
        run_id=run.info.run_id,
        name=run.info.run_name,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        datasets=dataset_uses(
            [(i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}) for i in inputs]
        ),
    )


def tracked_model(model: Any) -> TrackedModel:
    """An MLflow `LoggedModel` as mimray's record."""
    return TrackedModel(
        model_id=model.model_id,
        name=model.name,
        experiment_id=model.experiment_id,
        model_type=model.model_type,
        source_run_id=model.source_run_id,
        params=dict(model.params),
        tags=dict(model.tags),
    )
