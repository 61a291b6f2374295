"""Sweeps as a cluster user runs them: trials at once, trials that fail, and what a dry run
estimates from earlier runs. Real local Ray (the session's), real SQLite MLflow, real workers.

Failures are real ones, with no hook in the product: the failing trial reads an image folder
whose share of empty files exceeds `data.max_skipped_share`, which passes every check before
training and fails the worker's first epoch (`DataQualityError`); writing the images back
makes the same trial train (see broken_data.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from broken_data import repair_folder, write_folder_with_empty_images
from click.testing import CliRunner
from tiny_model import tiny_model_yaml

from orchestrator.cli.main import main
from orchestrator.tracking import Tracker, resolve_tracking_uri
from workloads.data import describe_source

CONCURRENT = """
name: pair
base:
  method: {{name: mae}}
  model: {model}
  data: {{source: shapes}}
  train: {{epochs: 2, batch_size: 32, warmup_epochs: 0}}
  scaling: {{num_workers: 1}}
  tracking: {{experiment: pair, system_metrics: false}}
sweep:
  grid:
    data.num_images: [64, 96]   # 2 and 3 steps an epoch: each run's counts are its own
  max_concurrent_trials: 2
"""

FLAKY = """
name: flaky
base:
  method: {{name: mae}}
  model: {model}
  data: {{source: {folder}}}
  train: {{epochs: 1, batch_size: 32, max_failures: 1}}
  scaling: {{num_workers: 1}}
  tracking: {{experiment: flaky, system_metrics: false}}
sweep:
  grid:
    method.mask_ratio: [0.75]
"""


def _trial_runs(tracker: Tracker) -> dict:
    runs = tracker.client.search_runs([tracker.experiment_id])
    return {r.info.run_name: r for r in runs if r.data.tags.get("mimray.kind") == "trial"}


def _cli(args: list[str], ray_session, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m orchestrator ARGS` on the session's Ray, as a user runs it on a cluster."""
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.slow
def test_two_trials_at_once_keep_their_own_metrics(workdir, ray_session):
    (workdir / "pair.yaml").write_text(CONCURRENT.format(model=tiny_model_yaml()))
    swept = _cli(["sweep", "pair.yaml"], ray_session)
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    # Tune had both trials running at the same moment (the sweep's own progress line).
    assert "[mimray] trials: 2 running, 0 pending" in swept.stdout

    tracker = Tracker(resolve_tracking_uri(), "pair")
    runs = _trial_runs(tracker)
    assert sorted(runs) == ["pair-num_images-64_seed-0", "pair-num_images-96_seed-0"]
    epoch_times = {}
    for images, steps in ((64, 2), (96, 3)):
        run = runs[f"pair-num_images-{images}_seed-0"]
        assert run.info.status == "FINISHED"
        # Declared once, as the data this trial read: 64 and 96 images are different data
        # sets (digests), so a trial declaring another trial's or the base spec's data fails
        # here. (That it is declared as the trial starts, not at set-up, is checked in
        # test_trial_data_input.py: MLflow records no time or origin for an input.)
        digest = describe_source("shapes", num_images=images).digest[:36]
        inputs = [
            (i.dataset.name, i.dataset.digest, i.tags[0].value) for i in run.inputs.dataset_inputs
        ]
        assert inputs == [("shapes-train", digest, "training")]
        history = tracker.metric_history(run.info.run_id, "train/loss")
        # Every step of this run, once, and none of the other's: 2 epochs x its own steps.
        assert [step for step, _ in history] == list(range(1, 2 * steps + 1))
        assert tracker.metric_history(run.info.run_id, "data/images_seen") == [
            (1, float(images)),
            (2, float(images)),
        ]
        times = tracker.metric_history(run.info.run_id, "epoch/epoch_time_s")
        assert [step for step, _ in times] == [1, 2]
        epoch_times[images] = [seconds for _, seconds in times]
    # The two fits overlapped in time: each logged an epoch before the other's last epoch.
    first_epoch = {}
    last_epoch = {}
    for images in (64, 96):
        run_id = runs[f"pair-num_images-{images}_seed-0"].info.run_id
        stamps = sorted(
            m.timestamp for m in tracker.client.get_metric_history(run_id, "epoch/loss")
        )
        first_epoch[images], last_epoch[images] = stamps[0], stamps[-1]
    assert first_epoch[64] < last_epoch[96] and first_epoch[96] < last_epoch[64]

    # The dry run of the same sweep now estimates from these runs' measured epoch times.
    planned = CliRunner().invoke(main, ["sweep", "pair.yaml", "--dry-run"])
    assert planned.exit_code == 0, planned.output
    expected = sum(sum(t) / len(t) * 2 * 1 / 3600 for t in epoch_times.values())
    assert expected < 1 / 60  # seconds of work: not "0.00 worker-hours"
    assert (
        f"estimate: {expected * 3600:.0f} worker-seconds (from earlier runs of 2 of the 2 trial "
        "configs" in planned.output
    )


@pytest.mark.slow
def test_failed_trial_is_recorded_failed_then_retried_on_restore(workdir, ray_session):
    folder = workdir / "images"
    write_folder_with_empty_images(folder, count=64, empty=8)  # 12.5% empty: over the 1% limit
    (workdir / "flaky.yaml").write_text(FLAKY.format(model=tiny_model_yaml(), folder=folder))
    trial = "flaky-mask_ratio-0.75_seed-0"

    first = _cli(["sweep", "flaky.yaml"], ray_session)
    lines = first.stdout.splitlines()
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    # train.max_failures: 1 -> Tune started the trial twice; both attempts failed.
    assert lines.count("[mimray] trials: 1 running, 0 pending, 0 done, 0 errored") == 2
    assert "[mimray] trials: 0 running, 0 pending, 0 done, 1 errored" in lines
    # One line names the trial and the worker's own error, not Ray's wrapper around it.
    (reason,) = [line for line in lines if line.startswith(f"mimray: trial {trial} failed: ")]
    assert reason.endswith(
        "DataQualityError: data: 8 of 64 images (12.5%) in epoch 1 could not be decoded, above "
        "data.max_skipped_share=1.0%; fix the source or raise the threshold"
    ), reason
    assert "1 trials did not finish" in first.stdout
    tracker = Tracker(resolve_tracking_uri(), "flaky")
    run = _trial_runs(tracker)[trial]
    assert run.info.status == "FAILED"
    assert tracker.metric_history(run.info.run_id, "epoch/loss") == []
    parent = [
        r
        for r in tracker.client.search_runs([tracker.experiment_id])
        if r.data.tags.get("mimray.kind") == "sweep"
    ]
    assert [p.info.status for p in parent] == ["FAILED"]

    repair_folder(folder, count=64)  # the cause is fixed; the same command runs again
    second = _cli(["sweep", "flaky.yaml"], ray_session)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "restoring sweep" in second.stdout and "errored trials are retried" in second.stdout
    rerun = _trial_runs(tracker)
    assert list(rerun) == [trial]  # the same MLflow run, not a second one
    again = rerun[trial]
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [s for s, _ in tracker.metric_history(run.info.run_id, "epoch/loss")] == [1]
    assert tracker.metric_history(run.info.run_id, "data/skipped") == [(1, 0.0)]
