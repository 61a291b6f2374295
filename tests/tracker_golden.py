"""What `report`, `lineage` and eval-target resolution show for a recorded sweep, with MLflow's
random ids replaced by stable labels, so two layouts of the same sweep compare equal.

`python tests/tracker_golden.py OUT.json` lays out the 50-trial sweep of `recorded_sweep` in a
fresh SQLite store and writes the snapshot: that is how `data/tracker_golden_50.json` was made,
from the code before the store reads were batched (issue 16).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from orchestrator.cli.main import main
from orchestrator.evaluation.checkpoints import resolve_checkpoints
from orchestrator.report.render import render_markdown, shown_uri, table_cells
from orchestrator.report.table import build_report
from orchestrator.tracking import Tracker

SWEEP = "golden"
EXPERIMENT = "golden-50"
TRIALS = 50


def id_labels(tracker: Tracker) -> dict[str, str]:
    """run id -> `run:NAME#n` (n-th run of that name by start time), model id ->
    `model:TRIAL#n:eEPOCH`."""
    client = tracker.client
    runs = client.search_runs([tracker.experiment_id], max_results=50000)
    labels: dict[str, str] = {}
    seen: dict[str, int] = {}
    for run in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_name)):
        name = run.info.run_name
        seen[name] = seen.get(name, 0) + 1
        labels[run.info.run_id] = f"run:{name}#{seen[name]}"
    token = None
    while True:
        page = client.search_logged_models(
            experiment_ids=[tracker.experiment_id], max_results=1000, page_token=token
        )
        for model in page:
            labels[model.model_id] = (
                f"model:{labels[model.source_run_id]}:e{model.params.get('epoch')}"
            )
        token = page.token
        if not token:
            return labels


def normalise(text: str, labels: dict[str, str], uri: str) -> str:
    for raw, label in labels.items():
        text = text.replace(raw, label)
    # The report shows a local store by its short form (no machine path): both are the store.
    return text.replace(uri, "<tracking-uri>").replace(shown_uri(uri), "<tracking-uri>")


def snapshot(tracker: Tracker, uri: str, trial_ids: list[str]) -> dict[str, Any]:
    """Report cells, Markdown, `lineage --json` (sweep, one trial, one checkpoint, one eval)
    and the checkpoints `mimray eval SWEEP` would evaluate, all normalised."""
    labels = id_labels(tracker)
    report = build_report(uri, None, SWEEP)
    header, body = table_cells(report)
    cells = {
        row.label: {key: list(cell.values) for key, cell in row.cells.items()}
        for row in report.rows
    }

    def lineage_json(target: str) -> Any:
        result = CliRunner().invoke(main, ["lineage", target, "--tracking-uri", uri, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(normalise(result.output, labels, uri))

    trial = tracker.client.get_run(trial_ids[1])  # two checkpoints, an eval run twice
    # Its epoch-3 checkpoint, picked by label: model ids are random.
    model_ids = [m for m, label in labels.items() if label == f"model:{labels[trial_ids[1]]}:e3"]
    evals = tracker.client.search_runs(  # trial 2: a kNN and a linear evaluation
        [tracker.experiment_id], filter_string=f"tags.`mimray.pretrain_run_id` = '{trial_ids[2]}'"
    )
    evals = sorted(evals, key=lambda r: r.info.run_name)
    checkpoints = [vars(c) for c in resolve_checkpoints(uri, SWEEP)]
    return {
        "report": {
            "header": header,
            "body": body,
            "cells": cells,
            "columns": [c.key for c in report.columns],
            "eval_runs": report.eval_runs,
            "trials": [
                [t.name, t.index, t.seed, list(t.knobs), t.status, [list(p) for p in t.loss_curve]]
                for t in report.trials
            ],
            "markdown": normalise(render_markdown(report), labels, uri),
        },
        "lineage": {
            "sweep": lineage_json(SWEEP),
            "trial_by_name": lineage_json(trial.info.run_name),
            "checkpoint": lineage_json(model_ids[0]),
            "eval_run": lineage_json(evals[0].info.run_id) if evals else None,
        },
        "eval_targets": json.loads(normalise(json.dumps(checkpoints), labels, uri)),
    }


def record_and_snapshot(folder: Path) -> dict[str, Any]:
    from recorded_sweep import record_sweep

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT)
    layout = record_sweep(tracker, folder, SWEEP, TRIALS, varied=True)
    return snapshot(tracker, uri, layout.trial_run_ids)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        data = record_and_snapshot(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {sys.argv[1]}")
