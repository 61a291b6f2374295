"""Resume is not a restart: a pretrain run killed once its epoch-1 checkpoint is recorded, run
again by name, continues from its last checkpoint (real local Ray, a real SQLite MLflow store).

The MLflow reporter skips steps a run already holds, so the run's metric history alone looks
the same after a restart from epoch 0. What tells them apart: the checkpoints are not written
again (same bytes, same modification time), the worker's own resume record (console line and
`resume/from_epoch` metric), no line for an epoch already done, and the `train/loss` points
dated after the restart cover only the remaining epochs' steps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from interruption import (
    actors,
    checkpointed_epochs,
    file_states,
    run_until_then_kill,
    steps_logged_since,
)
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


def test_killed_run_resumes_from_its_last_checkpoint_not_from_scratch(ray_session, workdir):
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
        # A checkpoint is on disk before MLflow records it: the query waits for that.
        if not found or not any((workdir / "mimray-runs" / "ray" / "cut").glob("checkpoint_*")):
            return None
        tracker = tracker or Tracker(resolve_tracking_uri(), "resume")
        return found.group(1) if tracker.checkpoint_models(found.group(1)) else None

    # Killed on that condition, not after a sleep. An epoch of this run takes ~0.2 s on an
    # idle machine, so epoch 2 may have been checkpointed and recorded too by the time the
    # kill lands: the run must then resume from epoch 2, and the checks follow the last one.
    run_id = run_until_then_kill(
        command,
        env,
        workdir / "killed.log",
        epoch_1_recorded,
        300,
        "the epoch-1 checkpoint",
        interval_s=0.05,
    )
    run_path = workdir / "mimray-runs" / "ray" / "cut"
    on_disk = checkpointed_epochs(p.name for p in run_path.glob("checkpoint_epoch_*"))
    recorded = [int(m.params["epoch"]) for m in tracker.checkpoint_models(run_id)]
    assert on_disk == recorded and recorded[-1] < EPOCHS, f"on disk {on_disk}, MLflow {recorded}"
    done = recorded[-1]
    folders = {e: run_path / f"checkpoint_epoch_{e:04d}" for e in recorded}
    before = {e: file_states(folder) for e, folder in folders.items()}
    assert all("checkpoint.pt" in files for files in before.values())
    restart_ms = int(time.time() * 1000)

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    out = resumed.stdout
    print(f"killed after epoch {done}; kill + resume: {time.monotonic() - started:.0f} s")

    # The worker's own record of where it started.
    resume_step = done * STEPS_PER_EPOCH
    record = re.search(rf"resuming at epoch {done} \(step {resume_step}\) from (\S+)", out)
    assert record, out[-3000:]
    assert record.group(1) == str(folders[done])
    history = tracker.client.get_metric_history(run_id, "resume/from_epoch")
    assert [(m.step, m.value) for m in history] == [(resume_step, float(done))]
    # Only the remaining epochs were trained: a restart would print epoch 1 again.
    for epoch in range(1, EPOCHS + 1):
        assert (f"epoch {epoch}/{EPOCHS}" in out) == (epoch > done), out[-3000:]
    # The checkpoints were loaded, not written again.
    assert {e: file_states(folder) for e, folder in folders.items()} == before

    after_restart = steps_logged_since(tracker.client, run_id, "train/loss", restart_ms)
    assert after_restart == list(range(resume_step + 1, EPOCHS * STEPS_PER_EPOCH + 1))
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
