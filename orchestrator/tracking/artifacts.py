"""Small files attached to runs (a sweep's rendered report); read back through
`reader.RunReader.text_artifact`."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


def attach_files(
    tracking_uri: str, run_id: str, paths: Iterable[Path], artifact_path: str
) -> list[str]:
    """Log each file under `artifact_path/` of the run; their artifact paths."""
    from mlflow import MlflowClient

    return _log(MlflowClient(tracking_uri), run_id, [str(p) for p in paths], artifact_path)


class ArtifactUploader:
    """`attach_files` in a child process that imports MLflow and opens the store as soon as it
    is made, while the caller does its own work.

    A report reads the store without MLflow (`sql_reads`, `rest_reads`); only its one write, the
    upload, needs MLflow's client, and importing MLflow and opening an SQLite store through it
    cost more CPU than reading and rendering 1,000 trials. In a process of its own that cost is
    paid on the other core, before the files exist. The child is a daemon: a caller that fails
    before `attach` leaves nothing behind."""

    def __init__(self, tracking_uri: str) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._conn, child_end = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(tracking_uri, child_end), name="mimray-upload", daemon=True
        )
        self._process.start()
        child_end.close()

    def attach(self, run_id: str, paths: Iterable[Path], artifact_path: str) -> list[str]:
        """Log each file under `artifact_path/` of the run; their artifact paths. Raises
        `RuntimeError` with the child's error when the store or the upload failed."""
        try:
            self._conn.send((run_id, [str(p) for p in paths], artifact_path))
            ok, answer = self._conn.recv()
        except (EOFError, OSError) as err:
            raise RuntimeError(f"the upload process ended early ({err!r})") from None
        finally:
            self.close()
        if not ok:
            raise RuntimeError(answer)
        return answer

    def close(self) -> None:
        """End the child: its work is done or not wanted (it may still be tearing down)."""
        self._conn.close()
        self._process.join(timeout=1)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()


def _serve(tracking_uri: str, conn: Connection) -> None:
    """The child: open the store now, then upload the one request the parent sends."""
    try:
        from mlflow import MlflowClient

        client, opened = MlflowClient(tracking_uri), None
    except Exception as err:  # noqa: BLE001 - reported to the parent with its request
        client, opened = None, f"{type(err).__name__}: {err}"
    try:
        run_id, paths, artifact_path = conn.recv()
    except EOFError:  # the parent closed without a request
        return
    if client is None:
        conn.send((False, opened))
        return
    try:
        conn.send((True, _log(client, run_id, paths, artifact_path)))
    except Exception as err:  # noqa: BLE001 - the parent raises it
        conn.send((False, f"{type(err).__name__}: {err}"))


def _log(client: Any, run_id: str, paths: list[str], artifact_path: str) -> list[str]:
    logged = []
    for path in paths:
        client.log_artifact(run_id, path, artifact_path=artifact_path)
        logged.append(f"{artifact_path}/{Path(path).name}")
    return logged
