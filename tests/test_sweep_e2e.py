"""`mimray sweep` on real local Ray and a real SQLite MLflow store: plan, run, kill, restore."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import PROBE
from interruption import (
    alive_actor_pids,
    checkpointed_epochs,
    file_states,
    run_until_then_kill,
    steps_logged_since,
)
from tiny_model import tiny_model_yaml

from orchestrator.cli.main import main
from orchestrator.config import preset_names, read_spec_source
from orchestrator.tracking import Tracker, resolve_tracking_uri
from workloads.data import describe_source

SWEEP = """
name: ktiny
base:
  method: {name: emae}
  model: $TINY_MODEL
  data: {source: shapes, num_images: 64}
  train: {epochs: 1, batch_size: 32}
  scaling: {num_workers: 1}
  tracking: {experiment: sweeps, system_metrics: false}
sweep:
  grid:
    method.k: [2, 4]
  seeds: 2
""".replace("$TINY_MODEL", tiny_model_yaml())
TRIALS = ["ktiny-k-2_seed-0", "ktiny-k-2_seed-1", "ktiny-k-4_seed-0", "ktiny-k-4_seed-1"]


@pytest.fixture
def sweep_file(workdir):
    path = workdir / "sweep.yaml"
    path.write_text(SWEEP)
    return str(path)


def test_dry_run_prints_every_trial_and_starts_nothing(sweep_file, workdir):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "sweep", sweep_file, "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "ktiny-k-" in line]
    assert len(rows) == 4
    assert all(any(name in row for row in rows) for name in TRIALS)
    assert "4 trials, 1 at a time" in proc.stdout
    assert "1 x (0.5 CPU)" in proc.stdout
    assert "ray started: False" in proc.stdout
    assert not (workdir / "mimray-runs").exists()


@pytest.mark.parametrize("preset", [p for p in preset_names() if "sweep" in read_spec_source(p)])
def test_every_preset_passes_dry_run(preset, workdir):
    result = CliRunner().invoke(main, ["sweep", preset, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"sweep '{preset}'" in result.output
    assert not (workdir / "mimray-runs").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sweep.grid.method.kk=[2]", "method.kk: unknown key"),
        ("sweep.grid.method.k=[4, 5]", "method.k: K=5 does not divide the 64 patches"),
    ],
)
def test_bad_grid_exits_2_naming_key_and_point(override, expected, sweep_file, workdir):
    result = CliRunner().invoke(main, ["sweep", sweep_file, "--set", override, "--dry-run"])
    assert result.exit_code == 2
    assert result.output.startswith(f"mimray: error: {expected}")
    assert "(grid point" in result.output
    assert not (workdir / "mimray-runs").exists()


def _child_runs(tracker: Tracker) -> list:
    runs = tracker.client.search_runs([tracker.experiment_id])
    return [r for r in runs if r.data.tags.get("mimray.kind") == "trial"]


KILLED = """
name: cut
base:
  method: {name: emae}
  model: $TINY_MODEL
  data: {source: shapes, num_images: 256}
  train: {epochs: 3, batch_size: 32, warmup_epochs: 0}
  scaling: {num_workers: 1}
  tracking: {experiment: sweeps, system_metrics: false}
sweep:
  grid:
    method.k: [2, 4]
""".replace("$TINY_MODEL", tiny_model_yaml())
KEPT, INTERRUPTED = "cut-k-2_seed-0", "cut-k-4_seed-0"
STEPS_PER_EPOCH = 8  # 256 images / batch 32


@pytest.mark.slow
def test_killed_sweep_keeps_its_finished_trial_and_resumes_the_other_from_its_checkpoint(
    workdir, ray_session
):
    # The drivers join the session's Ray, as `mimray sweep` joins a cluster via RAY_ADDRESS:
    # a second local Ray on the same machine would confuse Ray's own address lookups.
    gcs = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": gcs}
    command = [sys.executable, "-m", "orchestrator", "sweep", _sweep_yaml(workdir, KILLED)]
    started = time.monotonic()
    tracker = None
    # Whether the second trial had a run, at each look taken while the first still trained
    # (one trial at a time here: the second had not started). Runs opened or data declared
    # at set-up would show up here.
    second_run_before_start = []
    looked = [0.0]  # when MLflow was last searched

    def second_trial_checkpointed_epoch_1(output: str) -> bool:
        nonlocal tracker
        # Opened once the driver created the store: two processes creating one SQLite
        # database at once race in MLflow's schema migration.
        if "[mimray] sweep 'cut'" not in output:
            return False
        tracker = tracker or Tracker(resolve_tracking_uri(), "sweeps")
        # Until the second trial has a checkpoint on disk (before MLflow records it), a look
        # every half second: each search costs the trials CPU.
        checkpointed = any((workdir / "mimray-runs" / "ray" / INTERRUPTED).glob("checkpoint_*"))
        if not checkpointed and time.monotonic() < looked[0] + 0.5:
            return False
        looked[0] = time.monotonic()
        # A trial's run exists from the moment the trial starts.
        runs = {r.info.run_name: r for r in _child_runs(tracker)}
        if KEPT in runs and runs[KEPT].info.status != "FINISHED":  # one search: one moment
            second_run_before_start.append(INTERRUPTED in runs)
        return (
            KEPT in runs
            and INTERRUPTED in runs
            and runs[KEPT].info.status == "FINISHED"
            and len(tracker.checkpoint_models(runs[INTERRUPTED].info.run_id)) >= 1
        )

    # The trial trains inside its Tune actor, which outlives the killed driver until Ray
    # notices: both are killed at once. An epoch takes well under a second on an idle
    # machine, so the trial may have recorded epoch 2 too by then: it resumes from the last.
    run_until_then_kill(
        command,
        env,
        workdir / "killed-driver.log",
        second_trial_checkpointed_epoch_1,
        420,
        "the second trial's epoch-1 checkpoint",
        trainer_pids=lambda: alive_actor_pids(gcs, "ImplicitFunc"),
        interval_s=0.05,
    )
    # Looked at while planned (the first trial trains for seconds, looked at every 0.5 s).
    assert second_run_before_start and not any(second_run_before_start)
    interrupted_path = workdir / "mimray-runs" / "ray" / INTERRUPTED
    on_disk = checkpointed_epochs(p.name for p in interrupted_path.glob("checkpoint_epoch_*"))
    runs = {r.info.run_name: r for r in _child_runs(tracker)}
    models = tracker.checkpoint_models(runs[INTERRUPTED].info.run_id)
    recorded = [int(m.params["epoch"]) for m in models]
    assert on_disk == recorded and recorded[-1] < 3, f"on disk {on_disk}, MLflow {recorded}"
    done = recorded[-1]
    kept_files = file_states(workdir / "mimray-runs" / "ray" / KEPT)
    interrupted_files = file_states(interrupted_path)
    killed_after = time.monotonic() - started
    restart_ms = int(time.time() * 1000)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "restoring sweep" in rerun.stdout and "1 of 2 trials finished" in rerun.stdout
    print(
        f"killed after {killed_after:.0f} s (epoch {done}); restored in "
        f"{time.monotonic() - started:.0f} s"
    )

    digest = describe_source("shapes", num_images=256).digest[:36]
    runs = tracker.client.search_runs([tracker.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mimray.kind") == "sweep"]
    children = {r.info.run_name: r for r in _child_runs(tracker)}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(children) == [KEPT, INTERRUPTED]  # no duplicates
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params["method.k"] == run.info.run_name.split("-k-")[1][0]
        # Declared as the trial started (no run before, checked above), with the digest of
        # the data it read. One input, though the interrupted trial started twice: MLflow
        # keeps one input per data set and run, so a restart that declares again adds none;
        # one that declared other data would add a second.
        inputs = [
            (i.dataset.name, i.dataset.digest, i.tags[0].value) for i in run.inputs.dataset_inputs
        ]
        assert inputs == [("shapes-train", digest, "training")]
        assert [s for s, _ in tracker.metric_history(run.info.run_id, "epoch/loss")] == [1, 2, 3]
        steps = [s for s, _ in tracker.metric_history(run.info.run_id, "train/loss")]
        assert steps == list(range(1, 3 * STEPS_PER_EPOCH + 1))

    # The finished trial was kept: nothing of it trained or was written again.
    kept = children[KEPT].info.run_id
    assert file_states(workdir / "mimray-runs" / "ray" / KEPT) == kept_files
    assert steps_logged_since(tracker.client, kept, "train/loss", restart_ms) == []
    assert tracker.metric_history(kept, "resume/from_epoch") == []
    # The interrupted trial resumed from its last checkpoint (epoch 1, or 2 on a fast machine):
    # the worker says so, its checkpoints were read and not rewritten, and only the remaining
    # epochs trained after the restart.
    resumed = children[INTERRUPTED].info.run_id
    resume_step = done * STEPS_PER_EPOCH
    assert tracker.metric_history(resumed, "resume/from_epoch") == [(resume_step, float(done))]
    after = file_states(interrupted_path)
    assert {k: v for k, v in after.items() if k in interrupted_files} == interrupted_files
    assert steps_logged_since(tracker.client, resumed, "train/loss", restart_ms) == list(
        range(resume_step + 1, 3 * STEPS_PER_EPOCH + 1)
    )
    assert [m.params["epoch"] for m in tracker.checkpoint_models(resumed)] == ["1", "2", "3"]
    for row in (KEPT, INTERRUPTED):
        assert row in rerun.stdout  # the summary table names every trial


def _sweep_yaml(workdir, text: str) -> str:
    path = workdir / "tuned.yaml"
    path.write_text(text)
    return str(path)


def _tune_columns(workdir, name: str):
    """Tune's own record of the sweep (what its ResultGrid is built from), one row per trial,
    in the sweep's trial order (Tune's rows come in the order its trials last reported)."""
    from ray.tune import ExperimentAnalysis

    frame = ExperimentAnalysis(str(workdir / "mimray-runs" / "ray" / name)).dataframe()
    return frame.sort_values("config/trial", ignore_index=True)


ASHA = """
name: asha
base:
  model: $TINY_MODEL
  data: {source: shapes, num_images: 128}
  train: {epochs: 3, batch_size: 32, warmup_epochs: 0}
  scaling: {num_workers: 1}
  tracking: {experiment: asha, system_metrics: false}
sweep:
  grid:
    # The second diverges: its loss jumps from ~1.8 to ~1e5 in a few steps and stays finite
    # (blr 1e3 reaches NaN, which fails the trial instead of leaving it to ASHA). The third
    # starts in the process the stopped one leaves (ASHA may stop it too; it must not fail).
    train.blr: [1.5e-4, 30.0, 3.0e-4]
  early_stop: {metric: loss, mode: min, grace_period: 1}
""".replace("$TINY_MODEL", tiny_model_yaml())


@pytest.mark.slow
def test_asha_stops_the_diverging_trial_at_its_grace_period(workdir, ray_session):
    from orchestrator.config import load_sweep
    from orchestrator.sweep.runner import run_sweep

    sweep, trials = load_sweep(_sweep_yaml(workdir, ASHA))
    good, bad, _ = (t.name for t in trials)
    result = run_sweep(sweep, trials)
    assert [(o.status, o.epochs) for o in result.outcomes[:2]] == [("FINISHED", 3), ("FINISHED", 1)]
    assert result.outcomes[2].status == "FINISHED"

    # Tune's own record: the diverging trial got one iteration (the grace period) of three.
    frame = _tune_columns(workdir, "asha").set_index("config/trial")
    assert list(frame["config/train.blr"]) == [1.5e-4, 30.0, 3.0e-4]
    assert list(frame["config/train.seed"]) == [0, 0, 0]
    assert list(frame["training_iteration"])[:2] == [3, 1]
    assert list(frame["epoch"])[:2] == [3, 1]
    assert frame.loc[1, "loss"] > 1000 * frame.loc[0, "loss"]  # it did diverge
    # Each trial ran in the process of the one before (Tune's reuse_actors), the stopped one's
    # included: its training thread ended when Tune handed the process on.
    assert frame["pid"].nunique() == 1, list(frame["pid"])

    # MLflow: the stopped trial's run holds one epoch and one checkpoint, and is closed.
    tracker = Tracker(resolve_tracking_uri(), "asha")
    runs = {r.info.run_name: r for r in _child_runs(tracker)}
    stopped, full = runs[bad].info.run_id, runs[good].info.run_id
    assert runs[bad].info.status == runs[good].info.status == "FINISHED"
    assert [s for s, _ in tracker.metric_history(stopped, "epoch/loss")] == [1]
    assert [m.params["epoch"] for m in tracker.checkpoint_models(stopped)] == ["1"]
    assert [s for s, _ in tracker.metric_history(full, "epoch/loss")] == [1, 2, 3]
    assert [m.params["epoch"] for m in tracker.checkpoint_models(full)] == ["1", "2", "3"]


RANDOM = """
name: rnd
base:
  model: $TINY_MODEL
  data: {source: shapes, num_images: 64}
  train: {epochs: 1, batch_size: 32}
  scaling: {num_workers: 1}
  tracking: {experiment: rnd, system_metrics: false}
sweep:
  search: random
  num_samples: 2
  space:
    method.mask_ratio: {uniform: [0.5, 0.9]}
    train.blr: {loguniform: [1.0e-5, 1.0e-3]}
""".replace("$TINY_MODEL", tiny_model_yaml())


@pytest.mark.slow
def test_random_search_runs_the_drawn_points_and_restores(workdir, ray_session):
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "-c", PROBE, "sweep", _sweep_yaml(workdir, RANDOM)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # The driver plans and watches; the models (torch, timm: seconds of import) load only in
    # the trials' processes.
    assert "models imported: []" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "restoring sweep" in again.stdout and "2 of 2 trials finished" in again.stdout

    tracker = Tracker(resolve_tracking_uri(), "rnd")
    children = _child_runs(tracker)
    assert sorted(r.info.run_name for r in children) == [
        "rnd-sample-0_seed-0",
        "rnd-sample-1_seed-0",
    ]
    frame = _tune_columns(workdir, "rnd")
    assert len(frame) == 2
    # One trial at a time, each in the process the one before it used (Tune's reuse_actors):
    # the models are imported once per sweep, not once per trial.
    assert frame["pid"].nunique() == 1, list(frame["pid"])
    for run in children:
        ratio, blr = (
            float(run.data.params["method.mask_ratio"]),
            float(run.data.params["train.blr"]),
        )
        assert 0.5 <= ratio <= 0.9 and 1e-5 <= blr <= 1e-3
        row = frame[frame["config/method.mask_ratio"] == ratio]
        assert list(row["config/train.blr"]) == [blr]  # Tune's config holds the same point
        # Trained once: the re-run restored the finished sweep instead of training again.
        assert len(tracker.metric_history(run.info.run_id, "epoch/loss")) == 1
