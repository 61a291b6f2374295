"""MLflow's SQL rows of runs and LoggedModels as mimray's records, for `sql_reads.SqlReader`:
the rows a SELECT found, completed with their tags, params, latest metrics and data inputs in
one SELECT per table per 500 ids, not one per run."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

from orchestrator.tracking.records import TrackedModel, TrackedRun, dataset_uses

IDS_PER_SELECT = 500  # ids per `IN (...)`: well under SQLite's variable limit


def chunks(items: Sequence[str], size: int = IDS_PER_SELECT) -> Iterator[list[str]]:
    """`items` in lists of at most `size`."""
    for begin in range(0, len(items), size):
        yield list(items[begin : begin + size])


def marks(values: Sequence[object]) -> str:
    """The `?` placeholders for `values` in an `IN (...)`."""
    return ", ".join("?" * len(values))


def tracked_runs(connection: sqlite3.Connection, found: list[tuple]) -> list[TrackedRun]:
    """`found` rows (`RUN_COLUMNS`) as records, with their tags, params, metrics and inputs."""
    ids = [row[0] for row in found]
    run_tags = _key_values(connection, "tags", ids)
    params = _key_values(connection, "params", ids)
    metrics = _latest_metrics(connection, ids)
    inputs = _dataset_inputs(connection, ids)
    return [
        TrackedRun(
            run_id=run_id,
            name=name,
            experiment_id=str(experiment),
            status=status,
            start_time=start,
            end_time=end,
            tags=run_tags.get(run_id, {}),
            params=params.get(run_id, {}),
            metrics=metrics.get(run_id, {}),
            datasets=dataset_uses(list(inputs.get(run_id, {}).values())),
        )
        for run_id, name, status, start, end, experiment in found
    ]


def tracked_models(connection: sqlite3.Connection, found: list[tuple]) -> list[TrackedModel]:
    """`found` rows (`MODEL_COLUMNS`) as records, with their params and tags."""
    ids = [row[0] for row in found]
    params = _key_values(connection, "logged_model_params", ids, "model_id", "param_")
    tags = _key_values(connection, "logged_model_tags", ids, "model_id", "tag_")
    return [
        TrackedModel(
            model_id=model_id,
            name=name,
            experiment_id=str(experiment),
            model_type=model_type,
            source_run_id=source_run_id,
            params=params.get(model_id, {}),
            tags=tags.get(model_id, {}),
        )
        for model_id, name, experiment, model_type, source_run_id in found
    ]


def _key_values(
    connection: sqlite3.Connection,
    table: str,
    ids: list[str],
    id_column: str = "run_uuid",
    prefix: str = "",
) -> dict[str, dict[str, str]]:
    """Id -> {key: value} of its rows in `table`: a run's tags or params (`key`, `value`), a
    LoggedModel's (`param_key`, `param_value` / `tag_key`, `tag_value`: `prefix`)."""
    found: dict[str, dict[str, str]] = {}
    for chunk in chunks(ids):
        rows = connection.execute(
            f"SELECT {id_column}, {prefix}key, {prefix}value FROM {table} "
            f"WHERE {id_column} IN ({marks(chunk)})",
            chunk,
        )
        for owner, key, value in rows:
            found.setdefault(owner, {})[key] = value
    return found


def _latest_metrics(connection: sqlite3.Connection, ids: list[str]) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for chunk in chunks(ids):
        rows = connection.execute(
            "SELECT run_uuid, key, value, is_nan FROM latest_metrics "
            f"WHERE run_uuid IN ({marks(chunk)})",
            chunk,
        )
        for run_id, key, value, is_nan in rows:
            found.setdefault(run_id, {})[key] = float("nan") if is_nan else value
    return found


def _dataset_inputs(
    connection: sqlite3.Connection, ids: list[str]
) -> dict[str, dict[str, tuple[str, str, dict[str, str]]]]:
    """Run id -> dataset id -> (name, digest, input tags) of its dataset inputs."""
    found: dict[str, dict[str, tuple[str, str, dict[str, str]]]] = {}
    for chunk in chunks(ids):
        rows = connection.execute(
            "SELECT i.destination_id, d.dataset_uuid, d.name, d.digest, t.name, t.value "
            "FROM inputs i JOIN datasets d ON i.source_id = d.dataset_uuid "
            "LEFT JOIN input_tags t ON t.input_uuid = i.input_uuid "
            f"WHERE i.destination_type = 'RUN' AND i.destination_id IN ({marks(chunk)})",
            chunk,
        )
        for run_id, dataset_id, name, digest, tag_key, tag_value in rows:
            inputs = found.setdefault(run_id, {})
            entry = inputs.setdefault(dataset_id, (name, digest, {}))
            if tag_key is not None:
                entry[2][tag_key] = tag_value
    return found
