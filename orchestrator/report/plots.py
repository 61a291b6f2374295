"""The report page's plots: top-1 and final loss against the swept knob, and every trial's
loss curve, drawn with matplotlib's object API (no pyplot state) into inline PNGs."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.report.table import Column, Report, short_keys

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_LEGEND_TRIALS = 24
MAX_TICK_LABELS = 40


def png_base64(draw: Callable[[Figure], bool]) -> str | None:
    # A Figure without pyplot renders through Agg and touches no global backend state.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    if not draw(fig):
        return None
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _x_axis(report: Report) -> tuple[list[float], list[str] | None, str]:
    """Numeric x for one numeric knob; otherwise one position per row, labelled."""
    if len(report.knob_keys) == 1:
        try:
            return [float(row.knobs[0]) for row in report.rows], None, report.knob_keys[0]
        except (TypeError, ValueError):
            pass
    # Values only under the ticks (the axis title names the knobs): full labels overlap.
    labels = [" ".join(v for v in row.knobs if v is not None) or "base" for row in report.rows]
    return list(range(len(report.rows))), labels, ", ".join(short_keys(report.knob_keys)) or "grid"


def plot_metric_vs_knob(report: Report, fig: Figure) -> bool:
    """Top-1 of each protocol (its last evaluated epoch) and final loss against the knob."""
    x, labels, xlabel = _x_axis(report)
    last: dict[str, Column] = {}
    for column in report.columns:
        if column.protocol:
            last[column.protocol] = column  # columns are sorted by epoch within a protocol
    panels = ([("top-1 (%)", list(last.values()), 100.0)] if last else []) + [
        ("final pretrain loss", [report.columns[0]], 1.0)
    ]
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    drew = False
    for ax, (ylabel, columns, scale) in zip(axes, panels, strict=True):
        for column in columns:
            points = [
                (xi, row.cells[column.key])
                for xi, row in zip(x, report.rows, strict=True)
                if column.key in row.cells
            ]
            if not points:
                continue
            drew = True
            ax.errorbar(
                [p[0] for p in points],
                [p[1].mean * scale for p in points],
                yerr=[(p[1].std or 0.0) * scale for p in points],
                marker="o",
                capsize=4,
                label=column.key,
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if labels is not None:
            # Every row's label while they fit; beyond MAX_TICK_LABELS every n-th (hundreds of
            # rotated labels overlap into a bar and cost ~1 s of text layout).
            every = -(-len(labels) // MAX_TICK_LABELS)
            ax.set_xticks(x[::every], labels[::every], rotation=20, ha="right")
        else:  # ticks at the swept values only: K=2.25 was never run
            ax.set_xticks(sorted(set(x)))
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f"{report.sweep}: mean ± std over seeds")
    return drew


def plot_loss_curves(report: Report, fig: Figure) -> bool:
    """`epoch/loss` of every trial; one colour per grid point, one line style per seed."""
    from matplotlib.ticker import MaxNLocator

    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    legend = len(report.trials) <= MAX_LEGEND_TRIALS
    # Without a legend, the curves of one colour and style are one line broken by NaN: the
    # same picture, drawn as ~40 lines instead of one per trial (1,000 lines cost ~1 s).
    batched: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    drew = False
    for i, row in enumerate(report.rows):
        for j, trial in enumerate(row.trials):
            if not trial.loss_curve:
                continue
            drew = True
            epochs, losses = zip(*trial.loss_curve, strict=True)
            look = (f"C{i % 10}", styles[j % len(styles)])
            if not legend:
                xs, ys = batched.setdefault(look, ([], []))
                xs.extend([*epochs, float("nan")])
                ys.extend([*losses, float("nan")])
                continue
            ax.plot(
                epochs,
                losses,
                color=look[0],
                linestyle=look[1],
                marker=".",
                label=f"{row.label} (seed {trial.seed})",
            )
    for (color, style), (xs, ys) in batched.items():
        ax.plot(xs, ys, color=color, linestyle=style, marker=".")
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch/loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    # A legend of hundreds of trials is unreadable, squeezes the axes to nothing and cost
    # seconds to lay out (5 s of CPU at 1,000 trials): the table below the plots names them.
    if drew and legend:
        ax.legend(fontsize="small", ncol=2)
    return drew
