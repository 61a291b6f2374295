"""Ablation sweeps on Ray Tune: one Tune trial = one pretrain run (a Ray Train V2 fit).

The driver opens the sweep's parent run, which lists the planned trials, and starts Tune.
Each trial builds its run spec from Tune's config and opens its own MLflow run when it starts
(`trial.py`): a child of the parent run, keyed by the trial's deterministic name, so a
retried trial or a restored sweep finds its run again instead of making a duplicate. A trial's
Train run name is its trial name, so a restored trial resumes from its own last checkpoint.
Grid and random trials are known before Tune starts; Optuna suggests its trials as they start
(`space.py`). Trial drivers stay off spot capacity (`placement.py`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ray.tune import PlacementGroupFactory

from orchestrator import console_log
from orchestrator.config import ConfigError, SweepSpec, Trial
from orchestrator.environment import environment_variable
from orchestrator.fit.ray_setup import ensure_ray, runs_in_process
from orchestrator.pretrain.prepare import (
    PreparedRun,
    TrainableData,
    check_trainable,
    described_data,
    resolve_storage_path,
)
from orchestrator.sweep.outcomes import (  # noqa: F401 - TrialOutcome, summary_table re-exported
    SweepResult,
    TrialOutcome,
    as_row,
    outcomes_of,
    summary_markdown,
    summary_table,
    trial_table_markdown,
)
from orchestrator.sweep.placement import ON_DEMAND, driver_resources, trial_resources
from orchestrator.sweep.progress import SweepProgress, ray_log_dir
from orchestrator.sweep.space import TRIAL_KEY, param_space, searcher
from orchestrator.sweep.trial import SweepContext, knob_values, open_trial_run, run_trial
from orchestrator.sweep.tune_files import NO_DEFAULT_LOGGERS, result_file_loggers
from orchestrator.tracking import KIND_TAG, SWEEP_TAG, Tracker, resolve_tracking_uri

# Trial runs opened at once through a tracking server by `open_sweep_runs`.
SETUP_THREADS = 8


def open_sweep_parent(sweep: SweepSpec, trials: list[Trial], tracker: Tracker, name: str) -> str:
    """The sweep's parent run (found again on a re-run), listing its planned trials: each
    trial's name and knob values (Optuna's: their names; the values come as they start)."""
    section = sweep.sweep
    params: dict[str, Any] = {
        "sweep.trials": len(trials),
        "sweep.search": section.search,
        "sweep.seeds": section.seeds,
        "sweep.max_concurrent_trials": section.max_concurrent_trials,
        **{f"sweep.grid.{k}": v for k, v in section.grid.items()},
    }
    if not section.planned:
        params |= {"sweep.objective.metric": section.goal().metric}
        params |= {"sweep.objective.mode": section.goal().mode}
    parent = tracker.open_run(
        key=f"sweep:{name}",
        params=params,
        tags={SWEEP_TAG: name, KIND_TAG: "sweep"},
        run_name=name,
    )
    tracker.log_text(parent.run_id, sweep.model_dump_json(indent=2), "sweep_spec.json")
    tracker.log_text(parent.run_id, trial_table_markdown(trials), "trials.md")
    tracker.log_planned_trials(
        parent.run_id, [{"index": t.index, "name": t.name, "values": t.values} for t in trials]
    )
    return parent.run_id


def open_sweep_runs(
    sweep: SweepSpec,
    trials: list[Trial],
    tracker: Tracker,
    name: str,
    checked: list[TrainableData] | None = None,
) -> tuple[str, list[PreparedRun]]:
    """The sweep's whole record as it stands once every trial has started, laid out without
    Tune: the parent run, and each trial's run opened as the trial opens it
    (`trial.open_trial_run`), its training input left to declare
    (`PreparedRun.input_at_start`). For tools that record or measure a sweep's runs
    (`tests/recorded_sweep.py`, `benchmarks/tracker_scale.py`); `mimray sweep` opens only
    the parent, and each trial its own run.

    The sweep's existing runs are found in one search (`prefetch_runs`), and new runs through a
    server SETUP_THREADS at a time: two requests per run and no bulk endpoint."""
    if checked is None:
        described = described_data(t.spec for t in trials)
        checked = [check_trainable(t.spec, described) for t in trials]
    tracker.prefetch_runs(SWEEP_TAG, name)
    parent_run_id = open_sweep_parent(sweep, trials, tracker, name)

    def open_run(trial: Trial, check: TrainableData) -> PreparedRun:
        return open_trial_run(
            tracker,
            trial.spec,
            trial.name,
            trial.index,
            name,
            parent_run_id,
            check,
            resolve_storage_path(trial.spec),
            input_at_start=True,
        )

    with ThreadPoolExecutor(max_workers=SETUP_THREADS) as pool:
        runs = list(pool.map(open_run, trials, checked))
    tracker.end_prefetch()
    return parent_run_id, runs


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
    # Unreadable data fails before MLflow; trials reuse these descriptions.
    described = described_data(t.spec for t in trials)
    for trial in trials:
        check_trainable(trial.spec, described)  # a batch larger than its data, too
    tracker = Tracker(resolve_tracking_uri(base.tracking.uri), base.tracking.experiment)
    parent_run_id = open_sweep_parent(sweep, trials, tracker, name)
    storage_path = resolve_storage_path(base)
    experiment_path = f"{storage_path}/{name}"
    context = SweepContext(
        sweep,
        name,
        parent_run_id,
        tracker.tracking_uri,
        base.tracking.experiment,
        storage_path,
        described,
    )

    tracker.mark_running(parent_run_id)
    ensure_ray(address, log_to_driver=log_to_driver)
    requested = sweep.sweep.driver_resources
    drivers = driver_resources(requested)
    if drivers.get(ON_DEMAND) != requested.get(ON_DEMAND) and not all(
        runs_in_process(t.spec) for t in trials
    ):
        print(
            f"[mimray] trial drivers reserve {{{ON_DEMAND}: {drivers[ON_DEMAND]}}}: this "
            "cluster marks its on-demand nodes, and a driver lost with a spot node ends its trial",
            flush=True,
        )

    def reserved(config: dict[str, Any]) -> PlacementGroupFactory:
        return PlacementGroupFactory(
            [trial_resources(_spec_or_planned(config), requested, drivers)]
        )

    def _spec_or_planned(config: dict[str, Any]) -> Any:
        try:
            return context.spec_of(config)
        except ConfigError:  # a suggestion the spec refuses: the trial itself fails with it
            return trials[config[TRIAL_KEY]].spec

    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), reserved)
    progress = SweepProgress(trials, name)
    restored = tune.Tuner.can_restore(experiment_path)
    if restored:
        tuner = tune.Tuner.restore(
            experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        known = tracker.known_runs(SWEEP_TAG, name)
        finished = sum(
            known[t.name].previous_status == "FINISHED" for t in trials if t.name in known
        )
        print(
            f"[mimray] restoring sweep from {experiment_path}: {finished} of {len(trials)} "
            f"trials finished (kept), {len(trials) - finished} to resume from their last "
            "checkpoint or start; errored trials are retried",
            flush=True,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            # The knobs are Tune's search space (ResultGrid columns `config/method.k`, ...),
            # and each trial's spec is built from them.
            param_space=param_space(sweep, trials),
            tune_config=tune.TuneConfig(
                search_alg=searcher(sweep, trials),
                num_samples=len(trials),
                scheduler=_scheduler(sweep, base.train.epochs),
                trial_name_creator=lambda t: trials[t.config[TRIAL_KEY]].name,
                trial_dirname_creator=lambda t: trials[t.config[TRIAL_KEY]].name,
                # In-process trials run in a finished one's process (docs/sweeps.md).
                reuse_actors=all(runs_in_process(t.spec) for t in trials),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                verbose=0,
                callbacks=[progress, *result_file_loggers()],
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
        with environment_variable(NO_DEFAULT_LOGGERS, "1"):
            grid = tuner.fit()
    except KeyboardInterrupt:
        tracker.finish_run(parent_run_id, status="KILLED")
        raise
    outcomes = outcomes_of(trials, grid, _trial_as_run(trials, context))
    _close_ended_trial_runs(tracker, name, outcomes)
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


def _close_ended_trial_runs(tracker: Tracker, name: str, outcomes: list[TrialOutcome]) -> None:
    """Close the MLflow runs of trials that Tune ended while they still looked RUNNING: Tune
    stops a trial's process at a report (ASHA, or the scheduler's last epoch) or loses it with
    its node, and that process may not get to close its run."""
    known = tracker.known_runs(SWEEP_TAG, name)
    for outcome in outcomes:
        run = known.get(outcome.trial.name)
        if run is None or run.previous_status != "RUNNING":
            continue
        if outcome.status == "FINISHED":
            tracker.finish_run(run.run_id)
        elif outcome.status == "ERRORED":
            tracker.finish_run(run.run_id, status="FAILED")


def _trial_as_run(trials: list[Trial], context: SweepContext) -> Callable[[dict[str, Any]], Trial]:
    """The trial as Tune's config of it says it ran: its knob values and the spec built from
    them (an Optuna trial's values are known only from there)."""

    def trial_of(config: dict[str, Any]) -> Trial:
        planned = trials[config[TRIAL_KEY]]
        values = {k: v for k, v in knob_values(config).items() if v is not None}
        try:
            return replace(planned, values=values, spec=context.spec_of(config))
        except ConfigError:
            return replace(planned, values=values)

    return trial_of


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
