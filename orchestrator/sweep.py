"""Ablation sweeps on Ray Tune: one Tune trial = one pretrain run (a Ray Train V2 fit).

The driver creates every trial's MLflow run up front, as a child of the sweep's parent run,
keyed by the trial's deterministic name, with its params and tags, and hands each Tune trial
its prepared run; a trial declares its training data (dataset input) when it starts. A Tune
trial is a small function that fits a `TorchTrainer` with `TuneReportCallback`; its Train run
name is the trial name, so a restored trial resumes from its own last checkpoint, and the
MLflow runs are found again by key instead of duplicated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray.tune import PlacementGroupFactory

from orchestrator import console_log
from orchestrator.config import RunSpec, SweepSpec, Trial
from orchestrator.launch import evaluate_after, execute_run
from orchestrator.ray_setup import ensure_ray
from orchestrator.run_prep import PreparedRun, TrainableData, check_trainables, prepare_run
from orchestrator.sweep_outcomes import (  # noqa: F401 - TrialOutcome, summary_table re-exported
    SweepResult,
    TrialOutcome,
    as_row,
    outcomes_of,
    summary_markdown,
    summary_table,
    trial_table_markdown,
)
from orchestrator.sweep_progress import SweepProgress, ray_log_dir
from orchestrator.sweep_space import param_space, searcher
from orchestrator.tracking import (
    KIND_TAG,
    SWEEP_TAG,
    TRIAL_INDEX_TAG,
    Tracker,
    resolve_tracking_uri,
)
from orchestrator.trainer import runs_in_process

# A trial's own driver only waits on its Train workers. A whole CPU per trial deadlocks small
# machines, and Tune refuses zero, so it reserves a sliver.
TRIAL_DRIVER_CPU = 0.01
# Runs created at once through a tracking server at set-up.
SETUP_THREADS = 8


def run_trial(config: dict[str, Any], runs: list[PreparedRun]) -> None:
    """The Tune trainable: fit one prepared run, reporting epochs to Tune as they come."""
    from ray.tune.integration.ray_train import TuneReportCallback

    run = runs[config["trial"]]
    result = execute_run(run, callbacks=[TuneReportCallback()])
    evaluate_after(run, result.epochs_done)


def open_sweep_runs(
    sweep: SweepSpec,
    trials: list[Trial],
    tracker: Tracker,
    name: str,
    checked: list[TrainableData] | None = None,
) -> tuple[str, list[PreparedRun]]:
    """The sweep's parent run and one child run per trial (found again on a re-run).

    The sweep's existing runs are found in one search, not one per trial (`prefetch_runs`).
    `checked` is each trial's `check_trainable` result when the caller already has it."""
    if checked is None:
        checked = check_trainables(trial.spec for trial in trials)
    tracker.prefetch_runs(SWEEP_TAG, name)
    parent = tracker.open_run(
        key=f"sweep:{name}",
        params={
            "sweep.trials": len(trials),
            "sweep.seeds": sweep.sweep.seeds,
            "sweep.max_concurrent_trials": sweep.sweep.max_concurrent_trials,
            **{f"sweep.grid.{k}": v for k, v in sweep.sweep.grid.items()},
        },
        tags={SWEEP_TAG: name, KIND_TAG: "sweep"},
        run_name=name,
    )
    tracker.log_text(parent.run_id, sweep.model_dump_json(indent=2), "sweep_spec.json")
    tracker.log_text(parent.run_id, trial_table_markdown(trials), "trials.md")

    def prepare(trial: Trial, check: TrainableData) -> PreparedRun:
        tags = {SWEEP_TAG: name, TRIAL_INDEX_TAG: str(trial.index), KIND_TAG: "trial"}
        # The data set is declared when the trial starts (`execute_run`): a planned trial has
        # read nothing, and through a server it would be a third request per run here.
        return prepare_run(
            trial.spec, trial.name, tracker, check, tags, parent.run_id, input_at_start=True
        )

    if tracker.writes_in_batches:  # an SQL store: written together at `end_prefetch`
        runs = [prepare(trial, check) for trial, check in zip(trials, checked, strict=True)]
    else:
        runs = _prepare_overlapped(prepare, trials, checked)
    tracker.end_prefetch()
    return parent.run_id, runs


def _prepare_overlapped(
    prepare: Callable[[Trial, TrainableData], PreparedRun],
    trials: list[Trial],
    checked: list[TrainableData],
) -> list[PreparedRun]:
    """`prepare` every trial through a server, SETUP_THREADS at a time: two HTTP round trips
    per new run (the run with its tags, its params) and no bulk endpoint, so overlapping them
    keeps client and server busy. Each run gets its key in the call that creates it, so a
    set-up killed half-way is still found again run by run."""
    with ThreadPoolExecutor(max_workers=SETUP_THREADS) as pool:
        return list(pool.map(prepare, trials, checked))


def run_sweep(
    sweep: SweepSpec,
    trials: list[Trial],
    name: str | None = None,
    address: str | None = None,
    log_to_driver: bool = False,
) -> SweepResult:
    """Run (or restore) every trial of the sweep; returns one outcome per trial."""
    from ray import tune

    started = time.perf_counter()
    name = name or sweep.name
    base = trials[0].spec
    checked = check_trainables(t.spec for t in trials)  # unreadable data fails before MLflow
    tracker = Tracker(resolve_tracking_uri(base.tracking.uri), base.tracking.experiment)
    parent_run_id, runs = open_sweep_runs(sweep, trials, tracker, name, checked)
    storage_path = runs[0].storage_path
    experiment_path = f"{storage_path}/{name}"

    tracker.mark_running(parent_run_id)
    ensure_ray(address, log_to_driver=log_to_driver)
    reserved = [trial_resources(t.spec, sweep.sweep.driver_resources) for t in trials]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, runs=runs),
        lambda config: PlacementGroupFactory([reserved[config["trial"]]]),
    )
    progress = SweepProgress(trials, name)
    restored = tune.Tuner.can_restore(experiment_path)
    if restored:
        tuner = tune.Tuner.restore(
            experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        finished = sum(run.previous_status == "FINISHED" for run in runs)
        print(
            f"[mimray] restoring sweep from {experiment_path}: {finished} of {len(runs)} "
            f"trials finished (kept), {len(runs) - finished} to resume from their last "
            "checkpoint or start; errored trials are retried",
            flush=True,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            # The knobs are Tune's search space (ResultGrid columns `config/method.k`, ...);
            # the searcher runs exactly the trials recorded above, in order.
            param_space=param_space(sweep, trials),
            tune_config=tune.TuneConfig(
                search_alg=searcher(trials, sweep.sweep.max_concurrent_trials),
                num_samples=len(trials),
                scheduler=_scheduler(sweep, base.train.epochs),
                trial_name_creator=lambda t: trials[t.config["trial"]].name,
                trial_dirname_creator=lambda t: trials[t.config["trial"]].name,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                verbose=0,
                callbacks=[progress],
                # In-process trials have no Ray Train FailureConfig: Tune restarts a crashed
                # one, and it resumes from its last checkpoint.
                failure_config=tune.FailureConfig(
                    max_failures=max(
                        (t.spec.train.max_failures for t in trials if runs_in_process(t.spec)),
                        default=0,
                    )
                ),
            ),
        )
    print(
        f"[mimray] sweep {name!r}: {len(trials)} trials, "
        f"{sweep.sweep.max_concurrent_trials} at a time; MLflow parent run {parent_run_id}; "
        f"Ray logs in {ray_log_dir()}",
        flush=True,
    )
    console_log.gate_library_handlers()  # Tune added its handlers on import
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        tracker.finish_run(parent_run_id, status="KILLED")
        raise
    outcomes = outcomes_of(trials, grid)
    for outcome in outcomes:
        if outcome.status == "FINISHED" and outcome.epochs != outcome.trial.spec.train.epochs:
            # Stopped early by the scheduler: Tune ends the trial's process, which may not
            # get to close its MLflow run.
            tracker.finish_run(runs[outcome.trial.index].run_id)
    tracker.log_text(parent_run_id, summary_markdown(outcomes), "summary.md")
    tracker.log_text(
        parent_run_id, json.dumps([as_row(o) for o in outcomes], indent=2), "summary.json"
    )
    statuses = {o.status for o in outcomes}
    tracker.finish_run(
        parent_run_id,
        status="FAILED"
        if "ERRORED" in statuses
        else "KILLED"
        if statuses - {"FINISHED"}
        else "FINISHED",
    )
    return SweepResult(name, parent_run_id, outcomes, restored, time.perf_counter() - started)


def trial_resources(spec: RunSpec, driver_resources: dict[str, float]) -> dict[str, float]:
    """What a trial's own process reserves: a sliver beside its Train workers, or, when it
    trains in-process (one worker), what that worker would have reserved."""
    if not runs_in_process(spec):
        return {**driver_resources, "CPU": TRIAL_DRIVER_CPU}
    resources = {**driver_resources, **spec.scaling.worker_resources}
    resources["CPU"] = spec.scaling.cpus_per_worker
    if spec.scaling.use_gpu:
        resources["GPU"] = spec.scaling.gpus_per_worker
    return resources


def _scheduler(sweep: SweepSpec, max_epochs: int) -> Any:
    stop = sweep.sweep.early_stop
    if stop is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        metric=stop.metric,
        mode=stop.mode,
        time_attr="epoch",
        max_t=max_epochs,
        grace_period=stop.grace_period,
        reduction_factor=stop.reduction_factor,
    )
