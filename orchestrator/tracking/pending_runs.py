"""A sweep set-up's runs: those the store holds (`KnownRun`), and the new ones (`PendingRun`),
written a few hundred per transaction on an SQL store.

MLflow's API writes a new run in three calls (the run with its tags, its params, its dataset
input), each its own session and transaction with its own reads of the experiment and run:
~25 ms of CPU per trial here, 25 s for 1,000 trials before Tune starts. `write_runs` inserts
the rows `SqlAlchemyStore.create_run`, `log_batch` and `log_inputs` would insert into MLflow's
own tables (its SQLAlchemy models'), in one transaction per chunk: a set-up killed half-way
leaves whole runs (tags, params, inputs) or none, so a restore finds every run by its key or
makes it. Those rows, and `run_rows`' SELECTs, follow MLflow 3.17's tables: with another
MLflow release (pyproject allows >=3.1) `sql_store` says None and both go through MLflow's API,
slower and always right. `test_tracker_scale.py` reads the runs back through MLflow's API, and
checks the API path gives the same report and lineage.
A server store has no bulk endpoint: runs go through the API there (`Tracker.open_run`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RUNS_PER_TRANSACTION = 250
# MLflow releases whose tables and whose create_run / log_batch / log_inputs rows the inserts
# here and the SELECTs of `run_rows` are written for and tested with (major.minor).
SQL_LAYOUT_RELEASES = ("3.17",)


@dataclass(frozen=True)
class KnownRun:
    """What `open_run` and `log_dataset` need of a run that already exists."""

    run_id: str
    status: str
    tags: Mapping[str, str]
    params: Mapping[str, str]
    datasets: frozenset[tuple[str, str, str]]  # (name, digest, context) of its dataset inputs

    @classmethod
    def of(cls, run: Any) -> KnownRun:
        inputs = run.inputs.dataset_inputs if run.inputs is not None else []
        datasets = frozenset(
            (i.dataset.name, i.dataset.digest, tag.value)
            for i in inputs
            for tag in i.tags
            if tag.key == "mlflow.data.context"
        )
        return cls(run.info.run_id, run.info.status, run.data.tags, run.data.params, datasets)


@dataclass
class PendingRun:
    """A run `Tracker.open_run` promised (its id is final) and `write_runs` will write."""

    run_id: str
    name: str
    tags: dict[str, str]
    params: dict[str, str]
    start_time: int
    datasets: list[Any] = field(default_factory=list)  # mlflow.entities.DatasetInput

    @classmethod
    def new(cls, name: str, tags: dict[str, str], params: dict[str, str]) -> PendingRun:
        # The id MLflow's create_run would draw (uuid4, hex).
        return cls(uuid.uuid4().hex, name, tags, params, int(time.time() * 1000))


def sql_store(client: Any) -> Any | None:
    """The client's SQLAlchemy store, or None: a server (REST), not an MlflowClient, or an
    MLflow release the SQL here was not written for (`SQL_LAYOUT_RELEASES`)."""
    tracking = getattr(client, "_tracking_client", None)  # bulk writes are not on MlflowClient
    if tracking is None:
        return None  # e.g. `rest_reads.RestReader`: asked before MLflow is imported
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.version import VERSION

    if ".".join(VERSION.split(".")[:2]) not in SQL_LAYOUT_RELEASES:
        return None  # another table layout may need other rows: MLflow's API writes them
    store = tracking.store
    return store if isinstance(store, SqlAlchemyStore) else None


def write_runs(client: Any, experiment_id: str, runs: list[PendingRun]) -> None:
    """Write `runs` (new, in `experiment_id`) as MLflow's own calls would, in few transactions."""
    store = sql_store(client)
    experiment = store.get_experiment(experiment_id)
    for start in range(0, len(runs), RUNS_PER_TRANSACTION):
        with store.ManagedSessionMaker(read_only=False) as session:
            chunk = runs[start : start + RUNS_PER_TRANSACTION]
            # Core inserts, one statement per table: the ORM's unit of work cost ~9 ms of CPU
            # per run for its ~60 param and tag objects.
            for table, rows in _rows(session, experiment, chunk):
                if rows:
                    session.execute(table.insert(), rows)


def _rows(session: Any, experiment: Any, runs: list[PendingRun]) -> list[tuple[Any, list]]:
    """(table, rows) in the order foreign keys need them."""
    from mlflow.entities import LifecycleStage, RunStatus, SourceType
    from mlflow.store.tracking.dbmodels.models import (
        SqlDataset,
        SqlInput,
        SqlInputTag,
        SqlParam,
        SqlRun,
        SqlTag,
    )
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
    from mlflow.utils.uri import append_to_uri_path

    datasets = _dataset_ids(session, experiment.experiment_id, runs)
    new_datasets = [row for _, row in datasets.values() if row is not None]
    run_rows, tag_rows, param_rows, input_rows, input_tag_rows = [], [], [], [], []
    for run in runs:
        tags = {MLFLOW_RUN_NAME: run.name, **run.tags}
        run_rows.append(
            {
                "name": run.name,
                "artifact_uri": append_to_uri_path(
                    experiment.artifact_location, run.run_id, "artifacts"
                ),
                "run_uuid": run.run_id,
                "experiment_id": int(experiment.experiment_id),
                "source_type": SourceType.to_string(SourceType.UNKNOWN),
                "source_name": "",
                "entry_point_name": "",
                "user_id": tags.get(MLFLOW_USER, "unknown"),
                "status": RunStatus.to_string(RunStatus.RUNNING),
                "start_time": run.start_time,
                "end_time": None,
                "deleted_time": None,
                "source_version": "",
                "lifecycle_stage": LifecycleStage.ACTIVE,
            }
        )
        tag_rows += [{"key": k, "value": v, "run_uuid": run.run_id} for k, v in tags.items()]
        param_rows += [
            {"key": k, "value": v, "run_uuid": run.run_id} for k, v in run.params.items()
        ]
        for dataset_input in run.datasets:
            input_id = uuid.uuid4().hex
            dataset = dataset_input.dataset
            input_rows.append(
                {
                    "input_uuid": input_id,
                    "source_type": "DATASET",
                    "source_id": datasets[(dataset.name, dataset.digest)][0],
                    "destination_type": "RUN",
                    "destination_id": run.run_id,
                }
            )
            input_tag_rows += [
                {"input_uuid": input_id, "name": tag.key, "value": tag.value}
                for tag in dataset_input.tags
            ]
    return [
        (SqlDataset.__table__, new_datasets),
        (SqlRun.__table__, run_rows),
        (SqlTag.__table__, tag_rows),
        (SqlParam.__table__, param_rows),
        (SqlInput.__table__, input_rows),
        (SqlInputTag.__table__, input_tag_rows),
    ]


def _dataset_ids(
    session: Any, experiment_id: str, runs: list[PendingRun]
) -> dict[tuple[str, str], tuple[str, Any]]:
    """(name, digest) -> (dataset id, a new `datasets` row or None when the store has it)."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset

    wanted = {(d.dataset.name, d.dataset.digest): d.dataset for run in runs for d in run.datasets}
    found: dict[tuple[str, str], tuple[str, Any]] = {}
    if wanted:
        for row in (
            session.query(SqlDataset)
            .filter(SqlDataset.experiment_id == experiment_id)
            .filter(SqlDataset.name.in_({name for name, _ in wanted}))
            .filter(SqlDataset.digest.in_({digest for _, digest in wanted}))
        ):
            found[(row.name, row.digest)] = (row.dataset_uuid, None)
    for key, dataset in wanted.items():
        if key not in found:
            dataset_id = uuid.uuid4().hex
            found[key] = (
                dataset_id,
                {
                    "dataset_uuid": dataset_id,
                    "experiment_id": int(experiment_id),
                    "name": dataset.name,
                    "digest": dataset.digest,
                    "dataset_source_type": dataset.source_type,
                    "dataset_source": dataset.source,
                    "dataset_schema": dataset.schema,
                    "dataset_profile": dataset.profile,
                },
            )
    return found
