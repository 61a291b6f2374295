"""Read-only queries over the MLflow store: runs, sweeps, checkpoints and their evaluations.

Shared by `mimray eval` (which checkpoints to evaluate), `mimray lineage` and `mimray report`.
Every read goes through one interface, `tracking.reader.RunReader`; `open_reader` picks its
implementation for the store (a server: plain HTTP; an SQLite store with the tables it knows:
SELECTs; anything else: MLflow's client). Nothing here writes: a mistyped store path must not
leave an empty database behind.

A sweep is read in a bounded number of queries, whatever its size: its trials, and the eval
runs of all of them, in one search each (by the sweep's tag); their checkpoints in one read per
100 trials, their loss curves in one read per 100 trials. One query per trial becomes one HTTP
round trip per trial against a shared `mlflow server`.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.tracking.checkpoints import checkpoint_models_of
from orchestrator.tracking.names import (
    KIND_TAG,
    MODEL_TYPE,
    PRETRAIN_RUN_TAG,
    RUN_KEY_TAG,
    SWEEP_TAG,
    TRIAL_INDEX_TAG,
)
from orchestrator.tracking.reader import RunReader
from orchestrator.tracking.records import TrackedModel, TrackedRun

__all__ = [
    "RunReader",
    "TrackedModel",
    "TrackedRun",
    "checkpoint_models",
    "checkpoint_models_of",
    "eval_runs_of",
    "find_named_run",
    "find_sweep",
    "get_checkpoint_model",
    "is_result_metric",
    "open_reader",
    "prefetch_sweep",
    "sweep_eval_runs",
    "sweep_runs",
    "sweep_trials",
]


def is_result_metric(key: str) -> bool:
    """An evaluation's final numbers (e.g. knn/top1, knn/top1_1nn, linear/best_top1), not its
    per-epoch curves (linear/val_top1, .../train_loss)."""
    return "top1" in key and "/val_" not in key


def open_reader(tracking_uri: str) -> RunReader:
    """The reader for the store at `tracking_uri`; ConfigError when an SQLite file is missing
    (said before MLflow is imported: a refusal answers at once)."""
    from orchestrator.tracking.rest_reads import RestReader, usable

    if usable(tracking_uri):
        return RestReader(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ConfigError(
                f"no MLflow store at {tracking_uri}; run a pretrain here first, or point "
                "MLFLOW_TRACKING_URI at the store that holds the runs"
            )
    from orchestrator.tracking.reader import ClientReader
    from orchestrator.tracking.sql_reads import open_sql_reader

    return open_sql_reader(tracking_uri) or ClientReader(tracking_uri)


def get_checkpoint_model(reader: RunReader, model_id: str) -> TrackedModel | None:
    """The mimray checkpoint LoggedModel with this id, or None."""
    model = reader.model(model_id)
    return model if model is not None and model.model_type == MODEL_TYPE else None


def checkpoint_models(reader: RunReader, run: TrackedRun) -> list[TrackedModel]:
    """The run's checkpoints (LoggedModels), oldest epoch first."""
    return checkpoint_models_of(reader, run.experiment_id, [run.run_id])[run.run_id]


def find_named_run(reader: RunReader, name: str) -> TrackedRun | None:
    """A pretrain run (or trial) by its mimray name, in any experiment."""
    if "'" in name or "`" in name:
        return None  # not a mimray name, and it would break the filter
    found = reader.tagged(list(reader.experiments()), {RUN_KEY_TAG: name})
    return found[0] if found else None


def find_sweep(reader: RunReader, name: str) -> TrackedRun | None:
    """The parent run of the sweep called `name`, in any experiment."""
    return find_named_run(reader, f"sweep:{name}")


def sweep_trials(reader: RunReader, parent: TrackedRun) -> list[TrackedRun]:
    """The sweep's trial runs (children of its parent run) in trial order."""
    found = sweep_runs(reader, parent, "trial")
    trials = [r for r in found if r.tags.get("mlflow.parentRunId") == parent.run_id]
    return sorted(trials, key=lambda r: int(r.tags.get(TRIAL_INDEX_TAG, 0)))


def eval_runs_of(reader: RunReader, run: TrackedRun) -> list[TrackedRun]:
    """Evaluation runs of a pretrain run's checkpoints."""
    return reader.tagged([run.experiment_id], {KIND_TAG: "eval", PRETRAIN_RUN_TAG: run.run_id})


def sweep_eval_runs(reader: RunReader, parent: TrackedRun) -> dict[str, list[TrackedRun]]:
    """Trial run id -> its evaluation runs, for every trial of the sweep, in one search.

    `mimray eval` copies the trial's sweep tag onto each eval run, so the sweep's tag finds
    them all; runs come in the order `eval_runs_of` gives them (MLflow's default order)."""
    by_trial: dict[str, list[TrackedRun]] = {}
    for run in sweep_runs(reader, parent, "eval"):
        by_trial.setdefault(run.tags.get(PRETRAIN_RUN_TAG, ""), []).append(run)
    return by_trial


def sweep_runs(reader: RunReader, parent: TrackedRun, kind: str) -> list[TrackedRun]:
    """The sweep's runs of `kind` (trial, eval), newest first."""
    return reader.tagged(*_sweep_query(parent, kind))


def prefetch_sweep(reader: RunReader, parent: TrackedRun, *kinds: str) -> None:
    """Start reading the sweep's runs of each of `kinds` where the reader can do so in the
    background (a server), so they arrive while the caller does other reads."""
    for kind in kinds:
        reader.prefetch(*_sweep_query(parent, kind))


def _sweep_query(parent: TrackedRun, kind: str) -> tuple[list[str], dict[str, str], int]:
    trials = int(parent.params.get("sweep.trials", "0") or 0)
    tags = {SWEEP_TAG: parent.tags.get(SWEEP_TAG, ""), KIND_TAG: kind}
    return [parent.experiment_id], tags, trials
