"""Ablation sweeps on Ray Tune: one Tune trial = one pretrain run (a Ray Train V2 fit).

The driver creates every trial's MLflow run up front, as a child of the sweep's parent run,
keyed by the trial's deterministic name, and hands each Tune trial its prepared run. A Tune
trial is a small function that fits a `TorchTrainer` with `TuneReportCallback`; its Train run
name is the trial name, so a restored trial resumes from its own last checkpoint, and the
MLflow runs are found again by key instead of duplicated.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback, PlacementGroupFactory
from rich.table import Table

from orchestrator import console_log
from orchestrator.config import RunSpec, SweepSpec, Trial
from orchestrator.launch import evaluate_after, execute_run
from orchestrator.ray_setup import ensure_ray
from orchestrator.run_prep import PreparedRun, TrainableData, check_trainables, prepare_run
from orchestrator.sweep_space import param_space, searcher
from orchestrator.tracking import (
    KIND_TAG,
    SWEEP_TAG,
    TRIAL_INDEX_TAG,
    Tracker,
    resolve_tracking_uri,
)
from orchestrator.trainer import runs_in_process
from workloads.live_metrics import SweepMetrics

# A trial's own driver only waits on its Train workers. A whole CPU per trial deadlocks small
# machines, and Tune refuses zero, so it reserves a sliver.
TRIAL_DRIVER_CPU = 0.01
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class TrialOutcome:
    trial: Trial
    status: str  # FINISHED | ERRORED | UNFINISHED | PENDING
    final_loss: float | None
    epochs: int | None
    error: str | None = None


@dataclass(frozen=True)
class SweepResult:
    name: str
    parent_run_id: str
    outcomes: list[TrialOutcome]
    restored: bool
    wall_s: float


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
    runs = [
        prepare_run(
            trial.spec,
            trial.name,
            tracker,
            check,
            extra_tags={
                SWEEP_TAG: name,
                TRIAL_INDEX_TAG: str(trial.index),
                KIND_TAG: "trial",
            },
            parent_run_id=parent.run_id,
        )
        for trial, check in zip(trials, checked, strict=True)
    ]
    tracker.end_prefetch()
    return parent.run_id, runs


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
    outcomes = _outcomes(trials, grid)
    for outcome in outcomes:
        if outcome.status == "FINISHED" and outcome.epochs != outcome.trial.spec.train.epochs:
            # Stopped early by the scheduler: Tune ends the trial's process, which may not
            # get to close its MLflow run.
            tracker.finish_run(runs[outcome.trial.index].run_id)
    tracker.log_text(parent_run_id, summary_markdown(outcomes), "summary.md")
    tracker.log_text(
        parent_run_id, json.dumps([_as_row(o) for o in outcomes], indent=2), "summary.json"
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


def _outcomes(trials: list[Trial], grid: Any) -> list[TrialOutcome]:
    by_index = {}
    for result in grid:
        index = result.config["trial"]
        metrics = result.metrics or {}
        epochs_wanted = trials[index].spec.train.epochs
        if result.error:
            status = "ERRORED"
        elif metrics.get("epoch") == epochs_wanted or _stopped_early(result):
            status = "FINISHED"
        else:
            status = "UNFINISHED"  # interrupted (Ctrl-C): the next run resumes it
        by_index[index] = TrialOutcome(
            trials[index],
            status,
            metrics.get("loss"),
            metrics.get("epoch"),
            error_line(result.error) if result.error else None,
        )
    return [by_index.get(t.index, TrialOutcome(t, "PENDING", None, None)) for t in trials]


def error_line(error: BaseException) -> str:
    """The line that says what went wrong: the exception's own last line. A trial's error is
    a Ray task error whose first line only names the actor (`ray::ImplicitFunc.train() (pid=
    ...)`, in terminal colours); the cause comes last, after the worker's traceback."""
    lines = [ANSI_CODES.sub("", line).strip() for line in str(error).splitlines()]
    return next((line for line in reversed(lines) if line), type(error).__name__)


def _stopped_early(result: Any) -> bool:
    # ASHA stops trials between epochs; they are complete as far as the sweep goes.
    return bool((result.metrics or {}).get("done")) and not result.error


def _as_row(outcome: TrialOutcome) -> dict[str, Any]:
    return {
        "trial": outcome.trial.name,
        **outcome.trial.values,
        "status": outcome.status,
        "final_loss": outcome.final_loss,
        "epochs": outcome.epochs,
        "error": outcome.error,
    }


def trial_table_markdown(trials: list[Trial]) -> str:
    keys = list(dict.fromkeys(k for t in trials for k in t.values))
    lines = ["| # | trial | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for t in trials:
        values = " | ".join(str(t.values.get(k, "")) for k in keys)
        lines.append(f"| {t.index} | {t.name} | {values} |")
    return "\n".join(lines) + "\n"


def summary_markdown(outcomes: list[TrialOutcome]) -> str:
    keys = list(dict.fromkeys(k for o in outcomes for k in o.trial.values))
    lines = [
        "| trial | " + " | ".join(keys) + " | final loss | status |",
        "|---" * (len(keys) + 3) + "|",
    ]
    for o in outcomes:
        values = " | ".join(str(o.trial.values.get(k, "")) for k in keys)
        loss = f"{o.final_loss:.4f}" if o.final_loss is not None else "-"
        lines.append(f"| {o.trial.name} | {values} | {loss} | {o.status} |")
    return "\n".join(lines) + "\n"


def summary_table(result: SweepResult) -> Table:
    keys = list(dict.fromkeys(k for o in result.outcomes for k in o.trial.values))
    table = Table("trial", *keys, "final loss", "status", title=f"sweep {result.name!r}")
    for o in result.outcomes:
        loss = f"{o.final_loss:.4f}" if o.final_loss is not None else "-"
        table.add_row(o.trial.name, *(str(o.trial.values.get(k, "")) for k in keys), loss, o.status)
    return table


def ray_log_dir() -> str:
    try:
        from ray._private.worker import _global_node

        return _global_node.get_logs_dir_path()
    except Exception:  # a client connection has no local node
        return "the Ray cluster's session logs"


class SweepProgress(Callback):
    """One line per change of the sweep's state, instead of Tune's and Ray's log flood; the
    same counts, and each trial's latest loss, as Prometheus gauges (`SweepMetrics`)."""

    def __init__(self, trials: list[Trial], sweep: str | None = None) -> None:
        self.names = {t.index: t.name for t in trials}
        self.total = len(trials)
        self.sweep = sweep or "sweep"
        self.state: dict[str, str] = {}
        self.best: tuple[float, str] | None = None
        self._metrics: SweepMetrics | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment; live metric handles and their
        # refresh thread belong to this process, so a restored sweep opens its own.
        return {**self.__dict__, "_metrics": None}

    def _live(self) -> SweepMetrics:
        # getattr: a sweep pickled by an older mimray restores without these attributes.
        if getattr(self, "_metrics", None) is None:
            self._metrics = SweepMetrics(getattr(self, "sweep", "sweep"))
        return self._metrics

    def _line(self) -> None:
        counts = Counter(self.state.values())
        pending = self.total - sum(counts.values())
        best = f"; best loss {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(
            f"[mimray] trials: {counts['running']} running, {pending} pending, "
            f"{counts['done']} done, {counts['errored']} errored{best}",
            flush=True,
        )
        self._live().record_counts(
            {
                "running": counts["running"],
                "pending": pending,
                "errored": counts["errored"],
                "finished": counts["done"],
            }
        )

    def _name(self, trial: Any) -> str:
        return self.names.get(trial.config.get("trial"), str(trial))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state[self._name(trial)] = "running"
        self._line()

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        loss = result.get("loss")
        if loss is not None and (self.best is None or loss < self.best[0]):
            self.best = (loss, self._name(trial))
        if loss is not None:
            self._live().record_trial_loss(self._name(trial), float(loss))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state[self._name(trial)] = "done"
        self._line()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state[self._name(trial)] = "errored"
        self._line()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # The last counts stay in Prometheus' history; the endpoint drops them once unrefreshed.
        if getattr(self, "_metrics", None) is not None:
            self._metrics.close()
