"""A sweep's runs, checkpoints and loss curves read from an SQLite store with plain SELECTs
(`SqlReader`).

`MlflowClient.search_runs` builds an ORM object for every param, tag and metric of every run it
returns, the client has no bulk metric history, and importing MLflow and opening its store cost
more CPU than all of a sweep's reads: `report` and `lineage` spent most of their time there.
`SqlReader` answers every read a sweep makes (experiments, runs, LoggedModels, metric histories,
a small artifact of a run on local disk) with SELECTs over MLflow's tables, and only what it
cannot (an artifact in object storage) through `ClientReader`, whose client is made at its
first use; the records are the same (`test_run_readers.py` compares them on one store).

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
from urllib.parse import unquote, urlparse

from orchestrator.tracking.reader import RUN_ID_PATTERN, ClientReader
from orchestrator.tracking.records import MetricPoint, TrackedModel, TrackedRun
from orchestrator.tracking.sql_rows import chunks, marks, tracked_models, tracked_runs

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
    "experiments": frozenset(
        "experiment_id name artifact_location lifecycle_stage creation_time last_update_time "
        "workspace".split()
    ),
    "logged_models": frozenset(
        "model_id experiment_id name artifact_location creation_timestamp_ms "
        "last_updated_timestamp_ms status lifecycle_stage model_type source_run_id "
        "status_message".split()
    ),
    "logged_model_params": frozenset({"model_id", "experiment_id", "param_key", "param_value"}),
    "logged_model_tags": frozenset({"model_id", "experiment_id", "tag_key", "tag_value"}),
}
RUN_COLUMNS = "run_uuid, name, status, start_time, end_time, experiment_id"
MODEL_COLUMNS = "model_id, name, experiment_id, model_type, source_run_id"


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
    """Every read of a sweep selected from the tables; `ClientReader` for the rest."""

    def __init__(self, tracking_uri: str, path: Path) -> None:
        super().__init__(tracking_uri)
        self.path = path

    @contextlib.contextmanager
    def _select(self) -> Iterator[sqlite3.Connection]:
        with contextlib.closing(_connect(self.path)) as connection:
            yield connection

    def experiments(self) -> dict[str, str]:
        with self._select() as connection:
            rows = connection.execute(
                "SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'"
            ).fetchall()
        return {str(experiment): name for experiment, name in rows}

    def experiment_id(self, name: str) -> str | None:
        # As `get_experiment_by_name`: deleted experiments too.
        with self._select() as connection:
            found = connection.execute(
                "SELECT experiment_id FROM experiments WHERE name = ?", [name]
            ).fetchone()
        return str(found[0]) if found else None

    def tagged(
        self, experiment_ids: Sequence[str], tags: Mapping[str, str], expected: int = 0
    ) -> list[TrackedRun]:
        experiments = [int(e) for e in experiment_ids]
        query = (
            f"SELECT {RUN_COLUMNS} FROM runs r "
            f"WHERE experiment_id IN ({marks(experiments)}) AND lifecycle_stage = 'active'"
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
            return tracked_runs(connection, connection.execute(query, args).fetchall())

    def run(self, run_id: str) -> TrackedRun | None:
        if not RUN_ID_PATTERN.fullmatch(run_id):
            return None
        with self._select() as connection:  # as `get_run`: deleted runs too
            found = connection.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE run_uuid = ?", [run_id]
            ).fetchall()
            runs = tracked_runs(connection, found)
        return runs[0] if runs else None

    def model(self, model_id: str) -> TrackedModel | None:
        if not model_id.startswith("m-"):
            return None
        with self._select() as connection:
            found = connection.execute(
                f"SELECT {MODEL_COLUMNS} FROM logged_models "
                "WHERE model_id = ? AND lifecycle_stage != 'deleted'",
                [model_id],
            ).fetchall()
            models = tracked_models(connection, found)
        return models[0] if models else None

    def models_of(self, experiment_id: str, run_ids: Sequence[str]) -> list[TrackedModel]:
        ids = [run_id for run_id in run_ids if RUN_ID_PATTERN.fullmatch(run_id)]
        found: list[tuple] = []
        with self._select() as connection:
            for chunk in chunks(ids):
                found += connection.execute(
                    f"SELECT {MODEL_COLUMNS} FROM logged_models WHERE experiment_id = ? "
                    f"AND lifecycle_stage != 'deleted' AND source_run_id IN ({marks(chunk)})",
                    [int(experiment_id), *chunk],
                ).fetchall()
            return tracked_models(connection, found)

    def metric_histories(self, run_ids: Sequence[str], key: str) -> dict[str, list[MetricPoint]]:
        histories: dict[str, list[MetricPoint]] = {run_id: [] for run_id in run_ids}
        with self._select() as connection:
            for chunk in chunks(run_ids):
                rows = connection.execute(
                    "SELECT run_uuid, step, timestamp, value, is_nan FROM metrics "
                    f"WHERE key = ? AND run_uuid IN ({marks(chunk)})",
                    [key, *chunk],
                )
                for run_id, step, timestamp, value, is_nan in rows:
                    histories[run_id].append((step, timestamp, float("nan") if is_nan else value))
        for points in histories.values():
            points.sort()
        return histories

    def text_artifact(self, run_id: str, path: str) -> str | None:
        """Read from the run's artifact folder when it is on local disk (what MLflow's local
        artifact repository reads); through MLflow's client from anywhere else."""
        with self._select() as connection:
            found = connection.execute(
                "SELECT artifact_uri FROM runs WHERE run_uuid = ?", [run_id]
            ).fetchone()
        if found is None:
            return None
        folder = local_folder(found[0] or "")
        if folder is None:
            return super().text_artifact(run_id, path)
        try:
            return (folder / path).read_text()
        except OSError:
            return None


def local_folder(artifact_uri: str) -> Path | None:
    """The folder of a `file:` (or scheme-less) artifact URI; None for any other scheme."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None
