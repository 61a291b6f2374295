"""Pretrain -> evaluations -> lineage, on real local Ray and a real SQLite MLflow store, and the
eval run's lineage as the MLflow UI (a real `mlflow server`) shows it in headless Chromium."""

from __future__ import annotations

import json

import pytest
from browser import dump_dom
from click.testing import CliRunner
from conftest import TINY_MODEL, serve_mlflow_ui

from orchestrator.cli.main import main
from orchestrator.config import load_spec
from orchestrator.pretrain.launch import run_pretrain
from orchestrator.tracking import Tracker, resolve_tracking_uri

pytestmark = pytest.mark.slow

# Colours are trivially separable: even a briefly pretrained encoder's features must reach
# near-perfect kNN and probe accuracy, so a broken feature path or metric shows up as a number.
EVAL_DATA = "data: {source: colors, train_images: 128, val_images: 64}"
PRETRAIN = [
    *TINY_MODEL,
    "data.num_images=128",
    "train.batch_size=64",
    "train.epochs=2",
    "scaling.num_workers=1",
    "tracking.experiment=evals",
    "tracking.system_metrics=false",
    # every: 2 also measures kNN inside the training loop at epoch 2 (what ASHA can act on).
    f"eval=[{{protocol: knn, every: 2, knn: {{k: 5}}, {EVAL_DATA}}}]",
]
EVAL_SETTINGS = [
    "data.source=colors",
    "data.train_images=128",
    "data.val_images=64",
    # MAE's LARS moves the head by ~lr * 0.001 of its norm a step: 2 steps an epoch on 128
    # images need a large blr and some epochs (blr 0.1 for 5 epochs stays at chance).
    "linear.epochs=30",
    "linear.blr=30",
    "linear.warmup_epochs=1",
    "linear.batch_size=64",
    "finetune.epochs=2",
    "finetune.batch_size=16",
    "finetune.blr=5e-3",
    "finetune.warmup_epochs=0.5",
]


def _eval_runs(tracker: Tracker) -> list:
    return tracker.client.search_runs(
        [tracker.experiment_id], filter_string="tags.`mimray.kind` = 'eval'"
    )


def test_pretrain_chains_evals_then_cli_evals_lineage_and_ui(ray_session, workdir):
    result = run_pretrain(load_spec("demo", PRETRAIN), name="tiny")
    tracker = Tracker(resolve_tracking_uri(), "evals")
    models = tracker.checkpoint_models(result.run_id)
    assert [m.params["epoch"] for m in models] == ["1", "2"]

    in_loop = tracker.metric_history(result.run_id, "knn/top1")
    assert [step for step, _ in in_loop] == [2] and in_loop[0][1] >= 0.9

    # Chained: kNN on the final checkpoint, its own run nested under the pretrain run.
    chained = _eval_runs(tracker)
    assert [r.data.tags["mimray.checkpoint_epoch"] for r in chained] == ["2"]
    for run in chained:
        tags = run.data.tags
        assert tags["mimray.eval.protocol"] == "knn"
        assert tags["mimray.pretrain_run_id"] == result.run_id
        assert tags["mlflow.parentRunId"] == result.run_id
        model = models[int(tags["mimray.checkpoint_epoch"]) - 1]
        assert tags["mimray.model_id"] == model.model_id
        assert run.data.metrics["knn/top1"] >= 0.9
        assert run.data.params["eval.knn.k"] == "5"
        full = tracker.client.get_run(run.info.run_id)
        assert [i.model_id for i in full.inputs.model_inputs] == [model.model_id]
        contexts = sorted(
            (i.dataset.name, next(t.value for t in i.tags if t.key == "mlflow.data.context"))
            for i in full.inputs.dataset_inputs
        )
        assert contexts == [("colors-train", "eval-train"), ("colors-val", "eval-val")]

    # The CLI on the pretrain run's name: linear probe and fine-tune of its last checkpoint.
    runner = CliRunner()
    protocols = ["--protocol", "linear", "--protocol", "finetune"]
    sets = [arg for setting in EVAL_SETTINGS for arg in ("--set", setting)]
    out = runner.invoke(main, ["eval", "tiny", *protocols, *sets])
    assert out.exit_code == 0, out.output
    runs = _eval_runs(tracker)
    assert len(runs) == 3
    by_protocol = {r.data.tags["mimray.eval.protocol"]: r for r in runs if r not in chained}
    linear, finetune = by_protocol["linear"], by_protocol["finetune"]
    assert linear.data.metrics["linear/top1"] >= 0.9
    assert finetune.data.metrics["finetune/top1"] >= 0.7
    assert linear.data.tags["mimray.model_id"] == models[-1].model_id
    # Per-epoch curves of the probe are on the eval run.
    curve = tracker.metric_history(linear.info.run_id, "linear/val_top1")
    assert [step for step, _ in curve] == list(range(1, 31))

    # The model's page lists its evaluations: metrics logged with the model id.
    model_metrics = {
        m.key: m.value for m in tracker.client.get_logged_model(models[-1].model_id).metrics
    }
    assert model_metrics["linear/top1"] == pytest.approx(linear.data.metrics["linear/top1"])
    assert "knn/top1" in model_metrics and "finetune/top1" in model_metrics

    # The same evaluation again: the finished run is reused, nothing new is recorded.
    again = runner.invoke(main, ["eval", result.run_id, "--protocol", "linear", *sets])
    assert again.exit_code == 0, again.output
    assert "reused" in again.output
    assert len(_eval_runs(tracker)) == 3

    # Lineage: pretrain run -> two checkpoints -> their evaluations, with dataset digests.
    tree_out = runner.invoke(main, ["lineage", models[-1].model_id, "--json"])
    assert tree_out.exit_code == 0, tree_out.output
    tree = json.loads(tree_out.output)
    assert tree["sweep"] is None
    (run_node,) = tree["runs"]
    assert run_node["run_id"] == result.run_id
    assert [d["name"] for d in run_node["datasets"]] == ["shapes-train"]
    (checkpoint,) = run_node["checkpoints"]  # narrowed to the model asked about
    assert checkpoint["model_id"] == models[-1].model_id
    assert sorted(e["protocol"] for e in checkpoint["evals"]) == ["finetune", "knn", "linear"]
    digests = [d["digest"] for e in checkpoint["evals"] for d in e["datasets"]]
    assert len(digests) == 6 and all(len(digest) >= 12 for digest in digests)  # train + val each
    text = runner.invoke(main, ["lineage", "tiny"])
    assert text.exit_code == 0, text.output
    assert "checkpoint epoch 1" in text.output and "checkpoint epoch 2" in text.output
    assert text.output.count("knn/top1 ") == 1

    _check_ui_shows_lineage(tracker, linear, result.run_id, models[-1].model_id)


def _check_ui_shows_lineage(tracker: Tracker, run, pretrain_run_id: str, model_id: str) -> None:
    """`mimray ui` serves the store; the eval run's page shows its lineage tags."""
    with serve_mlflow_ui() as url:
        page = f"{url}/#/experiments/{tracker.experiment_id}/runs/{run.info.run_id}"
        dom = dump_dom(page, budget_ms=15000)
    assert run.info.run_name in dom
    for text in ("mimray.pretrain_run_id", pretrain_run_id, "mimray.model_id", model_id):
        assert text in dom, f"{text!r} not on the run page"
