"""Small files attached to runs (a sweep's spec, its rendered report): written and read back."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def attach_files(
    tracking_uri: str, run_id: str, paths: Iterable[Path], artifact_path: str
) -> list[str]:
    """Log each file under `artifact_path/` of the run; their artifact paths."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    logged = []
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
        logged.append(f"{artifact_path}/{Path(path).name}")
    return logged


def read_text_artifact(client: Any, run_id: str, artifact_file: str) -> str:
    """The text of one small artifact of the run (MlflowException when it has none).

    `client` is an MlflowClient or a `rest_reads.RestReader`, which asks its server for the
    file first (no MLflow import) and hands over to MLflow's download where the server cannot
    serve it."""
    read_artifact = getattr(client, "read_artifact", None)
    if read_artifact is not None:
        text = read_artifact(run_id, artifact_file)
        if text is not None:
            return text
        from mlflow import MlflowClient

        client = MlflowClient(client.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        return Path(client.download_artifacts(run_id, artifact_file, tmp)).read_text()


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    # MLflow draws a progress bar on stderr for every download, even of one small file.
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
