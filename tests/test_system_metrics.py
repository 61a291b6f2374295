"""System metrics: mimray turns MLflow's monitor on by default, and MLflow's GPU monitor has its
library (`nvidia-ml-py`), so on a GPU machine it records GPU use (without the library it logs
nothing, silently). No GPU here: the monitor is seen to get past the import, to NVML's start."""

from __future__ import annotations

import time

import pytest

from orchestrator.config import load_spec
from orchestrator.tracking import Tracker, resolve_tracking_uri


def test_gpu_monitor_gets_past_its_import():
    import pynvml  # noqa: F401 - nvidia-ml-py, a dependency: MLflow's GPUMonitor needs it
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

    try:
        GPUMonitor()  # a GPU machine: it starts
    except ImportError as err:  # what MLflow raises when nvidia-ml-py is missing
        pytest.fail(f"MLflow's GPU monitor cannot import its library: {err}")
    except RuntimeError as err:
        assert "NVML" in str(err)  # this machine has no GPU driver: NVML itself does not start


def test_runs_record_system_metrics_by_default(workdir):
    assert load_spec("demo").tracking.system_metrics is True
    tracker = Tracker(resolve_tracking_uri(), "system")
    run = tracker.open_run(key="sys", params={}, tags={})
    reporter = tracker.reporter(run.run_id, system_metrics=True, system_metrics_interval_s=0.2)
    reporter.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "system/cpu_utilization_percentage" in tracker.client.get_run(run.run_id).data.metrics:
            break
        time.sleep(0.2)
    reporter.close()
    assert "system/cpu_utilization_percentage" in tracker.client.get_run(run.run_id).data.metrics
