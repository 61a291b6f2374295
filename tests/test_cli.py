"""CLI behaviour beyond spec errors: the MLflow UI command and errors found once data is known."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.tracking import Tracker, resolve_tracking_uri


def test_batch_larger_than_dataset_exits_2_with_nothing_written(workdir):
    args = ["pretrain", "demo", "--set", "data.num_images=32", "--set", "train.batch_size=64"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "mimray: error: train.batch_size: 64 exceeds the 32 training images" in result.output
    assert not (workdir / "mimray-runs").exists()


def test_methods_lists_mae_knobs_with_defaults():
    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0
    assert "method.mask_ratio" in result.output and "0.75" in result.output


def test_ui_without_a_store_exits_2(workdir):
    result = CliRunner().invoke(main, ["ui"])
    assert result.exit_code == 2
    assert "no MLflow store" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_serves_this_folders_store_on_loopback(workdir):
    tracker = Tracker(resolve_tracking_uri(), "ui-check")
    run = tracker.open_run("ui-run", params={"train.epochs": 1}, tags={})
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={run.run_id}"
        deadline, body = time.monotonic() + 90, None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = json.load(response)
            except OSError:
                time.sleep(0.5)
        assert body is not None, "mlflow server did not answer within 90 s"
        assert body["run"]["info"]["run_name"] == "ui-run"
        assert {"key": "train.epochs", "value": "1"} in body["run"]["data"]["params"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and any workers it forked
        server.wait(timeout=30)
