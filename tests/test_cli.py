"""CLI behaviour beyond spec errors: the MLflow UI command and errors found once data is known."""

from __future__ import annotations

import json
import urllib.request

from cli_checks import assert_refused
from click.testing import CliRunner
from conftest import serve_mlflow_ui

from orchestrator.cli.main import main
from orchestrator.tracking import Tracker, resolve_tracking_uri


def test_batch_larger_than_dataset_exits_2_with_nothing_written(workdir):
    args = ["pretrain", "demo", "--set", "data.num_images=32", "--set", "train.batch_size=64"]
    result = CliRunner().invoke(main, args)
    assert_refused(result, "train.batch_size: 64 exceeds the 32 training images", at_start=True)
    assert not (workdir / "mimray-runs").exists()


def test_methods_lists_mae_knobs_with_defaults():
    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0
    assert "method.mask_ratio" in result.output and "0.75" in result.output


def test_ui_without_a_store_exits_2(workdir):
    assert_refused(CliRunner().invoke(main, ["ui"]), "no MLflow store")


def test_ui_serves_this_folders_store_on_loopback(workdir):
    tracker = Tracker(resolve_tracking_uri(), "ui-check")
    run = tracker.open_run("ui-run", params={"train.epochs": 1}, tags={})
    with serve_mlflow_ui() as url:
        query = f"{url}/api/2.0/mlflow/runs/get?run_id={run.run_id}"
        with urllib.request.urlopen(query, timeout=10) as response:
            body = json.load(response)
    assert body["run"]["info"]["run_name"] == "ui-run"
    assert {"key": "train.epochs", "value": "1"} in body["run"]["data"]["params"]
