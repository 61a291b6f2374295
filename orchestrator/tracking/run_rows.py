"""A sweep's runs read from an SQL store with plain SELECTs, for `report`, `lineage` and `eval`.

`search_runs` builds an ORM object for every param, tag and metric of every run it returns:
for a sweep of 1,000 trials of ~60 params each, ~93,000 objects and ~2 s of CPU before a line
is printed, and as much again for its evaluations and loss curves. These reads select the same
rows from MLflow's tables (runs, tags, params, latest_metrics, inputs, metrics) and give runs
the shape of MLflow's `Run` that the readers use (`info`, `data.tags/params/metrics`,
`inputs.dataset_inputs`), in `search_runs`' default order (newest first, then run id). A
server store has no such shortcut: there each function returns None and the caller asks the
server (`search_runs`, the bulk history endpoint). `test_tracker_scale.py` checks that the
report and lineage of a recorded sweep are what they were with `search_runs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.tracking.checkpoints import chunks
from orchestrator.tracking.pending_runs import sql_store

IDS_PER_SELECT = 500  # run ids per `IN (...)`: well under SQLite's variable limit


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    run_name: str
    status: str
    start_time: int | None
    end_time: int | None
    experiment_id: str


@dataclass(frozen=True)
class RunData:
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class InputTag:
    key: str
    value: str


@dataclass(frozen=True)
class DatasetRef:
    name: str
    digest: str


@dataclass(frozen=True)
class DatasetInput:
    dataset: DatasetRef
    tags: list[InputTag] = field(default_factory=list)


@dataclass(frozen=True)
class RunInputs:
    dataset_inputs: list[DatasetInput] = field(default_factory=list)


@dataclass(frozen=True)
class RunRow:
    info: RunInfo
    data: RunData
    inputs: RunInputs


def search_tagged(
    client: Any, experiment_ids: Sequence[str], tags: Mapping[str, str]
) -> list[RunRow] | None:
    """Active runs of the experiments carrying every tag in `tags`, with their tags, params,
    latest metrics and dataset inputs; None when the store is not an SQL store."""
    store = sql_store(client)
    if store is None:
        return None
    from mlflow.entities import LifecycleStage
    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
    from sqlalchemy import and_, exists, select

    query = select(
        SqlRun.run_uuid,
        SqlRun.name,
        SqlRun.status,
        SqlRun.start_time,
        SqlRun.end_time,
        SqlRun.experiment_id,
    ).where(
        SqlRun.experiment_id.in_([int(e) for e in experiment_ids]),
        SqlRun.lifecycle_stage == LifecycleStage.ACTIVE,
    )
    for key, value in tags.items():
        query = query.where(
            exists().where(
                and_(SqlTag.run_uuid == SqlRun.run_uuid, SqlTag.key == key, SqlTag.value == value)
            )
        )
    query = query.order_by(SqlRun.start_time.desc(), SqlRun.run_uuid)
    with store.ManagedSessionMaker() as session:
        found = session.execute(query).all()
        ids = [row[0] for row in found]
        run_tags, params, metrics = _key_values(session, ids)
        inputs = _dataset_inputs(session, ids)
    return [
        RunRow(
            RunInfo(run_id, name, status, start, end, str(experiment)),
            RunData(run_tags.get(run_id, {}), params.get(run_id, {}), metrics.get(run_id, {})),
            RunInputs(inputs.get(run_id, [])),
        )
        for run_id, name, status, start, end, experiment in found
    ]


def metric_points(
    client: Any, run_ids: Sequence[str], key: str
) -> list[tuple[str, int, int, float]] | None:
    """Every (run id, step, timestamp, value) of metric `key` of the runs; None when the
    store is not an SQL store."""
    store = sql_store(client)
    if store is None:
        return None
    from mlflow.store.tracking.dbmodels.models import SqlMetric
    from sqlalchemy import select

    points = []
    with store.ManagedSessionMaker() as session:
        for chunk in chunks(run_ids, IDS_PER_SELECT):
            query = select(
                SqlMetric.run_uuid,
                SqlMetric.step,
                SqlMetric.timestamp,
                SqlMetric.value,
                SqlMetric.is_nan,
            ).where(SqlMetric.key == key, SqlMetric.run_uuid.in_(chunk))
            points += [
                (run_id, step, timestamp, float("nan") if is_nan else value)
                for run_id, step, timestamp, value, is_nan in session.execute(query)
            ]
    return points


def _key_values(session: Any, ids: list[str]) -> tuple[dict, dict, dict]:
    """Run id -> {key: value} of its tags, its params and its latest metrics."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlTag
    from sqlalchemy import select

    tags: dict[str, dict[str, str]] = {}
    params: dict[str, dict[str, str]] = {}
    metrics: dict[str, dict[str, float]] = {}
    for chunk in chunks(ids, IDS_PER_SELECT):
        for table, into in ((SqlTag, tags), (SqlParam, params)):
            rows = session.execute(
                select(table.run_uuid, table.key, table.value).where(table.run_uuid.in_(chunk))
            )
            for run_id, key, value in rows:
                into.setdefault(run_id, {})[key] = value
        rows = session.execute(
            select(
                SqlLatestMetric.run_uuid,
                SqlLatestMetric.key,
                SqlLatestMetric.value,
                SqlLatestMetric.is_nan,
            ).where(SqlLatestMetric.run_uuid.in_(chunk))
        )
        for run_id, key, value, is_nan in rows:
            metrics.setdefault(run_id, {})[key] = float("nan") if is_nan else value
    return tags, params, metrics


def _dataset_inputs(session: Any, ids: list[str]) -> dict[str, list[DatasetInput]]:
    """Run id -> its dataset inputs, each with its tags (as `search_runs` gives them)."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset, SqlInput, SqlInputTag
    from sqlalchemy import select

    by_run: dict[str, dict[str, DatasetInput]] = {}
    for chunk in chunks(ids, IDS_PER_SELECT):
        rows = session.execute(
            select(
                SqlInput.destination_id,
                SqlDataset.dataset_uuid,
                SqlDataset.name,
                SqlDataset.digest,
                SqlInputTag.name,
                SqlInputTag.value,
            )
            .select_from(SqlInput)
            .join(SqlDataset, SqlInput.source_id == SqlDataset.dataset_uuid)
            .outerjoin(SqlInputTag, SqlInputTag.input_uuid == SqlInput.input_uuid)
            .where(SqlInput.destination_type == "RUN", SqlInput.destination_id.in_(chunk))
            .order_by(SqlInput.destination_id)
        )
        for run_id, dataset_id, name, digest, tag_key, tag_value in rows:
            inputs = by_run.setdefault(run_id, {})
            if dataset_id not in inputs:
                inputs[dataset_id] = DatasetInput(DatasetRef(name, digest))
            if tag_key is not None:
                inputs[dataset_id].tags.append(InputTag(tag_key, tag_value))
    return {run_id: list(inputs.values()) for run_id, inputs in by_run.items()}
