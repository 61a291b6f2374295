"""A real 2-trial sweep (local Ray, SQLite MLflow store) whose best trial is promoted and
evaluated by its alias, and the same store as MLflow's UI shows it in headless Chromium.

One sweep for the module (it trains): `mimray sweep` in its own process joined to the session's
Ray, as it joins a cluster; each trial runs a chained kNN evaluation, which `mimray promote`
chooses from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from browser import dump_dom, page_text, screenshot, screenshots_kept_on_failure, section
from click.testing import CliRunner
from servers import ServerProcess
from tiny_model import tiny_model_yaml

from orchestrator.cli.main import main
from orchestrator.tracking import Tracker, resolve_tracking_uri
from orchestrator.tracking.ui_links import model_link

pytestmark = pytest.mark.slow

NAME = "pick"
EXPERIMENT = "promote-e2e"
# Shapes, not colours, for the kNN: near-random encoders score apart on it, so "best" is real.
EVAL_DATA = "{source: shapes, train_images: 96, val_images: 64}"
SWEEP = f"""
name: {NAME}
base:
  method: {{name: emae}}
  model: {tiny_model_yaml()}
  data: {{source: shapes, num_images: 64}}
  train: {{epochs: 1, batch_size: 32}}
  scaling: {{num_workers: 1}}
  tracking: {{experiment: {EXPERIMENT}, system_metrics: false}}
  eval: [{{protocol: knn, knn: {{k: 5}}, data: {EVAL_DATA}}}]
sweep:
  grid: {{method.k: [2, 4]}}
"""
# The evaluation of the promoted version: other settings than the chained one (k 5), so it is a
# new eval run, not the chained one reused.
EVAL_AGAIN = ["--protocol", "knn", "--set", "knn.k=3"] + [
    arg
    for setting in ("data.source=shapes", "data.train_images=96", "data.val_images=64")
    for arg in ("--set", setting)
]


@pytest.fixture(scope="module")
def sweep_store(ray_session, tmp_path_factory):
    """The folder of a finished 2-trial sweep with a kNN evaluation of each trial; the test
    runs in it (its `./mimray-runs/` store)."""
    folder = tmp_path_factory.mktemp("promote-e2e")
    (folder / "pick.yaml").write_text(SWEEP)
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "orchestrator", "sweep", "pick.yaml"]
    done = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("RAY_ADDRESS", raising=False)  # in-process evals use the session's Ray
        yield folder


def _runs(tracker: Tracker, kind: str) -> list:
    return tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`mimray.kind` = '{kind}'"
    )


def test_promoted_best_trial_is_evaluated_by_its_alias_with_lineage(sweep_store):
    tracker = Tracker(resolve_tracking_uri(), EXPERIMENT)
    trials = sorted(_runs(tracker, "trial"), key=lambda r: int(r.data.tags["mimray.trial_index"]))
    assert len(trials) == 2
    chained = _runs(tracker, "eval")
    knn = {r.data.tags["mimray.model_id"]: r.data.metrics["knn/top1"] for r in chained}
    assert len(knn) == 2  # each trial's checkpoint was evaluated once
    # The best kNN checkpoint; a tie goes to the first trial, as promote breaks ties.
    order = [tracker.checkpoint_models(t.info.run_id)[-1].model_id for t in trials]
    best = max(order, key=lambda model_id: (knn[model_id], -order.index(model_id)))

    runner = CliRunner()
    promoted = runner.invoke(main, ["promote", NAME, "--metric", "knn/top1"])
    assert promoted.exit_code == 0, promoted.output
    version = tracker.client.get_model_version_by_alias(NAME, "best-knn")
    assert version.source == f"models:/{best}", f"kNN top-1 by checkpoint: {knn}"
    # Near-random encoders often tie on kNN; their final losses never do: smaller is better.
    losses = {
        model_id: next(
            m.value
            for m in tracker.client.get_logged_model(model_id).metrics
            if m.key == "checkpoint/loss"
        )
        for model_id in order
    }
    lowest = runner.invoke(main, ["promote", NAME, "--metric", "checkpoint/loss"])
    assert lowest.exit_code == 0, lowest.output
    by_loss = tracker.client.get_model_version_by_alias(NAME, "best-checkpoint-loss")
    assert by_loss.source == f"models:/{min(order, key=losses.get)}", f"losses: {losses}"

    evaluated = runner.invoke(main, ["eval", f"models:/{NAME}@best-knn", *EVAL_AGAIN])
    assert evaluated.exit_code == 0, evaluated.output
    (new,) = [
        r for r in _runs(tracker, "eval") if r.info.run_id not in {c.info.run_id for c in chained}
    ]
    trial = tracker.client.get_run(tracker.client.get_logged_model(best).source_run_id)
    # Lineage as for any evaluation: tags, the model as the run's input, nested under its trial.
    assert new.data.tags["mimray.model_id"] == best
    assert new.data.tags["mimray.pretrain_run_id"] == trial.info.run_id
    assert new.data.tags["mlflow.parentRunId"] == trial.info.run_id
    assert new.data.params["eval.knn.k"] == "3"
    full = tracker.client.get_run(new.info.run_id)
    assert [i.model_id for i in full.inputs.model_inputs] == [best]
    model_metrics = [
        m for m in tracker.client.get_logged_model(best).metrics if m.key == "knn/top1"
    ]
    assert len(model_metrics) == 2  # the chained evaluation's and this one's, on the model

    tree = runner.invoke(main, ["lineage", best, "--json"])
    assert tree.exit_code == 0, tree.output
    (run_node,) = json.loads(tree.output)["runs"]
    (checkpoint,) = run_node["checkpoints"]
    assert checkpoint["model_id"] == best
    assert new.info.run_id in {e["run_id"] for e in checkpoint["evals"]}


def test_ui_opens_the_experiment_in_the_training_view_with_source_and_data(sweep_store, tmp_path):
    """`mimray ui` prints a link per mimray experiment; opened in a fresh Chromium profile it
    shows MLflow's model-training layout, and a checkpoint's page names the mimray command and
    commit it came from and the data set its run trained on. Screenshots stay in tmp_path."""
    tracker = Tracker(resolve_tracking_uri(), EXPERIMENT)
    trial = _runs(tracker, "trial")[0]
    model = tracker.checkpoint_models(trial.info.run_id)[-1]
    commit = trial.data.tags["mlflow.source.git.commit"]
    server = ServerProcess([sys.executable, "-m", "orchestrator", "ui", "--port", "0"], "mimray ui")
    try:
        base = server.url(timeout_s=120)
        server.wait_answering(base + "/health", timeout_s=120)
        printed = "".join(server.lines)
        link = next(
            line.split(": ", 1)[1].strip()
            for line in server.lines
            if line.strip().startswith(f"{EXPERIMENT}: ")
        )
        # The browser judges what the link opens: the UI's routes after `#`, relative to the
        # URL the server bound (port 0).
        assert link.startswith(f"/#/experiments/{tracker.experiment_id}/"), printed
        pages = {
            "experiment": base + link,
            "checkpoint": model_link(base, tracker.experiment_id, model.model_id),
        }
        # Screenshots first: a failure below names where they are.
        shots = [
            screenshot(url, tmp_path / f"{name}.png", budget_ms=15000)
            for name, url in pages.items()
        ]
        texts = {name: page_text(dump_dom(url, budget_ms=15000)) for name, url in pages.items()}
    finally:
        server.stop()

    with screenshots_kept_on_failure(tmp_path):
        runs_page = texts["experiment"]
        # The model-training layout: its sidebar (Runs, Models, Model registry) and the runs
        # table, not the GenAI one (Overview, Sessions, Judges, Agent versions).
        assert "Model registry" in runs_page and "Agent versions" not in runs_page, runs_page
        assert "Judges" not in runs_page and "Sessions" not in runs_page, runs_page
        assert f"| {NAME} |" in runs_page, runs_page  # the sweep's parent run, trials under it

        model_page = texts["checkpoint"]
        assert "Agent versions" not in model_page, model_page
        source = section(model_page, "Logged from", "Datasets used")
        assert source.startswith("mimray sweep"), f"Logged from: {source!r}"
        assert "default_worker" not in source and commit[:7] in source, f"Logged from: {source!r}"
        datasets = section(model_page, "Datasets used", "Model versions")
        assert datasets.startswith("shapes-train"), f"Datasets used: {datasets!r}"
        assert all(shot.stat().st_size > 10_000 for shot in shots)
