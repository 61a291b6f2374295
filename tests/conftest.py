"""Shared fixtures: one local Ray instance for the whole session, fresh MLflow stores per test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """Start local Ray once; every test that needs Ray shares it (start-up costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True)
    yield ray
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder so the embedded default store `./mimray-runs/` is per test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.pop("RAY_ADDRESS", None)
    return tmp_path
