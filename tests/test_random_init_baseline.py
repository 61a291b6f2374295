"""The random-init baseline: a run's untrained encoder kept as its epoch-0 checkpoint.

Written to real files and recorded in a real SQLite MLflow store; no Ray (the evaluation of
such a checkpoint is the ordinary one, exercised by the eval end-to-end tests).
"""

from __future__ import annotations

import pytest
import torch
from tiny_model import tiny_model

from orchestrator.config import EvalSpec, RunSpec
from orchestrator.evaluation.baseline import (
    BASELINE_FOLDER,
    ensure_baseline_model,
    initial_model,
    write_baseline_checkpoint,
)
from orchestrator.evaluation.chained import chained_evaluations
from orchestrator.evaluation.checkpoints import Checkpoint, run_checkpoints
from orchestrator.tracking import Tracker
from orchestrator.tracking.lookup import open_reader
from workloads.checkpoint import read_checkpoint_spec, read_checkpoint_state
from workloads.evaluation.heads import load_encoder
from workloads.pretrain import build_model

TINY = {
    "method": {"name": "mae"},
    "model": tiny_model(img_size=16),
    "data": {"source": "digits"},
}


def tiny_spec(seed: int) -> dict:
    return RunSpec.model_validate({**TINY, "train": {"seed": seed}}).model_dump(mode="json")


def _checkpoint(epoch: int) -> Checkpoint:
    return Checkpoint("run", "name", "0", f"m-{epoch}", epoch, f"/ckpt/{epoch}", None)


def test_epoch_zero_is_evaluated_only_where_baseline_is_asked():
    checkpoints = [_checkpoint(0), _checkpoint(2), _checkpoint(3), _checkpoint(4)]
    every_two = EvalSpec(protocol="knn", every=2)  # 0 % 2 == 0, yet not a baseline
    baseline = EvalSpec(protocol="linear", baseline=True)
    pairs = chained_evaluations([every_two, baseline], checkpoints, final_epoch=4)
    assert [(c.epoch, s.protocol) for c, s in pairs] == [
        (2, "knn"),
        (4, "knn"),
        (0, "linear"),
        (4, "linear"),
    ]
    # `baseline` does not change what an evaluation measures: same fingerprint, same run key.
    assert baseline.fingerprint() == EvalSpec(protocol="linear").fingerprint()


def test_baseline_checkpoint_holds_the_seeded_initial_weights(tmp_path):
    """The file and its determinism. That these are the weights a run really starts from is
    checked against a real run in test_tiny_lr_run.py (comparing with `initial_model` here
    would compare the function with itself)."""
    spec = tiny_spec(seed=3)
    uri = write_baseline_checkpoint(spec, str(tmp_path / "run"))
    assert uri == f"{tmp_path / 'run'}/{BASELINE_FOLDER}"
    state = read_checkpoint_state(uri)
    assert state["epoch"] == 0 and state["step"] == 0
    assert read_checkpoint_spec(uri) == spec
    # Every weight of the method's model (encoder and decoder alike).
    assert state["model"].keys() == build_model(spec).state_dict().keys()
    # The seed alone decides the weights: written again (after other random draws), the same;
    # another seed's baseline is another encoder.
    torch.rand(100)
    again = read_checkpoint_state(write_baseline_checkpoint(spec, str(tmp_path / "again")))
    assert all(torch.equal(again["model"][k], v) for k, v in state["model"].items())
    other = initial_model(tiny_spec(seed=4)).state_dict()
    assert not all(torch.equal(other[k], v) for k, v in state["model"].items())
    # The evaluation code reads it like any checkpoint.
    encoder = load_encoder(spec["model"], state["model"])
    images = torch.zeros(2, 3, 16, 16)
    assert encoder(images).shape[0] == 2


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "baseline-test")
    handle = tracker.open_run(key="pretrain-a", params={}, tags={}, run_name="pretrain-a")
    reporter = tracker.reporter(handle.run_id, system_metrics=False)
    reporter.start()
    reporter.log_checkpoint(f"{tmp_path}/pretrain-a/checkpoint_epoch_0002", 2, 8, {"loss": 0.5})
    reporter.close()
    return uri, tracker, handle.run_id, tmp_path


def test_baseline_is_recorded_once_as_the_runs_epoch_0_model(store):
    uri, tracker, run_id, tmp_path = store
    client = open_reader(uri)
    run = client.run(run_id)
    spec = tiny_spec(seed=0)
    for _ in range(2):  # the second call finds it: no duplicate model, nothing rewritten
        ensure_baseline_model(client, tracker, run, spec, run_path=f"{tmp_path}/pretrain-a")
    checkpoints = run_checkpoints(client, run)
    assert [c.epoch for c in checkpoints] == [0, 2]  # oldest first: the last is still epoch 2
    assert checkpoints[0].uri == f"{tmp_path}/pretrain-a/{BASELINE_FOLDER}"
    assert read_checkpoint_state(checkpoints[0].uri)["epoch"] == 0
