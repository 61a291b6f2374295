"""Every registered method pretrains for one epoch through the real path and is recorded."""

from __future__ import annotations

import math

import pytest
from conftest import TINY_MODEL

from orchestrator.config import load_spec
from orchestrator.pretrain.launch import run_pretrain
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

# Non-default knob values, so what the workers log can only come from these knobs.
KNOBS = {
    "mae": {"mask_ratio": 0.6},
    "emae": {"k": 8, "consistency_weight": 0.5},
    "sbam": {"gamma": 0.5, "delta_r": 0.1, "delta": 0.4},
    "latent_mim": {"gap": 2, "mask_ratio": 0.8},
    "pcae": {"keep_ratio": 0.25, "drop_after": [0, 1]},
}
PATCHES = 64  # the tiny model: 32x32 images, 4-pixel patches


def _steps(tracker: Tracker, run_id: str, key: str) -> list[float]:
    values = [value for _, value in tracker.metric_history(run_id, key)]
    assert values, f"the workers logged no {key}"
    return values


def assert_workers_used_the_knobs(method: str, tracker: Tracker, run_id: str) -> None:
    """What the training step computed, per step (`train/...`, logged by rank 0 from the
    method's own outputs), not the params the driver wrote before the workers started."""
    ratios = _steps(tracker, run_id, "train/mask_ratio")
    if method == "mae":
        assert ratios == pytest.approx([0.6] * len(ratios))
    elif method == "emae":
        # K=8 visible parts of N/8 patches: each part masks 1 - 1/8 of them.
        assert ratios == pytest.approx([1 - 1 / 8] * len(ratios))
        whole = _steps(tracker, run_id, "train/loss_whole")
        consistency = _steps(tracker, run_id, "train/loss_consistency")
        total = _steps(tracker, run_id, "train/loss")
        assert max(consistency) > 0  # K > 2: the consistency term is computed
        expected = [w + 0.5 * c for w, c in zip(whole, consistency, strict=True)]
        assert total == pytest.approx(expected, rel=1e-4)
    elif method == "sbam":
        # AMR: each step's R = gamma - delta_r + 2 delta_r * share, where share is the batch's
        # mean(1[S > delta]) the worker logs beside it; AMR switched off would leave R = gamma.
        shares = _steps(tracker, run_id, "train/salient_share")
        expected = [0.5 - 0.1 + 2 * 0.1 * share for share in shares]
        assert ratios == pytest.approx(expected, abs=1e-6), (ratios, shares)
        assert any(abs(r - 0.5) > 1e-3 for r in ratios), ratios
    elif method == "latent_mim":
        # round(0.8 * 64) = 51 of 64 cells masked.
        assert ratios == pytest.approx([51 / PATCHES] * len(ratios), abs=1 / PATCHES)
    elif method == "pcae":
        # 48 masked patches; two drop stages keeping a quarter each: 48 -> 12 -> 3 tokens.
        tokens = _steps(tracker, run_id, "train/teacher_tokens")
        assert tokens == [3.0] * len(tokens)


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
    assert_workers_used_the_knobs(method, tracker, result.run_id)
    assert len(tracker.checkpoint_models(result.run_id)) == 1
