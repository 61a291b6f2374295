"""`mimray report` on a sweep that was trained and evaluated for real (not laid out by hand):
two trials, one epoch, each checkpoint evaluated by kNN as the sweep chains it. Each cell of
the table must be the metric its eval run recorded, read back from MLflow on its own.

The sweep runs as a user starts it, `mimray sweep` in a process with its own local Ray: late
in a suite, on the test process's shared Ray, its trial once waited forever (Tune's controller
on an idle trial actor), twice in fresh-clone runs and never alone.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from tiny_model import tiny_model_yaml

from orchestrator.cli.main import main
from orchestrator.tracking import Tracker, resolve_tracking_uri

pytestmark = pytest.mark.slow

SWEEP = """
name: live
base:
  method: {{name: mae}}
  model: {model}
  data: {{source: shapes, num_images: 64}}
  train: {{epochs: 1, batch_size: 32, warmup_epochs: 0}}
  scaling: {{num_workers: 1}}
  tracking: {{experiment: live, system_metrics: false}}
  eval:
    # Shapes, not colours: both encoders would reach 100% on colours, and equal cells could
    # not show a cell taken from the wrong trial.
    - {{protocol: knn, knn: {{k: 5}},
       data: {{source: shapes, train_images: 128, val_images: 256}}}}
sweep:
  grid:
    model.patch_size: [4, 8]   # encoders far apart: their kNN top-1 differ
"""


def test_report_of_a_live_sweep_shows_what_its_eval_runs_recorded(workdir, tmp_path):
    from orchestrator.report.table import build_report

    (workdir / "live.yaml").write_text(SWEEP.format(model=tiny_model_yaml()))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    swept = subprocess.run(
        [sys.executable, "-m", "orchestrator", "sweep", "live.yaml"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]

    # What MLflow holds, read without the report code: each trial's kNN top-1 from its eval run.
    tracker = Tracker(resolve_tracking_uri(), "live")
    runs = tracker.client.search_runs([tracker.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("mimray.kind") == "sweep"]
    assert [r.info.status for r in runs if r.data.tags.get("mimray.kind") == "trial"] == [
        "FINISHED",
        "FINISHED",
    ]
    trial_patch = {
        r.info.run_id: r.data.params["model.patch_size"]
        for r in runs
        if r.data.tags.get("mimray.kind") == "trial"
    }
    evals = [r for r in runs if r.data.tags.get("mimray.kind") == "eval"]
    recorded = {
        trial_patch[r.data.tags["mimray.pretrain_run_id"]]: r.data.metrics["knn/top1"]
        for r in evals
    }
    assert len(evals) == 2 and sorted(recorded) == ["4", "8"]
    assert recorded["4"] != recorded["8"], recorded  # else a swapped cell would pass
    losses = {
        patch: tracker.metric_history(run_id, "epoch/loss")[-1][1]
        for run_id, patch in trial_patch.items()
    }

    report = build_report(resolve_tracking_uri(), None, "live")
    assert [c.key for c in report.columns] == ["loss", "knn@e1"]
    assert [row.label for row in report.rows] == ["patch_size=4", "patch_size=8"]
    for row, patch in zip(report.rows, ("4", "8"), strict=True):
        assert row.cells["knn@e1"].values == (recorded[patch],)
        assert row.cells["loss"].values == (losses[patch],)

    out = tmp_path / "report"
    printed = CliRunner().invoke(main, ["report", "live", "--out", str(out)])
    assert printed.exit_code == 0, printed.output
    table = (out / "report.md").read_text()
    for patch, top1 in recorded.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {patch} |"))
        assert f"{top1 * 100:.1f} (n=1)" in row, row
    artifacts = tracker.client.list_artifacts(parent.info.run_id, "report")
    assert sorted(a.path for a in artifacts) == ["report/report.html", "report/report.md"]
    attached = tracker.client.download_artifacts(
        parent.info.run_id, "report/report.md", str(tmp_path)
    )
    assert open(attached, encoding="utf-8").read() == table
