"""Evaluating pretrain checkpoints downstream, each evaluation its own MLflow run with lineage.

A target (a pretrain run, a checkpoint LoggedModel or a sweep) resolves to checkpoints; each
checkpoint x protocol x settings is one eval run, keyed by the model id and the settings'
fingerprint, so evaluating it again finds the same run instead of adding one. The eval run is
nested under the pretrain run, names it, the model and the epoch in tags, declares the model
and the labelled data as inputs, and logs its top-1 on the model too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.evaluation.data import EvalData, describe_eval_data, labelled_dataset
from orchestrator.launch import ensure_ray, git_commit, scaling_config
from orchestrator.lookup import (
    checkpoint_models,
    checkpoint_models_of,
    find_named_run,
    find_sweep,
    get_checkpoint_model,
    get_run,
    is_result_metric,
    open_store,
    sweep_trials,
)
from orchestrator.config import ConfigError, EvalSpec, flatten
from orchestrator.tracking import (
    CHECKPOINT_EPOCH_TAG,
    CHECKPOINT_URI_TAG,
    EVAL_PROTOCOL_TAG,
    KIND_TAG,
    MODEL_ID_TAG,
    PRETRAIN_RUN_TAG,
    SWEEP_TAG,
    Tracker,
)
from workloads.data.decode import random_hflip
from workloads.evaluation.loop import eval_loop_per_worker, read_checkpoint_spec


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


@dataclass(frozen=True)
class EvalResult:
    checkpoint: Checkpoint
    protocol: str
    run_id: str
    metrics: dict[str, float]
    reused: bool


def resolve_checkpoints(tracking_uri: str, target: str) -> list[Checkpoint]:
    """The checkpoints TARGET names: a LoggedModel id -> that checkpoint; a pretrain run id ->
    its last checkpoint; a sweep name (or its parent run id) -> each trial's last one."""
    client = open_store(tracking_uri)
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


def evaluate_checkpoint(
    checkpoint: Checkpoint, spec: EvalSpec, tracking_uri: str, address: str | None = None
) -> EvalResult:
    """Evaluate one checkpoint with one protocol; reuse the eval run when it already ran."""
    try:
        pretrain_spec = read_checkpoint_spec(checkpoint.uri)
    except FileNotFoundError:
        raise ConfigError(
            f"checkpoint {checkpoint.model_id}: its files at {checkpoint.uri} are gone "
            "(pruned by train.keep_checkpoints?)"
        ) from None
    data = describe_eval_data(spec, pretrain_spec)
    tracker = Tracker.for_experiment_id(tracking_uri, checkpoint.experiment_id)
    key = f"eval:{checkpoint.model_id}:{spec.fingerprint()}"
    earlier = tracker.find_run(key)
    if earlier is not None and earlier.info.status == "FINISHED":
        metrics = {k: v for k, v in earlier.data.metrics.items() if _is_result(k, spec.protocol)}
        if metrics:
            return EvalResult(checkpoint, spec.protocol, earlier.info.run_id, metrics, True)

    handle = tracker.open_run(
        key=key,
        params={
            **{f"eval.{k}": v for k, v in flatten(spec.settings())},
            "eval.checkpoint_uri": checkpoint.uri,
            "eval.num_classes": data.train.num_classes,
        },
        tags=_lineage_tags(checkpoint, spec, pretrain_spec),
        run_name=f"{checkpoint.run_name}-e{checkpoint.epoch}-{spec.protocol}",
        parent_run_id=checkpoint.run_id,
    )
    tracker.log_model_input(handle.run_id, checkpoint.model_id)
    for info, context in ((data.train, "eval-train"), (data.val, "eval-val")):
        tracker.log_dataset(
            handle.run_id,
            name=f"{info.source.rstrip('/').rsplit('/', 1)[-1]}-{info.split}",
            uri=info.source,
            digest=info.digest,
            num_rows=info.num_rows,
            context=context,
        )
    ensure_ray(address)
    reporter = tracker.reporter(handle.run_id, system_metrics=False)
    trainer = _build_trainer(checkpoint, spec, data, pretrain_spec, reporter)
    tracker.mark_running(handle.run_id)
    try:
        result = trainer.fit()
    except BaseException as err:
        tracker.finish_run(
            handle.run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        )
        raise
    metrics = {
        k: float(v) for k, v in (result.metrics or {}).items() if _is_result(k, spec.protocol)
    }
    tracker.log_model_metrics(handle.run_id, checkpoint.model_id, metrics, step=checkpoint.epoch)
    tracker.finish_run(handle.run_id)
    return EvalResult(checkpoint, spec.protocol, handle.run_id, metrics, False)


def _is_result(key: str, protocol: str) -> bool:
    return key.startswith(f"{protocol}/") and is_result_metric(key)


def _lineage_tags(
    checkpoint: Checkpoint, spec: EvalSpec, pretrain_spec: dict[str, Any]
) -> dict[str, str]:
    tags = {
        KIND_TAG: "eval",
        EVAL_PROTOCOL_TAG: spec.protocol,
        PRETRAIN_RUN_TAG: checkpoint.run_id,
        MODEL_ID_TAG: checkpoint.model_id,
        CHECKPOINT_EPOCH_TAG: str(checkpoint.epoch),
        CHECKPOINT_URI_TAG: checkpoint.uri,
        "mimray.method": pretrain_spec["method"]["name"],
        "mimray.pretrain_run_name": checkpoint.run_name,
    }
    if checkpoint.sweep:
        tags[SWEEP_TAG] = checkpoint.sweep
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _build_trainer(
    checkpoint: Checkpoint,
    spec: EvalSpec,
    data: EvalData,
    pretrain_spec: dict[str, Any],
    reporter: Any,
) -> Any:
    from ray.data import DataContext
    from ray.train import FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchTrainer

    DataContext.get_current().enable_progress_bars = False
    train_rows = data.train.num_rows
    datasets = {
        "train": labelled_dataset(data.train, data.img_size, spec.data.seed, data.columns),
        "val": labelled_dataset(data.val, data.img_size, spec.data.seed, data.columns),
    }
    if spec.protocol == "finetune":
        train_rows = round(train_rows * spec.finetune.label_fraction)
        datasets["train"] = datasets["train"].limit(train_rows)  # a fixed subset of labels
        if spec.finetune.hflip:
            datasets["train"] = datasets["train"].map_batches(random_hflip, batch_format="numpy")
    # Ray storage next to the pretrain run's: <storage>/<pretrain run>/checkpoint_epoch_N
    storage_path = checkpoint.uri.rsplit("/", 2)[0]
    return TorchTrainer(
        eval_loop_per_worker,
        train_loop_config={
            "eval": spec.model_dump(mode="json"),
            "model": pretrain_spec["model"],
            "checkpoint_uri": checkpoint.uri,
            "num_classes": data.train.num_classes,
            "steps_per_epoch": train_rows // spec.finetune.batch_size,
            "reporter": reporter,
        },
        scaling_config=scaling_config(spec.scaling),
        run_config=RunConfig(
            name=f"eval-{spec.protocol}-{checkpoint.model_id}-{spec.fingerprint()}",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=1),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
    )


def chained_evaluations(
    spec_evals: list[EvalSpec], checkpoints: list[Checkpoint], final_epoch: int
) -> list[tuple[Checkpoint, EvalSpec]]:
    """(checkpoint, eval) pairs a run's `eval:` list asks for: the final checkpoint, every
    N epochs where `every` is set, and the untrained encoder (epoch 0) where `baseline` is."""
    pairs = []
    for spec in spec_evals:
        for checkpoint in checkpoints:
            if checkpoint.epoch == 0:
                due = spec.baseline
            else:
                due = checkpoint.epoch == final_epoch or (
                    spec.every is not None and checkpoint.epoch % spec.every == 0
                )
            if due:
                pairs.append((checkpoint, spec))
    return pairs


def run_chained_evaluations(
    run_id: str,
    spec_evals: list[EvalSpec],
    final_epoch: int,
    tracking_uri: str,
    address: str | None = None,
) -> list[EvalResult]:
    """Evaluate a finished pretrain run as its spec's `eval:` list says."""
    if not spec_evals:
        return []
    client = open_store(tracking_uri)
    run = client.get_run(run_id)
    checkpoints = run_checkpoints(client, run)
    if checkpoints and any(spec.baseline for spec in spec_evals):
        _record_baseline(client, tracking_uri, run, checkpoints[-1])
        checkpoints = run_checkpoints(client, run)
    results = []
    for checkpoint, spec in chained_evaluations(spec_evals, checkpoints, final_epoch):
        result = evaluate_checkpoint(checkpoint, spec, tracking_uri, address)
        print_result(result)
        results.append(result)
    return results


def _record_baseline(client: Any, tracking_uri: str, run: Any, last: Checkpoint) -> None:
    """The run's untrained encoder as its epoch-0 checkpoint (see `orchestrator.evaluation.baseline`)."""
    from orchestrator.evaluation.baseline import ensure_baseline_model  # torch: only when asked for

    tracker = Tracker.for_experiment_id(tracking_uri, run.info.experiment_id)
    spec = read_checkpoint_spec(last.uri)
    ensure_baseline_model(client, tracker, run, spec, run_path=last.uri.rsplit("/", 1)[0])


def print_result(result: EvalResult) -> None:
    shown = "  ".join(f"{k} {v:.4f}" for k, v in sorted(result.metrics.items()))
    note = " (already evaluated; run reused)" if result.reused else ""
    checkpoint = result.checkpoint
    print(
        f"[mimray] {result.protocol} of {checkpoint.run_name} epoch {checkpoint.epoch}: "
        f"{shown}; MLflow run {result.run_id}{note}",
        flush=True,
    )
