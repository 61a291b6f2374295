"""The paper-style ablation table of a sweep, read back from MLflow.

One row per grid point (the values of the sweep's knobs; seeds are folded into the row), one
column for the final pretraining loss and one per evaluation protocol and checkpoint epoch
(`knn@e8`, `linear@e8`, ...). A cell is the mean and spread over the seeds that reached it.

Reading is strictly read-only: a missing SQLite file or an unknown sweep is an error, never a
new empty store. The only write is `attach_report`, which logs the rendered files as artifacts
of the sweep's parent run. Rendering (Markdown, HTML with plots, rich) is in `report_render`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.report.records import Cell, Column, Report, Row, TrialRecord
from orchestrator.tracking.artifacts import ArtifactUploader, attach_files
from orchestrator.tracking.lookup import (
    RunReader,
    TrackedRun,
    open_reader,
    prefetch_sweep,
    sweep_runs,
    sweep_trials,
)
from orchestrator.tracking.names import (
    CHECKPOINT_EPOCH_TAG,
    EVAL_PROTOCOL_TAG,
    KIND_TAG,
    PRETRAIN_RUN_TAG,
    RUN_KEY_TAG,
    SWEEP_TAG,
    TRIAL_INDEX_TAG,
)

LOSS_METRIC = "epoch/loss"
PROTOCOLS = ("knn", "linear", "finetune")  # column order: cheapest probe first, as in papers
SEED_KEY = "train.seed"  # repeats of a grid point, not a knob: rows aggregate over it
# The split an eval run scored on; runs recorded before the key existed all scored on val.
SPLIT_PARAM, DEFAULT_SPLIT = "eval.data.split", "val"
# Sweep names are restricted by the spec; anything else cannot name a sweep (and must not
# reach a filter string unquoted).
SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


__all__ = ["Cell", "Column", "Report", "ReportError", "Row", "TrialRecord", "build_report"]


class ReportError(Exception):
    """The report cannot be built: no store, no such experiment, no such sweep."""


def build_report(tracking_uri: str, experiment: str | None, sweep_name: str) -> Report:
    """Read the sweep `sweep_name` (its parent, trials and their eval runs) into a Report.

    `experiment=None` looks for the sweep in every experiment of the store."""
    reader = _open_reader(tracking_uri)
    experiments = _experiments(reader, experiment)
    if not SWEEP_NAME.match(sweep_name):
        raise ReportError(f"{sweep_name!r} is not a sweep name (letters, digits, _ . -)")
    parents = reader.tagged(list(experiments), {RUN_KEY_TAG: f"sweep:{sweep_name}"})
    where = f"experiment {experiment!r}" if experiment else "any experiment"
    if not parents:
        known = _sweep_names(reader, list(experiments))
        hint = f"; sweeps there: {', '.join(known)}" if known else "; no sweeps recorded there"
        raise ReportError(f"no sweep {sweep_name!r} in {where} at {tracking_uri}{hint}")
    if len({p.experiment_id for p in parents}) > 1:
        names = sorted(experiments[p.experiment_id] for p in parents)
        raise ReportError(
            f"sweep {sweep_name!r} is in several experiments ({', '.join(names)}); "
            "pick one with --experiment"
        )
    parent = parents[0]
    prefetch_sweep(reader, parent, "trial", "eval")  # from a server: both under way meanwhile
    knob_keys = _knob_keys(reader, parent)
    trial_runs = sweep_trials(reader, parent)
    losses = reader.metric_histories([run.run_id for run in trial_runs], LOSS_METRIC)
    trials = [_trial_record(run, losses[run.run_id], knob_keys) for run in trial_runs]
    columns, cells_by_trial, used = _eval_cells(
        sweep_runs(reader, parent, "eval"), {t.run_id for t in trials}
    )
    loss = Column("loss", LOSS_METRIC, higher_is_better=False)
    rows = _rows(trials, knob_keys)
    for row in rows:
        finals = [t.loss_curve[-1][1] for t in row.trials if t.loss_curve]
        if finals:
            row.cells[loss.key] = Cell(tuple(finals))
        for column in columns:
            values = [cells_by_trial[(t.run_id, column.key)] for t in row.trials]
            present = [v for v in values if v is not None]
            if present:
                row.cells[column.key] = Cell(tuple(present))
    return Report(
        sweep=sweep_name,
        experiment=experiments[parent.experiment_id],
        tracking_uri=tracking_uri,
        parent_run_id=parent.run_id,
        knob_keys=knob_keys,
        columns=[loss, *columns],
        rows=rows,
        trials=trials,
        eval_runs=used,
    )


def attach_report(
    report: Report, paths: Iterable[Path], uploader: ArtifactUploader | None = None
) -> list[str]:
    """Log the rendered files under `report/` of the sweep's parent run (through `uploader`,
    opened on the report's store beforehand, if given); their artifact paths."""
    if uploader is not None:
        return uploader.attach(report.parent_run_id, paths, "report")
    return attach_files(report.tracking_uri, report.parent_run_id, paths, "report")


def _open_reader(tracking_uri: str) -> RunReader:
    try:
        return open_reader(tracking_uri)
    except ConfigError as err:
        raise ReportError(str(err)) from None


def _experiments(reader: RunReader, name: str | None) -> dict[str, str]:
    """experiment id -> name: the one named, or all active ones."""
    if name is not None:
        found = reader.experiment_id(name)
        if found is None:
            raise ReportError(f"no experiment {name!r} in the MLflow store")
        return {found: name}
    return reader.experiments()


def _sweep_names(reader: RunReader, experiment_ids: list[str]) -> list[str]:
    parents = reader.tagged(experiment_ids, {KIND_TAG: "sweep"})
    return sorted({p.tags.get(SWEEP_TAG, "?") for p in parents})


def _knob_keys(reader: RunReader, parent: TrackedRun) -> list[str]:
    """The dotted keys the sweep varies: its points' keys and grid keys, in spec order."""
    spec = reader.text_artifact(parent.run_id, "sweep_spec.json")
    if spec is not None:
        section = json.loads(spec).get("sweep", {})
        keys = [k for point in section.get("points", []) for k in point]
        keys += list(section.get("grid", {}))
    else:  # an older parent without the artifact: its params
        keys = [k.removeprefix("sweep.grid.") for k in parent.params if k.startswith("sweep.grid.")]
    return [k for k in dict.fromkeys(keys) if k != SEED_KEY]


def _trial_record(
    run: TrackedRun, history: list[tuple[int, int, float]], knob_keys: list[str]
) -> TrialRecord:
    """`history`: the run's (step, timestamp, value) points of the loss metric."""
    # Sorted by (step, time): a resumed epoch logged twice keeps its last value below.
    curve = [(step, value) for step, _, value in sorted(history, key=lambda p: (p[0], p[1]))]
    params = run.params
    return TrialRecord(
        run_id=run.run_id,
        name=run.name,
        index=int(run.tags.get(TRIAL_INDEX_TAG, 0)),
        seed=params.get(SEED_KEY),
        knobs=tuple(params.get(k) for k in knob_keys),
        status=run.status,
        loss_curve=tuple(dict(curve).items()),
    )


def _eval_cells(
    runs: list[TrackedRun], trial_ids: set[str]
) -> tuple[list[Column], dict[tuple[str, str], float | None], int]:
    """Columns found among the sweep's eval `runs`, and each (trial, column) value.

    When an evaluation was run more than once, the latest run counts. Eval runs carry their
    trial's sweep tag, so only this sweep's are read, not every evaluation in the experiment."""
    latest: dict[tuple[str, str], tuple[int, float]] = {}
    columns: dict[str, Column] = {}
    for run in runs:
        tags = run.tags
        protocol = tags.get(EVAL_PROTOCOL_TAG)
        trial = tags.get(PRETRAIN_RUN_TAG)
        metric = f"{protocol}/top1"
        if trial not in trial_ids or metric not in run.metrics:
            continue
        epoch = int(tags.get(CHECKPOINT_EPOCH_TAG, -1))
        split = run.params.get(SPLIT_PARAM, DEFAULT_SPLIT)
        key = f"{protocol}@e{epoch}" if epoch >= 0 else protocol
        if split != DEFAULT_SPLIT:  # its own column: a cell never mixes splits
            key = f"{key}/{split}"
        columns.setdefault(
            key, Column(key, metric, True, protocol, epoch if epoch >= 0 else None, split)
        )
        started = run.start_time or 0
        if (trial, key) not in latest or started >= latest[(trial, key)][0]:
            latest[(trial, key)] = (started, run.metrics[metric])
    order = sorted(
        columns.values(),
        key=lambda c: (
            PROTOCOLS.index(c.protocol) if c.protocol in PROTOCOLS else len(PROTOCOLS),
            c.protocol,
            c.epoch if c.epoch is not None else -1,
            c.split != DEFAULT_SPLIT,
        ),
    )
    values = {
        (trial, c.key): latest[(trial, c.key)][1] if (trial, c.key) in latest else None
        for trial in trial_ids
        for c in order
    }
    return order, values, len(latest)


def _rows(trials: list[TrialRecord], knob_keys: list[str]) -> list[Row]:
    """Trials grouped by knob values, in the order the spec lists its points."""
    groups: dict[tuple[str | None, ...], list[TrialRecord]] = {}
    for trial in trials:  # sorted by trial index, so first-seen order is spec order
        groups.setdefault(trial.knobs, []).append(trial)
    return [Row(knobs, row_label(knob_keys, knobs), members) for knobs, members in groups.items()]


def short_keys(knob_keys: list[str]) -> list[str]:
    """`method.k` -> `k`, unless two knobs would then share a name."""
    short = [k.rsplit(".", 1)[-1] for k in knob_keys]
    return short if len(set(short)) == len(short) else list(knob_keys)


def row_label(knob_keys: list[str], knobs: tuple[str | None, ...]) -> str:
    parts = [f"{k}={v}" for k, v in zip(short_keys(knob_keys), knobs, strict=True) if v is not None]
    return ", ".join(parts) or "base"
