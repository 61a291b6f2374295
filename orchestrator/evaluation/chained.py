"""Chained evaluations: the `eval:` list of a pretrain spec, run on the run's checkpoints once it
has trained (the final one, every N epochs, and the random-init baseline where asked)."""

from __future__ import annotations

from orchestrator.config import ConfigError, EvalSpec
from orchestrator.evaluation.baseline import ensure_baseline_model
from orchestrator.evaluation.checkpoints import Checkpoint, run_checkpoints
from orchestrator.evaluation.runs import EvalResult, evaluate_checkpoint, print_result
from orchestrator.tracking import Tracker
from orchestrator.tracking.lookup import RunReader, TrackedRun, open_reader
from workloads.checkpoint import read_checkpoint_spec


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
    reader = open_reader(tracking_uri)
    run = reader.run(run_id)
    if run is None:
        raise ConfigError(f"run {run_id}: not in the MLflow store at {tracking_uri}")
    checkpoints = run_checkpoints(reader, run)
    if checkpoints and any(spec.baseline for spec in spec_evals):
        _record_baseline(reader, tracking_uri, run, checkpoints[-1])
        checkpoints = run_checkpoints(reader, run)
    results = []
    for checkpoint, spec in chained_evaluations(spec_evals, checkpoints, final_epoch):
        result = evaluate_checkpoint(checkpoint, spec, tracking_uri, address)
        print_result(result)
        results.append(result)
    return results


def _record_baseline(
    reader: RunReader, tracking_uri: str, run: TrackedRun, last: Checkpoint
) -> None:
    """The run's untrained encoder as its epoch-0 checkpoint (see `baseline.py`)."""
    tracker = Tracker.for_experiment_id(tracking_uri, run.experiment_id)
    spec = read_checkpoint_spec(last.uri)
    ensure_baseline_model(reader, tracker, run, spec, run_path=last.uri.rsplit("/", 1)[0])
