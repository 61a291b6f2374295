"""A real pretrain run whose weights cannot move (learning rate 1e-20), read from outside.

With the weights still and a deterministic mask (SBAM with no score noise, crop and flip off),
each step's loss is a function of its batch alone. So, from the run's MLflow history and its
checkpoint:

- the worker loop's own batches (whatever function draws them) are other batches in epoch 2
  than in epoch 1, not the same batches in another order (what Ray Data's block order alone
  gives, seen here with a shuffle buffer seeded alike every epoch, or none);
- the random-init baseline (`orchestrator/evaluation/baseline.py`) holds the weights the run
  really started from: its final checkpoint, weights unmoved, is the baseline.

One in-process fit through `run_pretrain` (real local Ray Data, SQLite MLflow), shared by
both tests.
"""

from __future__ import annotations

import pytest
import torch
from tiny_model import TINY_MODEL

from orchestrator.config import load_spec
from orchestrator.evaluation.baseline import write_baseline_checkpoint
from orchestrator.pretrain.launch import run_pretrain
from orchestrator.tracking import Tracker, resolve_tracking_uri
from workloads.checkpoint import read_checkpoint_spec, read_checkpoint_state

pytestmark = pytest.mark.slow

IMAGES, BATCH, EPOCHS = 128, 32, 2
STEPS_PER_EPOCH = IMAGES // BATCH
SETTINGS = [
    *TINY_MODEL,
    "method.name=sbam",
    "method.noise=0",  # the mask follows from the image alone
    "data.source=shapes",
    f"data.num_images={IMAGES}",
    "data.shuffle_buffer=16",  # smaller than the data: it mixes, it does not hold everything
    "data.crop_scale=null",
    "data.hflip=false",
    f"train.batch_size={BATCH}",
    f"train.epochs={EPOCHS}",
    "train.blr=1e-20",  # AdamW moves each weight by about lr a step: nothing in float32
    "train.warmup_epochs=0",
    "train.seed=7",
    "scaling.num_workers=1",
    "tracking.experiment=still",
    "tracking.system_metrics=false",
]


@pytest.fixture(scope="module")
def still_run(ray_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("still")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = run_pretrain(load_spec(None, SETTINGS), name="still")
        tracker = Tracker(resolve_tracking_uri(), "still")
        losses = [v for _, v in tracker.metric_history(result.run_id, "train/loss")]
    assert result.epochs_done == EPOCHS and len(losses) == EPOCHS * STEPS_PER_EPOCH
    return result, losses, folder


def test_the_loop_draws_other_batches_in_its_second_epoch(still_run):
    _, losses, _ = still_run
    first, second = losses[:STEPS_PER_EPOCH], losses[STEPS_PER_EPOCH:]
    # A batch drawn again repeats its loss to the last bits, in whatever place of the epoch
    # (Ray Data hands blocks over in the order their tasks finish): compare the sets.
    new = [b for b in second if all(abs(a - b) > 1e-5 * abs(a) for a in first)]
    assert len(new) >= STEPS_PER_EPOCH - 1, (first, second)


def test_random_init_baseline_is_the_weights_the_run_started_from(still_run):
    result, _, folder = still_run
    last = read_checkpoint_state(result.checkpoint_uri)
    assert last["epoch"] == EPOCHS and last["step"] == EPOCHS * STEPS_PER_EPOCH
    # The baseline as a chained evaluation writes it: from the spec the checkpoint holds.
    baseline_uri = write_baseline_checkpoint(
        read_checkpoint_spec(result.checkpoint_uri), str(folder / "baseline-of-still")
    )
    baseline = read_checkpoint_state(baseline_uri)["model"]
    trained = last["model"]
    assert baseline.keys() == trained.keys()
    # Zero-initialised biases may have moved to about ±1e-19; nothing else moves at all.
    moved = {
        name: (trained[name] - weights).abs().max().item()
        for name, weights in baseline.items()
        if not torch.allclose(trained[name], weights, rtol=0, atol=1e-12)
    }
    assert moved == {}, moved
    # The optimizer did step: the weights stayed only because the learning rate is tiny.
    steps = {float(s["step"]) for s in last["optimizer"]["state"].values()}
    assert steps == {float(EPOCHS * STEPS_PER_EPOCH)}
