"""Launching pretrain runs: a validated spec becomes a fitted Ray Train run and its MLflow run.

`run_pretrain` is `mimray pretrain`: check the data once, prepare the run's record
(`prepare.py`), fit it (`execute_run`, with the trainer of `trainer.py`) and run the spec's
chained evaluations. A sweep trial calls `execute_run` and `evaluate_after` on runs the sweep
prepared. Re-running a name continues the run (see `prepare.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import console_log
from orchestrator.config import RunSpec, check_name
from orchestrator.evaluation.chained import run_chained_evaluations
from orchestrator.fit.fit_call import fit
from orchestrator.fit.ray_setup import ensure_ray
from orchestrator.pretrain.prepare import (
    PreparedRun,
    check_trainable,
    default_run_name,
    log_training_input,
    prepare_run,
)
from orchestrator.pretrain.trainer import build_trainer
from orchestrator.tracking import Tracker, resolve_tracking_uri


@dataclass(frozen=True)
class PretrainResult:
    name: str
    run_id: str
    tracking_uri: str
    run_path: str
    resumed: bool
    epochs_done: int
    final_loss: float | None
    images_per_s: float | None
    checkpoint_uri: str | None
    trained: bool = True  # False: already finished, reported from its MLflow record


def run_pretrain(
    spec: RunSpec, name: str | None = None, address: str | None = None
) -> PretrainResult:
    """Train (or resume) the run `name` to `spec.train.epochs`, recorded in MLflow."""
    name = check_name(name) if name else default_run_name(spec)  # a name becomes a folder
    checked = check_trainable(spec)  # fail on unreadable data before the store is touched
    tracker = Tracker(resolve_tracking_uri(spec.tracking.uri), spec.tracking.experiment)
    run = prepare_run(spec, name, tracker, checked)
    print(
        f"[mimray] {'resuming' if run.resumed else 'starting'} run {name!r}: "
        f"{spec.method.name} on {spec.data.source} ({run.num_rows} images), "
        f"{spec.train.epochs} epochs x {run.schedule.steps_per_epoch} steps, "
        f"{spec.scaling.num_workers} workers; MLflow run {run.run_id}",
        flush=True,
    )
    result = execute_run(run, address)
    evaluate_after(run, result.epochs_done, address)
    return result


def execute_run(
    run: PreparedRun, address: str | None = None, callbacks: list[Any] | None = None
) -> PretrainResult:
    """Fit a prepared run to its last epoch (or report it finished) and close its MLflow run."""
    spec = run.spec
    tracker = Tracker(run.tracking_uri, spec.tracking.experiment)
    if run.resumed:
        # A checkpoint record a kill cut short is made whole before it is read: the final
        # one would otherwise mark a run finished with a half record.
        records = tracker.reporter(run.run_id, system_metrics=False)
        records.start()
        records.whole_records()
        records.close()
        done = _already_complete(tracker, run)
        if done is not None:
            return done
    ensure_ray(address)
    reporter = tracker.reporter(
        run.run_id,
        system_metrics=spec.tracking.system_metrics,
        system_metrics_interval_s=spec.tracking.system_metrics_interval_s,
        commit_on_checkpoint=True,  # a worker-group restart must not log an epoch twice
    )
    trainer = build_trainer(spec, run.name, run.storage_path, run.schedule, reporter, callbacks)
    console_log.gate_library_handlers()  # Ray Train and Ray Data added theirs on import
    if run.input_at_start is not None:  # a sweep trial declares its data as it starts
        log_training_input(tracker, run.run_id, run.input_at_start)
    tracker.mark_running(run.run_id)
    try:
        # One CPU worker trains in this process (`fit/in_process.py`), more in a worker group.
        result = fit(trainer)
    except SystemExit:
        # Tune stops an in-process trial (ASHA) by exiting its thread at a report: the epochs
        # it reported are checkpointed, and the sweep counts the trial as complete.
        tracker.finish_run(run.run_id)
        raise
    except BaseException as err:
        # Ctrl-C is not a failure of the run: it can be resumed by re-running the name.
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        tracker.finish_run(run.run_id, status=status)
        raise
    tracker.finish_run(run.run_id)
    return _pretrain_result(run, result)


def _pretrain_result(run: PreparedRun, result: Any) -> PretrainResult:
    metrics = result.metrics or {}
    checkpoint = result.checkpoint
    return PretrainResult(
        name=run.name,
        run_id=run.run_id,
        tracking_uri=run.tracking_uri,
        run_path=run.run_path,
        resumed=run.resumed,
        epochs_done=int(metrics.get("epoch", 0)),
        final_loss=metrics.get("loss"),
        images_per_s=metrics.get("images_per_s"),
        checkpoint_uri=f"{run.run_path}/{Path(checkpoint.path).name}" if checkpoint else None,
    )


def _already_complete(tracker: Tracker, run: PreparedRun) -> PretrainResult | None:
    """The recorded result when the run already has its final checkpoint: no Ray start-up."""
    models = tracker.checkpoint_models(run.run_id)
    if not models or int(models[-1].params["epoch"]) < run.spec.train.epochs:
        return None
    last = models[-1]
    tracker.finish_run(run.run_id)
    losses = tracker.metric_history(run.run_id, "epoch/loss")
    speeds = tracker.metric_history(run.run_id, "epoch/images_per_s")
    print(f"[mimray] run {run.name!r} already finished {last.params['epoch']} epochs")
    return PretrainResult(
        name=run.name,
        run_id=run.run_id,
        tracking_uri=run.tracking_uri,
        run_path=run.run_path,
        resumed=True,
        epochs_done=int(last.params["epoch"]),
        final_loss=losses[-1][1] if losses else None,
        images_per_s=speeds[-1][1] if speeds else None,
        checkpoint_uri=last.params["checkpoint_uri"],
        trained=False,
    )


def evaluate_after(run: PreparedRun, epochs_done: int, address: str | None = None) -> None:
    """Run the spec's chained `eval:` list on the run's checkpoints (done ones are reused)."""
    run_chained_evaluations(run.run_id, run.spec.eval, epochs_done, run.tracking_uri, address)
