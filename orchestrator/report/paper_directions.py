"""The seeds' headline claims, checked against a sweep's report: does each pair point the
paper's way?

A claim names two arms by knob values: the one the paper finds better (`better`) and the one
it beats (`worse`). Any sweep whose rows contain both arms gets the comparison, the arms
paired where every other knob of the sweep that both arms have is equal (so `latent-gap`
compares gap 4 with gap 0 at each mask ratio). For every evaluation column at the final
checkpoint, both arms' mean ± std over seeds are shown, and the verdict: `agrees` when the
better arm's mean is higher, `disagrees` when not; `apart` when the intervals mean ± std do
not overlap, `overlap` when they do (then the direction is within seed noise), and no such
judgement when an arm has a single seed. A pair agrees
overall when every column agrees, disagrees when none does, and is `mixed` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from orchestrator.report.table import Cell, Column, Report, Row

Wanted = str | float | Callable[[float], bool]


@dataclass(frozen=True)
class Claim:
    name: str
    better: Mapping[str, Wanted]
    worse: Mapping[str, Wanted]
    source: str


def _positive(value: float) -> bool:
    return value > 0


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "EMAE K=4 vs MAE r=0.75, equal epochs",
        better={"method.name": "emae", "method.k": 4.0},
        worse={"method.name": "mae", "method.mask_ratio": 0.75},
        source="Li et al., TPAMI 2024: EMAE's K parallel masks learn more per epoch than MAE",
    ),
    Claim(
        "SBAM vs random masking, ratio 0.75",
        better={"method.name": "sbam", "method.gamma": 0.75},
        worse={"method.name": "mae", "method.mask_ratio": 0.75},
        source="Choi et al., ECCV 2024: masking salient tokens beats random masking",
    ),
    Claim(
        "Latent MIM gap > 0 vs gap 0",
        better={"method.name": "latent_mim", "method.gap": _positive},
        worse={"method.name": "latent_mim", "method.gap": 0.0},
        source="Wei et al., ECCV 2024: a non-contiguous grid (gap > 0) beats contiguous patches",
    ),
)


@dataclass(frozen=True)
class Comparison:
    """One metric of one pair: both arms' cells and the verdict."""

    column: Column
    better: Cell
    worse: Cell

    @property
    def agrees(self) -> bool:
        return self.better.mean > self.worse.mean

    @property
    def apart(self) -> bool | None:
        """The intervals mean ± std do not overlap; None when an arm has one seed (no spread
        to judge the difference against)."""
        if self.better.std is None or self.worse.std is None:
            return None
        return abs(self.better.mean - self.worse.mean) > self.better.std + self.worse.std

    @property
    def spread(self) -> str:
        return {True: "apart", False: "overlap", None: "n=1, no spread"}[self.apart]

    @property
    def verdict(self) -> str:
        return f"{'agrees' if self.agrees else 'disagrees'} ({self.spread})"


@dataclass(frozen=True)
class PairResult:
    claim: Claim
    better: Row
    worse: Row
    comparisons: tuple[Comparison, ...]

    @property
    def verdict(self) -> str:
        if not self.comparisons:
            return "not evaluated"
        agreeing = sum(c.agrees for c in self.comparisons)
        if agreeing == len(self.comparisons):
            return "agrees"
        return "disagrees" if agreeing == 0 else "mixed"


def final_columns(report: Report) -> list[Column]:
    """Each protocol's column at its latest checkpoint epoch (the trained encoder), per split
    it scored on (a comparison never sets a selection-split cell against a val one)."""
    latest: dict[tuple[str, str | None], Column] = {}
    for column in report.columns:
        if column.protocol is None or not column.epoch:
            continue  # the loss, and @e0: the untrained encoder
        key = (column.protocol, column.split)
        if key not in latest or column.epoch > (latest[key].epoch or 0):
            latest[key] = column
    return list(latest.values())


def compare_pairs(report: Report, claims: tuple[Claim, ...] = CLAIMS) -> list[PairResult]:
    """Every claim whose two arms are rows of the report, paired on the other knobs."""
    columns = final_columns(report)
    results = []
    for claim in claims:
        claim_keys = set(claim.better) | set(claim.worse)
        if not claim_keys <= set(report.knob_keys):
            continue
        others = [i for i, key in enumerate(report.knob_keys) if key not in claim_keys]
        for better in _matching(report, claim.better):
            for worse in _matching(report, claim.worse):
                if any(_differ(better.knobs[i], worse.knobs[i]) for i in others):
                    continue
                comparisons = tuple(
                    Comparison(c, better.cells[c.key], worse.cells[c.key])
                    for c in columns
                    if c.key in better.cells and c.key in worse.cells
                )
                results.append(PairResult(claim, better, worse, comparisons))
    return results


def baseline_comparisons(report: Report) -> list[tuple[Row, Comparison]]:
    """Per row and protocol: the trained encoder (final column) against the same encoder
    untrained (`@e0`, the random-init baseline), as a comparison whose better arm is the
    pretrained one."""
    found = []
    for column in final_columns(report):
        untrained = next(
            (
                c
                for c in report.columns
                if c.protocol == column.protocol and c.split == column.split and c.epoch == 0
            ),
            None,
        )
        if untrained is None:
            continue
        for row in report.rows:
            if column.key in row.cells and untrained.key in row.cells:
                comparison = Comparison(column, row.cells[column.key], row.cells[untrained.key])
                found.append((row, comparison))
    return found


def baseline_lines(report: Report) -> list[str]:
    """The pretrained-vs-random-init comparisons as Markdown (none without `@e0` columns)."""
    found = baseline_comparisons(report)
    if not found:
        return []
    lines = [
        "## Pretrained vs random init",
        "",
        "| row | metric | pretrained | random init (@e0) | difference | pretraining |",
        "|---|---|---|---|---|---|",
    ]
    for row, comparison in found:
        difference = (comparison.better.mean - comparison.worse.mean) * 100.0
        verdict = "helps" if comparison.agrees else "does not help"
        lines.append(
            f"| {row.label} | {comparison.column.key} | {_percent(comparison.better)} | "
            f"{_percent(comparison.worse)} | {difference:+.1f} | {verdict} ({comparison.spread}) |"
        )
    lines.append("")
    return lines


def _differ(one: str | None, other: str | None) -> bool:
    """A knob that only one arm's method has (None on the other) does not make them differ:
    SBAM's `delta_r` is no reason not to compare SBAM with MAE."""
    return one is not None and other is not None and one != other


def _matching(report: Report, wanted: Mapping[str, Wanted]) -> list[Row]:
    index = {key: i for i, key in enumerate(report.knob_keys)}
    return [
        row
        for row in report.rows
        if all(_matches(row.knobs[index[key]], want) for key, want in wanted.items())
    ]


def _matches(logged: str | None, wanted: Wanted) -> bool:
    """A knob as MLflow logged it (a string) against a wanted value or predicate."""
    if logged is None:
        return False
    if isinstance(wanted, str):
        return logged == wanted
    try:
        number = float(logged)
    except ValueError:
        return False
    return wanted(number) if callable(wanted) else abs(number - wanted) < 1e-9


def direction_lines(report: Report, pairs: list[PairResult]) -> list[str]:
    """The comparisons as Markdown: one table per pair, metric rows, verdict per row."""
    if not pairs:
        return []
    lines = ["## Paper directions", ""]
    for pair in pairs:
        lines += [
            f"### {pair.claim.name}: {pair.verdict}",
            "",
            f"{pair.claim.source}. Better arm `{pair.better.label}` ({len(pair.better.trials)} "
            f"seeds) vs `{pair.worse.label}` ({len(pair.worse.trials)} seeds).",
            "",
            "| metric | paper's better arm | other arm | difference | verdict |",
            "|---|---|---|---|---|",
        ]
        for comparison in pair.comparisons:
            difference = (comparison.better.mean - comparison.worse.mean) * 100.0
            lines.append(
                f"| {comparison.column.key} | {_percent(comparison.better)} | "
                f"{_percent(comparison.worse)} | {difference:+.1f} | {comparison.verdict} |"
            )
        if not pair.comparisons:
            lines.append("| — | — | — | — | no evaluation recorded for both arms |")
        lines.append("")
    lines.append(
        "Verdict per metric: `agrees` when the paper's better arm has the higher mean top-1; "
        "`apart` when the intervals mean ± std do not overlap, `overlap` when the difference "
        "is within seed noise (`n=1, no spread`: one seed, no judgement of noise). "
        "A pair agrees when every metric does."
    )
    lines.append("")
    return lines


def _percent(cell: Cell) -> str:
    spread = "(n=1)" if cell.std is None else f"± {cell.std * 100:.1f}"
    return f"{cell.mean * 100:.1f} {spread}"
