"""What a report holds: cells (the seeds' values of one metric), columns, trials, rows and
the report itself, as `table.build_report` reads them from MLflow and `render` shows them."""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Cell:
    """One table cell: the values of the seeds of a grid point that recorded this metric."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @functools.cached_property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1) over seeds; None for a single seed. Kept once
        computed: `statistics.stdev` is exact (fractions) and each rendering asks again."""
        return statistics.stdev(self.values) if self.n >= 2 else None


@dataclass(frozen=True)
class Column:
    key: str  # "loss" or "{protocol}@e{epoch}"
    metric: str  # the MLflow metric behind it
    higher_is_better: bool
    protocol: str | None = None
    epoch: int | None = None
    split: str | None = None  # what an evaluation scored on: "val" or "selection"


@dataclass(frozen=True)
class TrialRecord:
    run_id: str
    name: str
    index: int
    seed: str | None
    knobs: tuple[str | None, ...]  # the trial's value of each knob, as logged (params are str)
    status: str
    loss_curve: tuple[tuple[int, float], ...]  # (epoch, epoch/loss)


@dataclass
class Row:
    knobs: tuple[str | None, ...]
    label: str
    trials: list[TrialRecord]
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Report:
    sweep: str
    experiment: str
    tracking_uri: str
    parent_run_id: str
    knob_keys: list[str]
    columns: list[Column]
    rows: list[Row]
    trials: list[TrialRecord]
    eval_runs: int  # evaluation runs that fed the table

    @property
    def has_evals(self) -> bool:
        return any(c.protocol for c in self.columns)

    def best_rows(self, column: Column) -> set[int]:
        """Indices of the rows with the best mean in `column` (ties all win).

        Nothing is best with fewer than two rows to compare."""
        means = {
            i: row.cells[column.key].mean
            for i, row in enumerate(self.rows)
            if column.key in row.cells
        }
        if len(means) < 2:
            return set()
        best = max(means.values()) if column.higher_is_better else min(means.values())
        return {i for i, mean in means.items() if mean == best}
