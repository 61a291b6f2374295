"""The same evaluation twice gives the same numbers: linear probe and fine-tune through the
real path (Ray Data streams of a built-in source, the eval loop, a real SQLite MLflow store).

One checkpoint file evaluated once would be reused the second time (same model, same settings
-> same MLflow run and Ray storage), so the test records two pretrain runs whose checkpoints
hold the same, seeded, untrained encoder and evaluates each: two full evaluations of
bit-identical weights with one spec.
"""

from __future__ import annotations

import pytest
from tiny_model import tiny_model

from orchestrator.config import EvalSpec, RunSpec
from orchestrator.evaluation.baseline import write_baseline_checkpoint
from orchestrator.evaluation.checkpoints import resolve_checkpoints
from orchestrator.evaluation.runs import evaluate_checkpoint
from orchestrator.tracking import KIND_TAG, Tracker

pytestmark = pytest.mark.slow

# shapes, not colours: a solid colour is its own mirror image, so flips would change nothing.
DATA = {"source": "shapes", "train_images": 64, "val_images": 32}
SPECS = [
    EvalSpec.model_validate(
        {"protocol": "linear", "seed": 5, "data": DATA, "linear": {"epochs": 4, "blr": 10.0}}
    ),
    EvalSpec.model_validate(
        {
            "protocol": "finetune",
            "seed": 5,
            "data": DATA,
            "finetune": {"epochs": 2, "batch_size": 16, "blr": 5e-3, "hflip": True},
        }
    ),
]
CURVES = {"linear": "linear/train_loss", "finetune": "finetune/train_loss"}


def _recorded_checkpoint(tracker: Tracker, uri: str, name: str, spec: dict) -> str:
    """A pretrain run `name` whose one checkpoint is the seeded untrained model of `spec`."""
    handle = tracker.open_run(key=name, params={}, tags={KIND_TAG: "run"}, run_name=name)
    checkpoint_uri = write_baseline_checkpoint(spec, f"{uri}/{name}")
    reporter = tracker.reporter(handle.run_id, system_metrics=False)
    reporter.start()
    model_id = reporter.log_checkpoint(checkpoint_uri, 1, 1, {})
    reporter.close()
    assert model_id
    return model_id


def test_linear_and_finetune_evaluations_repeat_exactly(ray_session, workdir):
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    tracker = Tracker(tracking_uri, "repeatable")
    pretrain_spec = RunSpec.model_validate(
        {"method": {"name": "mae"}, "model": tiny_model(img_size=16), "data": {"source": "shapes"}}
    ).model_dump(mode="json")
    outcomes = []
    for name in ("first", "second"):
        model_id = _recorded_checkpoint(tracker, str(workdir / "storage"), name, pretrain_spec)
        (checkpoint,) = resolve_checkpoints(tracking_uri, model_id)
        measured = {}
        for spec in SPECS:
            result = evaluate_checkpoint(checkpoint, spec, tracking_uri)
            assert not result.reused
            curve = tracker.metric_history(result.run_id, CURVES[spec.protocol])
            measured[spec.protocol] = (result.metrics, curve)
        outcomes.append(measured)
    first, second = outcomes
    assert len(first["linear"][1]) == 4 and len(first["finetune"][1]) == 2
    assert first == second
