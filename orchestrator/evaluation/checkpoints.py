"""Which checkpoints an evaluation target names: a checkpoint LoggedModel, a pretrain run (its
last checkpoint) or a sweep (each trial's last), read from MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.config import ConfigError
from orchestrator.lookup import (
    checkpoint_models,
    checkpoint_models_of,
    find_named_run,
    find_sweep,
    get_checkpoint_model,
    get_run,
    open_reader,
    sweep_trials,
)
from orchestrator.tracking import KIND_TAG, PRETRAIN_RUN_TAG, SWEEP_TAG


@dataclass(frozen=True)
class Checkpoint:
    """One pretrain checkpoint as MLflow records it."""

    run_id: str
    run_name: str
    experiment_id: str
    model_id: str
    epoch: int
    uri: str
    sweep: str | None


def resolve_checkpoints(tracking_uri: str, target: str) -> list[Checkpoint]:
    """The checkpoints TARGET names: a LoggedModel id -> that checkpoint; a pretrain run id ->
    its last checkpoint; a sweep name (or its parent run id) -> each trial's last one."""
    client = open_reader(tracking_uri)
    model = get_checkpoint_model(client, target)
    if model is not None:
        return [_checkpoint(client.get_run(model.source_run_id), model)]
    run = get_run(client, target)
    if run is not None:
        kind = run.data.tags.get(KIND_TAG)
        if kind == "eval":
            raise ConfigError(
                f"target {target}: is an evaluation run; pass the pretrain run it evaluated "
                f"({run.data.tags.get(PRETRAIN_RUN_TAG)}) or a checkpoint model id"
            )
        if kind == "sweep":
            return _sweep_checkpoints(client, run)
        return [_last_checkpoint(client, run)]
    parent = find_sweep(client, target)
    if parent is not None:
        return _sweep_checkpoints(client, parent)
    named = find_named_run(client, target)
    if named is not None:
        return [_last_checkpoint(client, named)]
    raise ConfigError(
        f"target {target!r}: not a run id, a checkpoint model id (m-...), a run name or a "
        f"sweep name in {tracking_uri}"
    )


def _sweep_checkpoints(client: Any, parent: Any) -> list[Checkpoint]:
    """Each trial's last checkpoint: the trials in one search, their checkpoints in bulk."""
    trials = sweep_trials(client, parent)
    by_run = checkpoint_models_of(
        client, parent.info.experiment_id, [run.info.run_id for run in trials]
    )
    found = [_checkpoint(run, models[-1]) for run in trials if (models := by_run[run.info.run_id])]
    if not found:
        name = parent.data.tags.get(SWEEP_TAG)
        raise ConfigError(f"target {name}: no trial of this sweep has a checkpoint yet")
    return found


def _last_checkpoint(client: Any, run: Any) -> Checkpoint:
    models = checkpoint_models(client, run)
    if not models:
        raise ConfigError(
            f"target {run.info.run_id} ({run.info.run_name}): the run has no checkpoint; "
            "allowed: a run that finished at least one checkpointed epoch"
        )
    return _checkpoint(run, models[-1])


def run_checkpoints(client: Any, run: Any) -> list[Checkpoint]:
    return [_checkpoint(run, model) for model in checkpoint_models(client, run)]


def _checkpoint(run: Any, model: Any) -> Checkpoint:
    return Checkpoint(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        experiment_id=run.info.experiment_id,
        model_id=model.model_id,
        epoch=int(model.params["epoch"]),
        uri=model.params["checkpoint_uri"],
        sweep=run.data.tags.get(SWEEP_TAG),
    )
