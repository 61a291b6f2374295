"""A sweep's runs and loss curves read from an SQLite store with plain SELECTs (`SqlReader`).

`MlflowClient.search_runs` builds an ORM object for every param, tag and metric of every run it
returns, and the client has no bulk metric history: at 1,000 trials of ~60 params `report` and
`lineage` spend seconds there. `SqlReader` answers the two reads a sweep makes at that size
(`tagged`, `metric_histories`) with SELECTs over MLflow's tables and everything else through
`ClientReader`; the records are the same (`test_sql_reads.py` compares them on one store).

It is used only where the tables it reads have exactly the columns it was written for
(`READ_TABLES`, checked on the store itself, not on MLflow's version): a release that adds,
drops or renames one of them falls back to `ClientReader`, slower and always right. Its
connection is `query_only`: SQLite itself refuses any write through it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from orchestrator.tracking.reader import ClientReader, chunks
from orchestrator.tracking.records import MetricPoint, TrackedRun, dataset_uses

IDS_PER_SELECT = 500  # run ids per `IN (...)`: well under SQLite's variable limit
# The tables these SELECTs read and their columns, as MLflow 3.17's SQL store lays them out.
READ_TABLES: dict[str, frozenset[str]] = {
    "runs": frozenset(
        "run_uuid name source_type source_name entry_point_name user_id status start_time "
        "end_time source_version lifecycle_stage artifact_uri experiment_id deleted_time".split()
    ),
    "tags": frozenset({"key", "value", "run_uuid"}),
    "params": frozenset({"key", "value", "run_uuid"}),
    "latest_metrics": frozenset({"key", "value", "timestamp", "step", "is_nan", "run_uuid"}),
    "metrics": frozenset({"key", "value", "timestamp", "run_uuid", "step", "is_nan"}),
    "inputs": frozenset(
        {"input_uuid", "source_type", "source_id", "destination_type", "destination_id", "step"}
    ),
    "input_tags": frozenset({"input_uuid", "name", "value"}),
    "datasets": frozenset(
        "dataset_uuid experiment_id name digest dataset_source_type dataset_source "
        "dataset_schema dataset_profile".split()
    ),
}


def sqlite_path(tracking_uri: str) -> Path | None:
    return (
        Path(tracking_uri.removeprefix("sqlite:///"))
        if tracking_uri.startswith("sqlite:///")
        else None
    )


def open_sql_reader(tracking_uri: str) -> SqlReader | None:
    """An `SqlReader` on the store when its tables are the ones it reads, else None."""
    path = sqlite_path(tracking_uri)
    if path is None or not path.is_file():
        return None
    with contextlib.closing(_connect(path)) as connection:
        if table_columns(connection) != READ_TABLES:
            return None
    return SqlReader(tracking_uri, path)


def table_columns(connection: sqlite3.Connection) -> dict[str, frozenset[str]]:
    """The columns the store's own tables have, for each table `READ_TABLES` names."""
    return {
        table: frozenset(row[1] for row in connection.execute(f"PRAGMA table_info({table})"))
        for table in READ_TABLES
    }


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30)
    connection.execute("PRAGMA query_only = ON")
    return connection


class SqlReader(ClientReader):
    """`ClientReader` with a sweep's runs and metric histories selected from the tables."""

    def __init__(self, tracking_uri: str, path: Path) -> None:
        super().__init__(tracking_uri)
        self.path = path

    @contextlib.contextmanager
    def _select(self) -> Iterator[sqlite3.Connection]:
        with contextlib.closing(_connect(self.path)) as connection:
            yield connection

    def tagged(
        self, experiment_ids: Sequence[str], tags: Mapping[str, str], expected: int = 0
    ) -> list[TrackedRun]:
        experiments = [int(e) for e in experiment_ids]
        query = (
            "SELECT run_uuid, name, status, start_time, end_time, experiment_id FROM runs r "
            f"WHERE experiment_id IN ({_marks(experiments)}) AND lifecycle_stage = 'active'"
        )
        args: list[object] = [*experiments]
        for key, value in tags.items():
            query += (
                " AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid"
                " AND t.key = ? AND t.value = ?)"
            )
            args += [key, value]
        # MLflow's default order: newest first, then run id.
        query += " ORDER BY start_time DESC, run_uuid"
        with self._select() as connection:
            found = connection.execute(query, args).fetchall()
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

    def metric_histories(self, run_ids: Sequence[str], key: str) -> dict[str, list[MetricPoint]]:
        histories: dict[str, list[MetricPoint]] = {run_id: [] for run_id in run_ids}
        with self._select() as connection:
            for chunk in chunks(run_ids, IDS_PER_SELECT):
                rows = connection.execute(
                    "SELECT run_uuid, step, timestamp, value, is_nan FROM metrics "
                    f"WHERE key = ? AND run_uuid IN ({_marks(chunk)})",
                    [key, *chunk],
                )
                for run_id, step, timestamp, value, is_nan in rows:
                    histories[run_id].append((step, timestamp, float("nan") if is_nan else value))
        for points in histories.values():
            points.sort()
        return histories


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def _key_values(
    connection: sqlite3.Connection, table: str, ids: list[str]
) -> dict[str, dict[str, str]]:
    """Run id -> {key: value} of its rows in `table` (tags or params)."""
    found: dict[str, dict[str, str]] = {}
    for chunk in chunks(ids, IDS_PER_SELECT):
        rows = connection.execute(
            f"SELECT run_uuid, key, value FROM {table} WHERE run_uuid IN ({_marks(chunk)})", chunk
        )
        for run_id, key, value in rows:
            found.setdefault(run_id, {})[key] = value
    return found


def _latest_metrics(connection: sqlite3.Connection, ids: list[str]) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for chunk in chunks(ids, IDS_PER_SELECT):
        rows = connection.execute(
            "SELECT run_uuid, key, value, is_nan FROM latest_metrics "
            f"WHERE run_uuid IN ({_marks(chunk)})",
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
    for chunk in chunks(ids, IDS_PER_SELECT):
        rows = connection.execute(
            "SELECT i.destination_id, d.dataset_uuid, d.name, d.digest, t.name, t.value "
            "FROM inputs i JOIN datasets d ON i.source_id = d.dataset_uuid "
            "LEFT JOIN input_tags t ON t.input_uuid = i.input_uuid "
            f"WHERE i.destination_type = 'RUN' AND i.destination_id IN ({_marks(chunk)})",
            chunk,
        )
        for run_id, dataset_id, name, digest, tag_key, tag_value in rows:
            inputs = found.setdefault(run_id, {})
            entry = inputs.setdefault(dataset_id, (name, digest, {}))
            if tag_key is not None:
                entry[2][tag_key] = tag_value
    return found
