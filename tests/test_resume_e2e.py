"""Resume is not a restart: a pretrain run killed after its epoch-1 checkpoint, run again by
name, continues from that checkpoint (real local Ray, a real SQLite MLflow store).

The MLflow reporter skips steps a run already holds, so the run's metric history alone looks
the same after a restart from epoch 0. What tells them apart: the epoch-1 checkpoint is not
written again (same bytes, same modification time), the worker's own resume record (console
line and `resume/from_epoch` metric), no epoch-1 progress line after the restart, and the
`train/loss` points dated after the restart cover only the remaining epochs' steps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from interruption import actors, file_states, run_until_then_kill, steps_logged_since
from tiny_model import TINY_MODEL

from orchestrator.tracking import CHECKPOINT_URI_TAG, Tracker, resolve_tracking_uri

pytestmark = pytest.mark.slow

EPOCHS, STEPS_PER_EPOCH = 3, 8  # 256 images / batch 32
SETTINGS = [
    *TINY_MODEL,
    "data.num_images=256",
    "train.batch_size=32",
    f"train.epochs={EPOCHS}",
    "train.warmup_epochs=0",
    "scaling.num_workers=1",  # trains in the CLI's own process: killing it stops training
    "tracking.experiment=resume",
    "tracking.system_metrics=false",
]


def test_killed_run_resumes_from_its_epoch_1_checkpoint_not_from_scratch(ray_session, workdir):
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
    command = [sys.executable, "-m", "orchestrator", "pretrain", "demo", "--name", "cut", *sets]
    train_workers_before = len(actors(env["RAY_ADDRESS"], "RayTrainWorker", alive_only=False))
    started = time.monotonic()
    tracker = None

    def epoch_1_recorded(output: str) -> str | None:
        """The run id once MLflow holds the run's epoch-1 checkpoint."""
        nonlocal tracker
        # The run id is printed once the driver created the store and the run: opened
        # earlier, two processes would race in MLflow's schema creation.
        found = re.search(r"MLflow run (\w+)", output)
        if not found:
            return None
        tracker = tracker or Tracker(resolve_tracking_uri(), "resume")
        return found.group(1) if tracker.checkpoint_models(found.group(1)) else None

    # Killed on that condition, not after a sleep: epoch 1 is then checkpointed and recorded,
    # and epoch 2 (a whole epoch of training away) is not.
    run_id = run_until_then_kill(
        command, env, workdir / "killed.log", epoch_1_recorded, 300, "the epoch-1 checkpoint"
    )
    run_path = workdir / "mimray-runs" / "ray" / "cut"
    checkpoints = sorted(p.name for p in run_path.glob("checkpoint_epoch_*"))
    assert checkpoints == ["checkpoint_epoch_0001"], f"killed too late: {checkpoints}"
    assert [m.params["epoch"] for m in tracker.checkpoint_models(run_id)] == ["1"]
    epoch_1 = file_states(run_path / "checkpoint_epoch_0001")
    assert "checkpoint.pt" in epoch_1
    restart_ms = int(time.time() * 1000)

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    out = resumed.stdout
    print(f"kill + resume: {time.monotonic() - started:.0f} s")

    # The worker's own record of where it started.
    record = re.search(rf"resuming at epoch 1 \(step {STEPS_PER_EPOCH}\) from (\S+)", out)
    assert record, out[-3000:]
    assert record.group(1) == str(run_path / "checkpoint_epoch_0001")
    history = tracker.client.get_metric_history(run_id, "resume/from_epoch")
    assert [(m.step, m.value) for m in history] == [(STEPS_PER_EPOCH, 1.0)]
    # Only the remaining epochs were trained: a restart would print epoch 1 again.
    assert "epoch 1/3" not in out and "epoch 2/3" in out and "epoch 3/3" in out, out[-3000:]
    # The epoch-1 checkpoint was loaded, not written again.
    assert file_states(run_path / "checkpoint_epoch_0001") == epoch_1

    after_restart = steps_logged_since(tracker.client, run_id, "train/loss", restart_ms)
    assert after_restart == list(range(STEPS_PER_EPOCH + 1, EPOCHS * STEPS_PER_EPOCH + 1))
    losses = tracker.client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [s for s, _ in tracker.metric_history(run_id, "epoch/loss")] == [1, 2, 3]
    models = tracker.checkpoint_models(run_id)
    assert [m.params["epoch"] for m in models] == ["1", "2", "3"]
    for model in models:  # persisted where Ray Train would put them, and recorded so
        folder = run_path / f"checkpoint_epoch_000{model.params['epoch']}"
        assert (
            model.tags[CHECKPOINT_URI_TAG] == str(folder) and (folder / "checkpoint.pt").is_file()
        )
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # the same MLflow run, no duplicate
    assert runs[0].info.status == "FINISHED"
    # One worker trains in the CLI's process (Ray Train's local mode): no worker group.
    after = len(actors(env["RAY_ADDRESS"], "RayTrainWorker", alive_only=False))
    assert after == train_workers_before
