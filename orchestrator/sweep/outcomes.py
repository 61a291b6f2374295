"""What a sweep did: one outcome per trial from Tune's results, and its tables (the trial list
attached at set-up, the summary attached at the end and printed by `mimray sweep`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from orchestrator.config import Trial

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


def outcomes_of(
    trials: list[Trial], grid: Any, trial_of: Callable[[dict[str, Any]], Trial] | None = None
) -> list[TrialOutcome]:
    """One outcome per trial of the sweep from Tune's results; `trial_of(config)` is the trial
    as Tune's config of it says it ran (its knob values and spec), e.g. an Optuna suggestion."""
    by_index = {}
    for result in grid:
        index = result.config["trial"]
        trial = trial_of(result.config) if trial_of else trials[index]
        metrics = result.metrics or {}
        epochs_wanted = trial.spec.train.epochs
        if result.error:
            status = "ERRORED"
        elif metrics.get("epoch") == epochs_wanted or _stopped_early(result):
            status = "FINISHED"
        else:
            status = "UNFINISHED"  # interrupted (Ctrl-C): the next run resumes it
        by_index[index] = TrialOutcome(
            trial,
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


def as_row(outcome: TrialOutcome) -> dict[str, Any]:
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
