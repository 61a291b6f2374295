"""`mimray report` on a sweep that was trained and evaluated for real (not laid out by hand):
two trials, one epoch, each checkpoint evaluated by kNN as the sweep chains it. Each cell of
the table must be the metric its eval run recorded, read back from MLflow on its own."""

from __future__ import annotations

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
    - {{protocol: knn, knn: {{k: 5}},
       data: {{source: colors, train_images: 64, val_images: 32}}}}
sweep:
  grid:
    method.mask_ratio: [0.6, 0.9]
"""


def test_report_of_a_live_sweep_shows_what_its_eval_runs_recorded(workdir, ray_session, tmp_path):
    from orchestrator.config import load_sweep
    from orchestrator.report import build_report
    from orchestrator.sweep import run_sweep

    (workdir / "live.yaml").write_text(SWEEP.format(model=tiny_model_yaml()))
    sweep, trials = load_sweep("live.yaml")
    result = run_sweep(sweep, trials)
    assert [o.status for o in result.outcomes] == ["FINISHED", "FINISHED"]

    # What MLflow holds, read without the report code: each trial's kNN top-1 from its eval run.
    tracker = Tracker(resolve_tracking_uri(), "live")
    runs = tracker.client.search_runs([tracker.experiment_id])
    trial_ratio = {
        r.info.run_id: r.data.params["method.mask_ratio"]
        for r in runs
        if r.data.tags.get("mimray.kind") == "trial"
    }
    evals = [r for r in runs if r.data.tags.get("mimray.kind") == "eval"]
    recorded = {
        trial_ratio[r.data.tags["mimray.pretrain_run_id"]]: r.data.metrics["knn/top1"]
        for r in evals
    }
    assert len(evals) == 2 and sorted(recorded) == ["0.6", "0.9"]
    losses = {
        ratio: tracker.metric_history(run_id, "epoch/loss")[-1][1]
        for run_id, ratio in trial_ratio.items()
    }

    report = build_report(resolve_tracking_uri(), None, "live")
    assert [c.key for c in report.columns] == ["loss", "knn@e1"]
    assert [row.label for row in report.rows] == ["mask_ratio=0.6", "mask_ratio=0.9"]
    for row, ratio in zip(report.rows, ("0.6", "0.9"), strict=True):
        assert row.cells["knn@e1"].values == (recorded[ratio],)
        assert row.cells["loss"].values == (losses[ratio],)

    out = tmp_path / "report"
    printed = CliRunner().invoke(main, ["report", "live", "--out", str(out)])
    assert printed.exit_code == 0, printed.output
    table = (out / "report.md").read_text()
    for ratio, top1 in recorded.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {ratio} |"))
        assert f"{top1 * 100:.1f} (n=1)" in row, row
    artifacts = tracker.client.list_artifacts(result.parent_run_id, "report")
    assert sorted(a.path for a in artifacts) == ["report/report.html", "report/report.md"]
    attached = tracker.client.download_artifacts(
        result.parent_run_id, "report/report.md", str(tmp_path)
    )
    assert open(attached, encoding="utf-8").read() == table
