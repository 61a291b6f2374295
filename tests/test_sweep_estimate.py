"""The dry run's worker-hour estimate, from epoch times that earlier runs recorded (no Ray).

The earlier run is laid out by the real sweep code (`open_sweep_runs` tags each trial run with
its config fingerprint, as `mimray sweep` does) and the real rank-0 reporter; only the epoch
times are chosen here, so the estimate can be computed by hand. A live sweep's measured times
feed the same line in test_sweep_failures_e2e.py.
"""

from __future__ import annotations

from click.testing import CliRunner
from tiny_model import tiny_model_yaml

from orchestrator.cli.main import main
from orchestrator.config import load_sweep
from orchestrator.sweep.runner import open_sweep_runs
from orchestrator.tracking import Tracker, resolve_tracking_uri

SWEEP = """
name: est
base:
  method: {{name: mae}}
  model: {model}
  data: {{source: shapes, num_images: 64}}
  train: {{epochs: 4, batch_size: 32}}
  scaling: {{num_workers: 2}}
  tracking: {{experiment: est, system_metrics: false}}
sweep:
  grid:
    method.mask_ratio: [0.6, 0.75]
"""


def test_dry_run_estimates_worker_hours_from_recorded_epoch_times(workdir):
    (workdir / "est.yaml").write_text(SWEEP.format(model=tiny_model_yaml()))
    before = CliRunner().invoke(main, ["sweep", "est.yaml", "--dry-run"])
    assert before.exit_code == 0, before.output
    assert "estimate: no earlier run of these configs in MLflow" in before.output

    # An earlier sweep ran the first trial only: epochs of 800 s and 1000 s (mean 900 s).
    sweep, trials = load_sweep("est.yaml")
    tracker = Tracker(resolve_tracking_uri(), "est")
    _, runs = open_sweep_runs(sweep, trials, tracker, "est")
    reporter = tracker.reporter(runs[0].run_id, system_metrics=False)
    reporter.start()
    for epoch, seconds in ((1, 800.0), (2, 1000.0)):
        reporter.log_metrics({"epoch/epoch_time_s": seconds}, step=epoch)
    reporter.close()

    after = CliRunner().invoke(main, ["sweep", "est.yaml", "--dry-run"])
    assert after.exit_code == 0, after.output
    # 900 s x 4 epochs x 2 workers = 2.0 worker-hours for the measured config; the other
    # config is assumed alike: x 2 trials / 1 measured = 4.00.
    assert (
        "estimate: 4.00 worker-hours (from earlier runs of 1 of the 2 trial configs in MLflow)"
        in after.output
    )


def test_worker_time_is_printed_in_the_unit_that_shows_it():
    from orchestrator.sweep.plan import worker_time

    assert worker_time(4.0) == "4.00 worker-hours"
    assert worker_time(0.25) == "15.0 worker-minutes"
    assert worker_time(12 / 3600) == "12 worker-seconds"  # was "0.00 worker-hours"
