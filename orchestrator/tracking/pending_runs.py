"""A sweep set-up's runs: those the store holds (`KnownRun`), and the new ones (`PendingRun`),
written a few hundred per transaction on an SQL store.

MLflow's API writes a new run in two calls (the run with its tags, its params), each its own
session and transaction with its own reads of the experiment and run: with the dataset input
a set-up also wrote before trials declared their own, ~25 ms of CPU per trial here, 25 s for
1,000 trials before Tune starts. `write_runs` inserts the rows `SqlAlchemyStore.create_run` and
`log_batch` would insert into MLflow's own tables (its SQLAlchemy models'), in one transaction
per chunk: a set-up killed half-way leaves whole runs (tags, params) or none, so a restore
finds every run by its key or makes it. Those rows, and `run_rows`' SELECTs, follow MLflow
3.17's tables: with another MLflow release (pyproject allows >=3.1) `sql_store` says None and
both go through MLflow's API, slower and always right. `test_tracker_scale.py` reads the
runs back through MLflow's API, and checks the API path gives the same report and lineage.
A server store has no bulk endpoint: runs go through the API there (`Tracker.open_run`).
Dataset inputs are not written here: a sweep's trial declares its data when it starts
(`run_prep.py`), and a pending run given one is written first (`Tracker.log_dataset`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RUNS_PER_TRANSACTION = 250
# MLflow releases whose tables and whose create_run / log_batch rows the inserts
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
    from mlflow.store.tracking.dbmodels.models import SqlParam, SqlRun, SqlTag
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
    from mlflow.utils.uri import append_to_uri_path

    run_rows, tag_rows, param_rows = [], [], []
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
    return [
        (SqlRun.__table__, run_rows),
        (SqlTag.__table__, tag_rows),
        (SqlParam.__table__, param_rows),
    ]
