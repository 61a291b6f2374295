"""Small files attached to runs (a sweep's rendered report); read back through
`reader.RunReader.text_artifact`."""

from __future__ import annotations

import functools
import mimetypes
import multiprocessing
from collections.abc import Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from orchestrator.tracking.server_http import server_session, usable

# MLflow's artifact proxy (`mlflow server --serve-artifacts`, its default): runs whose artifact
# URI is mlflow-artifacts:/PATH are read and written at this route of the server.
PROXY_ROUTE = "api/2.0/mlflow-artifacts/artifacts"


def attach_files(
    tracking_uri: str, run_id: str, paths: Iterable[Path], artifact_path: str
) -> list[str]:
    """Log each file under `artifact_path/` of the run; their artifact paths.

    A run whose artifacts a tracking server proxies gets the files over plain HTTP, as MLflow's
    client would send them; any other store or artifact location through MLflow's client."""
    files = [str(p) for p in paths]
    folder = proxied_folder(tracking_uri, run_id)
    if folder is not None:
        return _upload_through_proxy(tracking_uri, folder, files, artifact_path)
    from mlflow import MlflowClient

    return _log(MlflowClient(tracking_uri), run_id, files, artifact_path)


@functools.lru_cache(maxsize=32)
def proxied_folder(tracking_uri: str, run_id: str) -> str | None:
    """The run's artifact folder on the server's artifact proxy; None when the store is not a
    server reachable over plain HTTP or the run's artifacts are not proxied by it (a bucket
    the client writes to, say). Kept per run: a run's artifact location never changes, and
    `mimray report` asks before choosing how to upload and again when it uploads."""
    if not usable(tracking_uri):
        return None
    base = tracking_uri.rstrip("/")
    found = server_session().get(
        f"{base}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=120
    )
    if found.status_code != 200:
        raise RuntimeError(f"run {run_id}: HTTP {found.status_code} {found.text[:300]}")
    root = urlparse(found.json()["run"]["info"].get("artifact_uri", ""))
    if root.scheme != "mlflow-artifacts" or root.netloc not in ("", urlparse(base).netloc):
        return None
    return root.path.strip("/")


def _upload_through_proxy(
    tracking_uri: str, folder: str, files: list[str], artifact_path: str
) -> list[str]:
    """PUT each file under `folder/artifact_path/` of the server's artifact proxy, as MLflow's
    `HttpArtifactRepository` does."""
    base = tracking_uri.rstrip("/")
    session = server_session()
    target = "/".join(part for part in (folder, artifact_path) if part)
    logged = []
    for file in files:
        name = Path(file).name
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        put = session.put(
            f"{base}/{PROXY_ROUTE}/{quote(target)}/{quote(name)}",
            # Bytes, not the open file: a retried request must be able to send them again.
            data=Path(file).read_bytes(),
            headers={"Content-Type": kind},
            timeout=120,
        )
        if put.status_code != 200:
            raise RuntimeError(f"upload of {name}: HTTP {put.status_code} {put.text[:300]}")
        logged.append(f"{artifact_path}/{name}")
    return logged


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
