"""Every registered method pretrains for one epoch through the real path and is recorded."""

from __future__ import annotations

import math

import pytest
from conftest import TINY_MODEL

from orchestrator.launch import run_pretrain
from orchestrator.config import load_spec
from orchestrator.tracking import Tracker, resolve_tracking_uri
from workloads.methods import method_names

pytestmark = pytest.mark.slow

TINY = [
    *TINY_MODEL,
    "data.num_images=64",
    "train.batch_size=32",
    "train.epochs=1",
    "scaling.num_workers=1",
    "tracking.experiment=methods",
    "tracking.system_metrics=false",
]

# Non-default knob values, so the params prove the knobs reached the run.
KNOBS = {
    "mae": {"mask_ratio": 0.6},
    "emae": {"k": 8, "consistency_weight": 0.5},
    "sbam": {"gamma": 0.7, "delta_r": 0.1, "delta": 0.4},
    "latent_mim": {"gap": 2, "mask_ratio": 0.8},
    "pcae": {"keep_ratio": 0.5, "drop_after": [0]},
}


def test_every_method_has_e2e_knobs():
    assert set(method_names()) == set(KNOBS)


@pytest.mark.parametrize("method", sorted(KNOBS))
def test_one_epoch_pretrain_is_recorded_with_knobs(method, ray_session, workdir):
    knobs = [f"method.{k}={v}" for k, v in KNOBS[method].items()]
    spec = load_spec(None, [*TINY, f"method.name={method}", *knobs])
    result = run_pretrain(spec, name=f"e2e-{method}")
    assert result.epochs_done == 1
    assert result.final_loss is not None and math.isfinite(result.final_loss)

    tracker = Tracker(resolve_tracking_uri(), "methods")
    run = tracker.client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.name"] == method
    for knob, value in KNOBS[method].items():
        assert run.data.params[f"method.{knob}"] == str(value)
    assert [step for step, _ in tracker.metric_history(result.run_id, "epoch/loss")] == [1]
    assert len(tracker.checkpoint_models(result.run_id)) == 1
