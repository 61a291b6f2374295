"""Small files attached to runs (a sweep's rendered report); read back through
`reader.RunReader.text_artifact`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


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
