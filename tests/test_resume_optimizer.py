"""A resumed run continues the optimizer, not only the weights: after a stop and a resume its
AdamW moments (exp_avg, exp_avg_sq) and step counts are the uninterrupted run's.

Two runs of the same spec through `run_pretrain` (in-process, real local Ray Data, SQLite
MLflow): one trains 3 epochs; the other trains 1, stops, and is run again by name to 3, which
resumes from its epoch-1 checkpoint. The runs are made identical step for step, so their
epoch-3 checkpoints must agree: the learning rate is constant (min_lr = peak, no warmup), so
stopping after epoch 1 does not change the schedule; every epoch is one batch of all 32
images in stored order; SBAM without score noise and no crop or flip draw no random numbers.
A resume with fresh moments has counted 2 steps, not 3, and lacks epoch 1's share of every
moment. Checkpoints are read back with `workloads.checkpoint.read_checkpoint_state`.
"""

from __future__ import annotations

import pytest
import torch
from tiny_model import TINY_MODEL

from orchestrator.config import load_spec
from orchestrator.pretrain.launch import run_pretrain
from workloads.checkpoint import read_checkpoint_state

pytestmark = pytest.mark.slow

IMAGES, EPOCHS = 32, 3
LR = 1e-3 * IMAGES / 256  # blr * batch / 256
SETTINGS = [
    *TINY_MODEL,
    "method.name=sbam",
    "method.noise=0",
    "data.source=shapes",
    f"data.num_images={IMAGES}",
    "data.shuffle=none",
    "data.crop_scale=null",
    "data.hflip=false",
    f"train.batch_size={IMAGES}",
    "train.blr=1e-3",
    f"train.min_lr={LR}",
    "train.warmup_epochs=0",
    "scaling.num_workers=1",
    "tracking.experiment=resume-optimizer",
    "tracking.system_metrics=false",
]


def pretrain(name: str, epochs: int) -> dict:
    spec = load_spec(None, [*SETTINGS, f"train.epochs={epochs}"])
    result = run_pretrain(spec, name=name)
    assert result.epochs_done == epochs
    return read_checkpoint_state(result.checkpoint_uri)


def assert_same_tensors(resumed: dict, whole: dict, what: str) -> None:
    assert resumed.keys() == whole.keys(), what
    for key, expected in whole.items():
        scale = expected.abs().max().item()
        # Float rounding (sums over the batch) only: far below what a lost epoch changes.
        assert torch.allclose(resumed[key], expected, rtol=1e-3, atol=1e-4 * scale + 1e-12), (
            what,
            key,
            (resumed[key] - expected).abs().max().item(),
            scale,
        )


def test_a_resumed_optimizer_carries_the_moments_and_steps_of_the_uninterrupted_run(
    ray_session, workdir
):
    whole = pretrain("whole", EPOCHS)
    first = pretrain("cut", 1)
    resumed = pretrain("cut", EPOCHS)  # the same name again: resumes from epoch 1
    assert first["epoch"] == 1 and resumed["epoch"] == whole["epoch"] == EPOCHS
    assert resumed["step"] == whole["step"] == EPOCHS

    # The checkpoint's optimizer state, parameter by parameter (ids in the same order).
    states = {"whole": whole["optimizer"]["state"], "resumed": resumed["optimizer"]["state"]}
    assert states["resumed"].keys() == states["whole"].keys() and states["whole"]
    for index, expected in states["whole"].items():
        got = states["resumed"][index]
        assert float(got["step"]) == float(expected["step"]) == EPOCHS, index
        for moment in ("exp_avg", "exp_avg_sq"):
            assert_same_tensors({moment: got[moment]}, {moment: expected[moment]}, str(index))
    # And so the weights are the uninterrupted run's too.
    assert_same_tensors(resumed["model"], whole["model"], "model")
