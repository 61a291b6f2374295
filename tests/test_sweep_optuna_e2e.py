"""`sweep.search: optuna` on real local Ray and a real SQLite MLflow store: Optuna suggests each
trial's point as the trial starts, the trials are recorded like any sweep's (a parent run and
one child run per trial, with the suggested values as params), and a sweep whose driver was
killed mid-trial restores: finished trials kept, the interrupted one resumed with the values
Optuna gave it, the rest suggested, four trials in all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from interruption import alive_actor_pids, run_until_then_kill, steps_logged_since
from tiny_model import tiny_model_yaml

from orchestrator.tracking import Tracker, resolve_tracking_uri

SWEEP = """
name: opt
base:
  method: {name: mae}
  model: $TINY_MODEL
  data: {source: shapes, num_images: 256}
  train: {epochs: 5, batch_size: 32, warmup_epochs: 0}
  scaling: {num_workers: 1}
  tracking: {experiment: opt, system_metrics: false}
sweep:
  search: optuna
  num_samples: 4
  space:
    method.mask_ratio: {uniform: [0.5, 0.9]}
    train.blr: {loguniform: [1.0e-5, 1.0e-3]}
""".replace("$TINY_MODEL", tiny_model_yaml())
NAMES = [f"opt-sample-{i}_seed-0" for i in range(4)]


def _runs(tracker: Tracker, kind: str) -> dict:
    runs = tracker.client.search_runs([tracker.experiment_id])
    return {r.info.run_name: r for r in runs if r.data.tags.get("mimray.kind") == kind}


@pytest.mark.slow
def test_optuna_sweep_is_recorded_like_any_sweep_and_restores_after_a_driver_kill(
    workdir, ray_session
):
    gcs = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": gcs}
    (workdir / "opt.yaml").write_text(SWEEP)
    command = [sys.executable, "-m", "orchestrator", "sweep", str(workdir / "opt.yaml")]
    tracker = None

    def third_trial_checkpointed(output: str) -> bool:
        nonlocal tracker
        if "[mimray] sweep 'opt'" not in output:  # the store exists from here on
            return False
        # Opened before the third trial starts: a trial in a reused process takes about a
        # second, less than loading MLflow here would.
        tracker = tracker or Tracker(resolve_tracking_uri(), "opt")
        # The third trial's checkpoint is on disk before MLflow records it.
        if not any((workdir / "mimray-runs" / "ray" / NAMES[2]).glob("checkpoint_*")):
            return False
        runs = _runs(tracker, "trial")
        return (
            all(name in runs and runs[name].info.status == "FINISHED" for name in NAMES[:2])
            and NAMES[2] in runs
            and len(tracker.checkpoint_models(runs[NAMES[2]].info.run_id)) >= 1
        )

    started = time.monotonic()
    run_until_then_kill(
        command,
        env,
        workdir / "killed-driver.log",
        third_trial_checkpointed,
        420,
        "two finished Optuna trials and the third's first checkpoint",
        trainer_pids=lambda: alive_actor_pids(gcs, "ImplicitFunc"),
        interval_s=0.05,
    )
    before = _runs(tracker, "trial")
    assert NAMES[3] not in before  # not suggested yet: no run of it exists
    suggested = {name: dict(before[name].data.params) for name in NAMES[:3]}
    restart_ms = int(time.time() * 1000)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "restoring sweep" in rerun.stdout and "2 of 4 trials finished" in rerun.stdout
    print(f"optuna sweep killed and restored in {time.monotonic() - started:.0f} s")

    # Recorded like any sweep: one parent listing the planned trials, one child run each.
    parents = list(_runs(tracker, "sweep").values())
    children = _runs(tracker, "trial")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["sweep.search"] == "optuna"
    listed = tracker.client.download_artifacts(
        parents[0].info.run_id, "planned_trials.json", str(workdir)
    )
    planned = json.loads(Path(listed).read_text())
    assert [row["name"] for row in planned] == NAMES
    assert sorted(children) == NAMES  # no duplicates
    from ray.tune import ExperimentAnalysis

    tune_record = ExperimentAnalysis(str(workdir / "mimray-runs" / "ray" / "opt")).dataframe()
    assert len(tune_record) == 4  # the restore suggested only the missing trial
    for name, run in children.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        ratio, blr = (
            float(run.data.params["method.mask_ratio"]),
            float(run.data.params["train.blr"]),
        )
        assert 0.5 <= ratio <= 0.9 and 1e-5 <= blr <= 1e-3
        # The run trained what Tune's config of the trial says (Optuna's suggestion).
        row = tune_record[tune_record["config/trial"] == NAMES.index(name)]
        assert list(row["config/method.mask_ratio"]) == [pytest.approx(ratio)]
        assert list(row["config/train.blr"]) == [pytest.approx(blr)]
        assert [s for s, _ in tracker.metric_history(run.info.run_id, "epoch/loss")] == list(
            range(1, 6)
        )
    assert len({c.data.params["method.mask_ratio"] for c in children.values()}) == 4
    # The interrupted trial kept its suggested values and resumed from its checkpoint; the
    # finished ones trained nothing after the restart.
    for name in NAMES[:3]:
        params = children[name].data.params
        assert {k: params[k] for k in ("method.mask_ratio", "train.blr")} == {
            k: suggested[name][k] for k in ("method.mask_ratio", "train.blr")
        }
    for name in NAMES[:2]:
        run_id = children[name].info.run_id
        assert steps_logged_since(tracker.client, run_id, "train/loss", restart_ms) == []
    resumed = children[NAMES[2]].info.run_id
    from_epoch = [e for _, e in tracker.metric_history(resumed, "resume/from_epoch")]
    assert len(from_epoch) == 1 and 1.0 <= from_epoch[0] <= 4.0, from_epoch


LOST_STATE = """
name: lost
base:
  method: {name: mae}
  model: $TINY_MODEL
  data: {source: shapes, num_images: 64}
  train: {epochs: 1, batch_size: 32, warmup_epochs: 0}
  scaling: {num_workers: 1}
  tracking: {experiment: lost, system_metrics: false}
sweep:
  search: optuna
  num_samples: 2
  space:
    train.blr: {loguniform: [1.0e-5, 1.0e-3]}
""".replace("$TINY_MODEL", tiny_model_yaml())


@pytest.mark.slow
def test_trials_finished_in_mlflow_but_not_in_tunes_state_report_their_result(workdir, ray_session):
    """Tune's record of a sweep can miss a trial's end that MLflow holds (the driver killed
    between the trial's last checkpoint and Tune's next state snapshot, a few seconds apart;
    or Tune's folder lost). Run again, such a trial trains nothing and must still hand Tune
    its final result: Optuna's searcher rejects a trial that ends without its metric, and the
    sweep's table reads the final loss from it."""
    import shutil

    from orchestrator.config import load_sweep
    from orchestrator.sweep.runner import run_sweep

    (workdir / "lost.yaml").write_text(LOST_STATE)
    sweep, trials = load_sweep(str(workdir / "lost.yaml"))
    first = run_sweep(sweep, trials)
    assert [o.status for o in first.outcomes] == ["FINISHED", "FINISHED"]
    shutil.rmtree(workdir / "mimray-runs" / "ray" / "lost")  # Tune's own state of the sweep
    restart_ms = int(time.time() * 1000)

    again = run_sweep(sweep, trials)
    tracker = Tracker(resolve_tracking_uri(), "lost")
    runs = _runs(tracker, "trial")
    for outcome in again.outcomes:
        run_id = runs[outcome.trial.name].info.run_id
        (recorded,) = [loss for _, loss in tracker.metric_history(run_id, "epoch/loss")]
        assert (outcome.status, outcome.epochs, outcome.final_loss) == ("FINISHED", 1, recorded)
        # Nothing was trained again.
        assert steps_logged_since(tracker.client, run_id, "train/loss", restart_ms) == []
