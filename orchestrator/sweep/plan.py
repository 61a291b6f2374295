"""What a sweep will run, shown before anything starts (`mimray sweep --dry-run`): no Ray."""

from __future__ import annotations

from rich.table import Table

from orchestrator.config import SweepSpec, Trial
from orchestrator.fit.ray_setup import runs_in_process
from orchestrator.tracking import measured_epoch_seconds, resolve_tracking_uri


def trial_resources(trial: Trial) -> str:
    scaling = trial.spec.scaling
    per_worker = f"{scaling.cpus_per_worker:g} CPU"
    if scaling.use_gpu:
        per_worker += f" + {scaling.gpus_per_worker:g} GPU"
    for name, amount in scaling.worker_resources.items():
        per_worker += f" + {amount:g} {name}"
    return f"{scaling.num_workers} x ({per_worker})"


def trial_process(trial: Trial) -> str:
    if runs_in_process(trial.spec):
        return "trained in the trial's own process (no worker group to start)"
    return (
        "Train workers + a 0.01 CPU trial driver (on on-demand nodes where the cluster marks "
        "them with `on_demand`)"
    )


def plan_table(sweep: SweepSpec, trials: list[Trial]) -> Table:
    keys = list(dict.fromkeys(k for t in trials for k in t.values))
    table = Table("#", "trial", *keys, "epochs", "resources", title=f"sweep {sweep.name!r}")
    for t in trials:
        table.add_row(
            str(t.index),
            t.name,
            *(str(t.values.get(k, "")) for k in keys),
            str(t.spec.train.epochs),
            trial_resources(t),
        )
    return table


def estimate_worker_hours(trials: list[Trial]) -> tuple[float, int]:
    """Worker-hours of the trials whose config ran before (MLflow), and how many that is."""
    hours, measured = 0.0, 0
    for t in trials:
        tracking = t.spec.tracking
        epoch_s = measured_epoch_seconds(
            resolve_tracking_uri(tracking.uri), tracking.experiment, t.spec.fingerprint()
        )
        if epoch_s is not None:
            hours += epoch_s * t.spec.train.epochs * t.spec.scaling.num_workers / 3600
            measured += 1
    return hours, measured


def worker_time(hours: float) -> str:
    """A worker-time estimate in the unit that shows it: a short sweep's 0.004 worker-hours
    printed as "0.00 worker-hours" read as free."""
    if hours >= 1:
        return f"{hours:.2f} worker-hours"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} worker-minutes"
    return f"{hours * 3600:.0f} worker-seconds"


def plan_summary(sweep: SweepSpec, trials: list[Trial]) -> str:
    hours, measured = estimate_worker_hours(trials)
    lines = [
        f"{len(trials)} trials, {sweep.sweep.max_concurrent_trials} at a time; "
        f"per trial: {trial_resources(trials[0])}, {trial_process(trials[0])}"
    ]
    section = sweep.sweep
    drawn = ", ".join(f"{k} ~ {d.describe()}" for k, d in section.distributions().items())
    if section.search == "random":
        lines.append(
            f"random search: {section.num_samples} points (sample_seed {section.sample_seed}) "
            f"x {section.seeds} seeds; {drawn}"
        )
    elif section.search == "optuna":
        goal = section.goal()
        lines.append(
            f"optuna search: {section.num_samples} trials, each point suggested as its trial "
            f"starts, towards the {goal.mode} final {goal.metric} (seed {section.sample_seed}); "
            f"{drawn}"
        )
    if measured:
        scale = len(trials) / measured
        lines.append(
            f"estimate: {worker_time(hours * scale)} "
            f"(from earlier runs of {measured} of the {len(trials)} trial configs in MLflow)"
        )
    else:
        lines.append("estimate: no earlier run of these configs in MLflow to measure from")
    return "\n".join(lines)
