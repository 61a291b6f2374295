"""Evaluating one pretrain checkpoint downstream: its own MLflow run with lineage.

Each checkpoint x protocol x settings is one eval run, keyed by the model id and the settings'
fingerprint, so evaluating it again finds the same run instead of adding one. The eval run is
nested under the pretrain run, names it, the model and the epoch in tags, declares the model
and the labelled data as inputs, and logs its top-1 on the model too. Which checkpoints a
target names is `checkpoints.py`; the `eval:` list of a pretrain spec is `chained.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.config import ConfigError, EvalSpec, flatten
from orchestrator.evaluation.checkpoints import Checkpoint
from orchestrator.evaluation.data import EvalData, describe_eval_data, eval_datasets
from orchestrator.fit.fit_call import fit
from orchestrator.fit.in_process import InProcessTrainer
from orchestrator.fit.ray_setup import ensure_ray, runs_in_process, worker_scaling
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
from orchestrator.tracking.lookup import is_result_metric
from orchestrator.tracking.provenance import commit_tags
from workloads.checkpoint import read_checkpoint_spec
from workloads.evaluation.loop import eval_loop_per_worker, evaluate
from workloads.run_spec import EvalLoopConfig

# Labelled splits of a fine-tune up to this many decoded bytes are read once, not every epoch.
FINETUNE_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class EvalResult:
    checkpoint: Checkpoint
    protocol: str
    run_id: str
    metrics: dict[str, float]
    reused: bool


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

    run_id = _open_eval_run(tracker, key, checkpoint, spec, data, pretrain_spec)
    ensure_ray(address)
    reporter = tracker.reporter(run_id, system_metrics=False)
    trainer = _build_trainer(checkpoint, spec, data, pretrain_spec, reporter)
    tracker.mark_running(run_id)
    try:
        result = fit(trainer)
    except BaseException as err:
        tracker.finish_run(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    metrics = {
        k: float(v) for k, v in (result.metrics or {}).items() if _is_result(k, spec.protocol)
    }
    tracker.log_model_metrics(run_id, checkpoint.model_id, metrics, step=checkpoint.epoch)
    tracker.finish_run(run_id)
    return EvalResult(checkpoint, spec.protocol, run_id, metrics, False)


def _open_eval_run(
    tracker: Tracker,
    key: str,
    checkpoint: Checkpoint,
    spec: EvalSpec,
    data: EvalData,
    pretrain_spec: dict[str, Any],
) -> str:
    """The eval run's id, its settings, lineage tags and inputs (the model, both splits)."""
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
    contexts = ("eval-train", "eval-val")
    if data.selection_of is not None:  # both parts of train: train[:N] fits, train[N:] scores
        contexts = ("eval-selection-fit", "eval-selection-score")
    for info, context in zip((data.train, data.val), contexts, strict=True):
        tracker.log_dataset(
            handle.run_id,
            name=f"{info.source.rstrip('/').rsplit('/', 1)[-1]}-{info.split}",
            uri=info.source,
            digest=info.digest,
            num_rows=info.num_rows,
            context=context,
        )
    return handle.run_id


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
    return {**tags, **commit_tags()}


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
    datasets = eval_datasets(data, spec.data.seed)
    if spec.protocol == "finetune":
        train_rows = round(train_rows * spec.finetune.label_fraction)
        datasets["train"] = datasets["train"].limit(train_rows)  # a fixed subset of labels
        # Flips are drawn in the worker from the eval seed (`protocols.finetune`), so a rerun
        # flips the same images.
        pixels = (train_rows + data.val.num_rows) * data.img_size**2 * 3
        if pixels <= FINETUNE_CACHE_BYTES:
            # Fine-tuning reads both splits every epoch; re-running the read and decode tasks
            # each time costs far more than the steps on a small labelled set. Read once and
            # keep them in Ray's object store (same rows, same order, so the same numbers).
            datasets = {split: dataset.materialize() for split, dataset in datasets.items()}
    # Ray storage next to the pretrain run's: <storage>/<pretrain run>/checkpoint_epoch_N
    storage_path = checkpoint.uri.rsplit("/", 2)[0]
    name = f"eval-{spec.protocol}-{checkpoint.model_id}-{spec.fingerprint()}"
    config = EvalLoopConfig(
        eval=spec.model_dump(mode="json"),
        model=pretrain_spec["model"],
        checkpoint_uri=checkpoint.uri,
        num_classes=data.train.num_classes,
        steps_per_epoch=train_rows // spec.finetune.batch_size,
        reporter=reporter,
    )
    if runs_in_process(spec):
        # One CPU worker evaluates in this process, as a one-worker pretrain run trains: no
        # worker group to start (the most of a small evaluation's wall time), and never a
        # report to Tune when this runs after a trial's training.
        return InProcessTrainer(
            loop=evaluate,
            train_loop_config=config,
            datasets=datasets,
            name=name,
            run_path=f"{storage_path}/{name}",
            keep=None,
            max_failures=1,
            cpus=spec.scaling.cpus_per_worker,
            to_tune=False,
            train_loop_per_worker=eval_loop_per_worker,
        )
    return TorchTrainer(
        eval_loop_per_worker,
        train_loop_config=config,
        scaling_config=worker_scaling(spec),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=1),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
    )


def print_result(result: EvalResult) -> None:
    shown = "  ".join(f"{k} {v:.4f}" for k, v in sorted(result.metrics.items()))
    note = " (already evaluated; run reused)" if result.reused else ""
    checkpoint = result.checkpoint
    print(
        f"[mimray] {result.protocol} of {checkpoint.run_name} epoch {checkpoint.epoch}: "
        f"{shown}; MLflow run {result.run_id}{note}",
        flush=True,
    )
