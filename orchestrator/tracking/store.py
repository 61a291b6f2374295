"""Where the MLflow store is and how it commits; what it measured for a dry run's estimate.

SQLite stores run in WAL mode with `synchronous=NORMAL`: every MLflow call is one or more
transactions, and with the default rollback journal each commit waits for several fsyncs
(each costs a disk flush); in WAL mode a commit is an append, and a crash can lose at most the last
commits, never corrupt the file. (WAL needs a local disk, not a network filesystem.)
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from orchestrator.tracking.names import FINGERPRINT_TAG


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


def use_wal(db: Path) -> None:
    """Put the SQLite store at `db` (created if missing) in WAL mode, and make this process's
    connections to WAL stores commit without waiting for fsync (`synchronous=NORMAL`)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    commit_without_fsync()
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
    except sqlite3.OperationalError:
        pass  # another process holds it in rollback mode right now: works as before


_FAST_COMMITS = False


def commit_without_fsync() -> None:
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
