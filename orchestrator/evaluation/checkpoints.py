"""Which checkpoints an evaluation target names: a checkpoint LoggedModel, a registered model
version (`models:/NAME@ALIAS` or `models:/NAME/VERSION`), a pretrain run (its last checkpoint)
or a sweep (each trial's last), read from MLflow."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config import ConfigError
from orchestrator.tracking import KIND_TAG, PRETRAIN_RUN_TAG, SWEEP_TAG
from orchestrator.tracking.lookup import (
    RunReader,
    TrackedModel,
    TrackedRun,
    checkpoint_models,
    checkpoint_models_of,
    find_named_run,
    find_sweep,
    get_checkpoint_model,
    open_reader,
    sweep_trials,
)
from orchestrator.tracking.registry import REGISTRY_PREFIX, registered_model_id


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


def resolve_checkpoints(
    tracking_uri: str, target: str, every_epoch: bool = False
) -> list[Checkpoint]:
    """The checkpoints TARGET names: a LoggedModel id, or a registered version
    (`models:/NAME@ALIAS`) -> that checkpoint; a pretrain run id or name -> its last checkpoint;
    a sweep name (or its parent run id) -> each trial's last one. With `every_epoch`, a run or
    sweep names all its checkpoints, every epoch kept (what `mimray promote` chooses from)."""
    reader = open_reader(tracking_uri)
    if target.startswith(REGISTRY_PREFIX):
        model_id = registered_model_id(tracking_uri, target)
        model = get_checkpoint_model(reader, model_id)
        if model is None:
            raise ConfigError(
                f"target {target}: its version points at {model_id}, which is not a mimray "
                "checkpoint; allowed: a version registered by `mimray promote`"
            )
        return [_checkpoint(_source_run(reader, model), model)]
    model = get_checkpoint_model(reader, target)
    if model is not None:
        return [_checkpoint(_source_run(reader, model), model)]
    run = reader.run(target)
    if run is not None:
        kind = run.tags.get(KIND_TAG)
        if kind == "eval":
            raise ConfigError(
                f"target {target}: is an evaluation run; pass the pretrain run it evaluated "
                f"({run.tags.get(PRETRAIN_RUN_TAG)}) or a checkpoint model id"
            )
        if kind == "sweep":
            return _sweep_checkpoints(reader, run, every_epoch)
        return _run_checkpoints(reader, run, every_epoch)
    parent = find_sweep(reader, target)
    if parent is not None:
        return _sweep_checkpoints(reader, parent, every_epoch)
    named = find_named_run(reader, target)
    if named is not None:
        return _run_checkpoints(reader, named, every_epoch)
    raise ConfigError(
        f"target {target!r}: not a run id, a checkpoint model id (m-...), a registered model "
        f"(models:/NAME@ALIAS), a run name or a sweep name in {tracking_uri}"
    )


def _source_run(reader: RunReader, model: TrackedModel) -> TrackedRun:
    run = reader.run(model.source_run_id or "")
    if run is None:
        raise ConfigError(f"checkpoint {model.model_id}: its run {model.source_run_id} is gone")
    return run


def _sweep_checkpoints(
    reader: RunReader, parent: TrackedRun, every_epoch: bool
) -> list[Checkpoint]:
    """Each trial's checkpoints (its last, or all): the trials in one search, their checkpoints
    in bulk."""
    trials = sweep_trials(reader, parent)
    by_run = checkpoint_models_of(reader, parent.experiment_id, [run.run_id for run in trials])
    found = [
        _checkpoint(run, model)
        for run in trials
        for model in (by_run[run.run_id] if every_epoch else by_run[run.run_id][-1:])
    ]
    if not found:
        name = parent.tags.get(SWEEP_TAG)
        raise ConfigError(f"target {name}: no trial of this sweep has a checkpoint yet")
    return found


def _run_checkpoints(reader: RunReader, run: TrackedRun, every_epoch: bool) -> list[Checkpoint]:
    models = checkpoint_models(reader, run)
    if not models:
        raise ConfigError(
            f"target {run.run_id} ({run.name}): the run has no checkpoint; "
            "allowed: a run that finished at least one checkpointed epoch"
        )
    return [_checkpoint(run, model) for model in (models if every_epoch else models[-1:])]


def run_checkpoints(reader: RunReader, run: TrackedRun) -> list[Checkpoint]:
    return [_checkpoint(run, model) for model in checkpoint_models(reader, run)]


def _checkpoint(run: TrackedRun, model: TrackedModel) -> Checkpoint:
    return Checkpoint(
        run_id=run.run_id,
        run_name=run.name,
        experiment_id=run.experiment_id,
        model_id=model.model_id,
        epoch=int(model.params["epoch"]),
        uri=model.params["checkpoint_uri"],
        sweep=run.tags.get(SWEEP_TAG),
    )
