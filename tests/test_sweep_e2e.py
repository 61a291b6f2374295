"""`mimray sweep` on real local Ray and a real SQLite MLflow store: plan, run, kill, restore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import PROBE

from orchestrator.cli.main import main
from orchestrator.config import preset_names, read_spec_source
from orchestrator.tracking import Tracker, resolve_tracking_uri

SWEEP = """
name: ktiny
base:
  method: {name: emae}
  model: {embed_dim: 32, depth: 2, num_heads: 2, decoder_dim: 32, decoder_depth: 1,
          decoder_num_heads: 2}
  data: {source: shapes, num_images: 64}
  train: {epochs: 1, batch_size: 32}
  scaling: {num_workers: 1}
  tracking: {experiment: sweeps, system_metrics: false}
sweep:
  grid:
    method.k: [2, 4]
  seeds: 2
"""
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


@pytest.mark.slow
def test_killed_sweep_restores_without_retraining_or_duplicating(sweep_file, workdir, ray_session):
    # The drivers join the session's Ray, as `mimray sweep` joins a cluster via RAY_ADDRESS:
    # a second local Ray on the same machine would confuse Ray's own address lookups.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "orchestrator", "sweep", sweep_file]
    started = time.monotonic()
    log = (workdir / "killed-driver.log").open("w")
    driver = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    tracker = None
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            # Open the store only once the driver has created it: two processes creating one
            # SQLite database at once race in MLflow's schema migration.
            if "[mimray] sweep 'ktiny'" in (workdir / "killed-driver.log").read_text():
                tracker = tracker or Tracker(resolve_tracking_uri(), "sweeps")
                done = [r for r in _child_runs(tracker) if r.info.status == "FINISHED"]
                if done:
                    break
            if driver.poll() is not None:
                output = (workdir / "killed-driver.log").read_text()[-3000:]
                pytest.fail(f"the sweep ended before it could be killed:\n{output}")
            time.sleep(1)
        else:
            pytest.fail("no trial finished within 420 s")
        first_done = time.monotonic() - started
        assert [r.info.run_name for r in done] == [TRIALS[0]]
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies; Ray's processes follow it
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    restart = time.monotonic()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "restoring sweep" in rerun.stdout
    print(
        f"first trial done after {first_done:.0f} s; restored run took "
        f"{time.monotonic() - restart:.0f} s"
    )

    runs = tracker.client.search_runs([tracker.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mimray.kind") == "sweep"]
    children = _child_runs(tracker)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == TRIALS  # exactly 4, no duplicates
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params["method.k"] == run.info.run_name.split("-k-")[1][0]
        assert run.data.tags["mimray.sweep"] == "ktiny"
        # One epoch of 64 images in batches of 32: one epoch metric, two step metrics.
        # The trial finished before the kill was not trained a second time.
        assert len(tracker.metric_history(run.info.run_id, "epoch/loss")) == 1
        assert len(tracker.metric_history(run.info.run_id, "train/loss")) == 2
    for row in TRIALS:
        assert row in rerun.stdout  # the summary table names every trial


def _sweep_yaml(workdir, text: str) -> str:
    path = workdir / "tuned.yaml"
    path.write_text(text)
    return str(path)


def _tune_columns(workdir, name: str):
    """Tune's own record of the sweep (what its ResultGrid is built from), one row per trial."""
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(str(workdir / "mimray-runs" / "ray" / name)).dataframe()


ASHA = """
name: asha
base:
  model: {embed_dim: 32, depth: 2, num_heads: 2, decoder_dim: 32, decoder_depth: 1,
          decoder_num_heads: 2}
  data: {source: shapes, num_images: 256}
  train: {epochs: 3, batch_size: 32, warmup_epochs: 0}
  scaling: {num_workers: 1}
  tracking: {experiment: asha, system_metrics: false}
sweep:
  grid:
    train.blr: [1.0e-2, 1.0e-9]    # the second barely moves: behind the first at epoch 1
  early_stop: {metric: loss, mode: min, grace_period: 1}
"""


@pytest.mark.slow
def test_asha_stops_a_one_worker_trial_and_tune_sees_the_knobs(workdir, ray_session):
    from orchestrator.config import load_sweep
    from orchestrator.sweep import run_sweep

    sweep, trials = load_sweep(_sweep_yaml(workdir, ASHA))
    result = run_sweep(sweep, trials)
    assert [(o.status, o.epochs) for o in result.outcomes] == [("FINISHED", 3), ("FINISHED", 1)]

    tracker = Tracker(resolve_tracking_uri(), "asha")
    runs = {r.info.run_name: r for r in _child_runs(tracker)}
    stopped = runs["asha-blr-1e-09_seed-0"]
    assert stopped.info.status == "FINISHED"
    assert [s for s, _ in tracker.metric_history(stopped.info.run_id, "epoch/loss")] == [1]
    full = runs["asha-blr-0.01_seed-0"]
    assert len(tracker.metric_history(full.info.run_id, "epoch/loss")) == 3

    frame = _tune_columns(workdir, "asha").sort_values("config/trial")
    assert list(frame["config/train.blr"]) == [1e-2, 1e-9]
    assert list(frame["config/train.seed"]) == [0, 0]


RANDOM = """
name: rnd
base:
  model: {embed_dim: 32, depth: 2, num_heads: 2, decoder_dim: 32, decoder_depth: 1,
          decoder_num_heads: 2}
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
"""


@pytest.mark.slow
def test_random_search_runs_the_drawn_points_and_restores(workdir, ray_session):
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "orchestrator", "sweep", _sweep_yaml(workdir, RANDOM)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
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
