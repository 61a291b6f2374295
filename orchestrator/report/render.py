"""Renderings of a sweep `Report`: Markdown, a self-contained HTML page, a rich table.

The HTML page carries everything inline (CSS, plots as base64 PNG) so it can be attached to an
MLflow run, mailed or opened offline, and shows the same table as the Markdown.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from rich.table import Table

from orchestrator.report.paper_directions import (
    baseline_comparisons,
    baseline_lines,
    compare_pairs,
    direction_lines,
)
from orchestrator.report.plots import plot_loss_curves, plot_metric_vs_knob, png_base64
from orchestrator.report.table import Cell, Column, Report, short_keys

MISSING = "—"


def format_cell(column: Column, cell: Cell | None) -> str:
    """Top-1 in percent with one decimal, loss with four; `± std` over seeds or `(n=1)`."""
    if cell is None:
        return MISSING
    scale, digits = (100.0, 1) if column.protocol else (1.0, 4)
    text = f"{cell.mean * scale:.{digits}f}"
    if cell.std is None:
        return f"{text} (n=1)"
    return f"{text} ± {cell.std * scale:.{digits}f}"


def table_cells(report: Report) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Header and rows of the table as (text, is_best) pairs, shared by every renderer."""
    header = [*short_keys(report.knob_keys), "seeds", *(c.key for c in report.columns)]
    best = {c.key: report.best_rows(c) for c in report.columns}
    body = []
    for i, row in enumerate(report.rows):
        knobs = [(MISSING if v is None else v, False) for v in row.knobs]
        cells = [(format_cell(c, row.cells.get(c.key)), i in best[c.key]) for c in report.columns]
        body.append([*knobs, (str(len(row.trials)), False), *cells])
    return header, body


def notes(report: Report) -> list[str]:
    """What the numbers mean, and what is missing."""
    lines = [
        "Cells: mean ± sample std (ddof=1) over seeds; `(n=1)`: one seed, no spread.",
        "`loss`: final pretraining `epoch/loss` (lower is better). "
        "`PROTOCOL@eN`: top-1 in % of that evaluation of the epoch-N checkpoint, scored on "
        "the held-out val split (higher is better).",
        f"Bold: best in its column. {MISSING}: not recorded.",
    ]
    if any(c.split == "selection" for c in report.columns):
        lines.append(
            "`PROTOCOL@eN/selection`: scored on the selection split instead (fitted on the "
            "first 80% of train, scored on its last 20%, val never read): for choosing "
            "settings, not for reporting."
        )
    if any(c.epoch == 0 for c in report.columns):
        lines.append(
            "`PROTOCOL@e0`: the random-init baseline, i.e. the untrained encoder of the same "
            "spec and seed (the weights the run started from, recorded as its epoch-0 "
            "checkpoint and evaluated like the others)."
        )
    if not report.has_evals:
        lines.append(
            "No evaluation runs recorded for this sweep yet: the table shows pretraining loss "
            "only. Evaluate its checkpoints and run `mimray report` again."
        )
    return lines


def shown_uri(tracking_uri: str) -> str:
    """The tracking URI as a report shows it: a local SQLite store relative to the folder the
    report was made in (or by its last two path parts), so a report kept in a repository or
    sent to a colleague carries no path of the machine that made it."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or not os.path.isabs(tracking_uri[len(prefix) :]):
        return tracking_uri
    path = tracking_uri[len(prefix) :]
    relative = os.path.relpath(path)
    if not relative.startswith(".."):
        return prefix + relative
    return prefix + ".../" + "/".join(path.split("/")[-2:])


def render_markdown(report: Report) -> str:
    header, body = table_cells(report)
    lines = [
        f"# Sweep `{report.sweep}`: ablation report",
        "",
        f"Experiment `{report.experiment}`, parent run `{report.parent_run_id}`, "
        f"{len(report.trials)} trials, {report.eval_runs} evaluation runs "
        f"(tracking URI `{shown_uri(report.tracking_uri)}`).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in body:
        lines.append("| " + " | ".join(f"**{t}**" if bold else t for t, bold in row) + " |")
    lines += ["", *(f"- {note}" for note in notes(report)), ""]
    lines += baseline_lines(report)
    lines += direction_lines(report, compare_pairs(report))
    return "\n".join(lines)


def rich_table(report: Report) -> Table:
    header, body = table_cells(report)
    table = Table(*header, title=f"sweep {report.sweep!r} ({report.experiment})")
    for row in body:
        table.add_row(*(f"[bold green]{t}[/bold green]" if bold else t for t, bold in row))
    return table


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ccc; padding: 0.35em 0.8em; text-align: right; }
th { border-bottom: 2px solid #333; } td.knob, th.knob { text-align: left; }
td.best { font-weight: bold; background: #eef7ee; }
.meta, .notes { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def render_html(report: Report) -> str:
    header, body = table_cells(report)
    knobs = len(report.knob_keys)
    esc = html.escape
    head = "".join(
        f'<th class="{"knob" if j < knobs else "value"}">{esc(h)}</th>'
        for j, h in enumerate(header)
    )
    rows = []
    for row in body:
        cells = []
        for j, (text, bold) in enumerate(row):
            css = "knob" if j < knobs else "best" if bold else "value"
            inner = f"<strong>{esc(text)}</strong>" if bold else esc(text)
            cells.append(f'<td class="{css}">{inner}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    plots = [
        (title, png_base64(draw))
        for title, draw in (
            ("Metric vs knob", lambda fig: plot_metric_vs_knob(report, fig)),
            ("Pretraining loss per trial", lambda fig: plot_loss_curves(report, fig)),
        )
    ]
    figures = "".join(
        f'<h2>{esc(title)}</h2><img alt="{esc(title)}" src="data:image/png;base64,{data}">'
        for title, data in plots
        if data
    )
    trials = "".join(
        f"<tr><td class='knob'>{esc(t.name)}</td><td class='knob'><code>{esc(t.run_id)}</code>"
        f"</td><td>{esc(t.seed or MISSING)}</td><td>{esc(t.status)}</td>"
        f"<td>{f'{t.loss_curve[-1][1]:.4f}' if t.loss_curve else MISSING}</td></tr>"
        for t in report.trials
    )
    note_items = "".join(f"<li>{esc(n).replace('`', '')}</li>" for n in notes(report))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>mimray report: {esc(report.sweep)}</title><style>{_CSS}</style></head>
<body>
<h1>Sweep <code>{esc(report.sweep)}</code>: ablation report</h1>
<p class="meta">Experiment <code>{esc(report.experiment)}</code>, parent run
<code>{esc(report.parent_run_id)}</code>, {len(report.trials)} trials,
{report.eval_runs} evaluation runs; tracking URI
<code>{esc(shown_uri(report.tracking_uri))}</code>.</p>
<table id="ablation"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
<ul class="notes">{note_items}</ul>
{_baseline_html(report)}
{_directions_html(report)}
{figures}
<h2>Trials</h2>
<table id="trials"><thead><tr><th class="knob">trial</th><th class="knob">run id</th>
<th>seed</th><th>status</th><th>final loss</th></tr></thead><tbody>{trials}</tbody></table>
</body></html>
"""


def _baseline_html(report: Report) -> str:
    """Each row's trained encoder against its random init (`@e0`), one line per metric."""
    esc = html.escape
    rows = "".join(
        f"<tr><td class='knob'>{esc(row.label)}</td><td class='knob'>{esc(c.column.key)}</td>"
        f"<td>{esc(format_cell(c.column, c.better))}</td>"
        f"<td>{esc(format_cell(c.column, c.worse))}</td>"
        f"<td>{(c.better.mean - c.worse.mean) * 100:+.1f}</td>"
        f"<td class='knob'>{'helps' if c.agrees else 'does not help'} ({c.spread})</td></tr>"
        for row, c in baseline_comparisons(report)
    )
    if not rows:
        return ""
    return (
        "<h2>Pretrained vs random init</h2><table id='baseline'><thead><tr>"
        "<th class='knob'>row</th><th class='knob'>metric</th><th>pretrained</th>"
        "<th>random init (@e0)</th><th>difference</th><th class='knob'>pretraining</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _directions_html(report: Report) -> str:
    """The paper-direction pairs (see `paper_directions`) as one table per pair."""
    esc = html.escape
    parts = []
    for pair in compare_pairs(report):
        rows = "".join(
            f"<tr><td class='knob'>{esc(c.column.key)}</td>"
            f"<td>{esc(format_cell(c.column, c.better))}</td>"
            f"<td>{esc(format_cell(c.column, c.worse))}</td>"
            f"<td>{(c.better.mean - c.worse.mean) * 100:+.1f}</td>"
            f"<td class='knob'>{esc(c.verdict)}</td></tr>"
            for c in pair.comparisons
        )
        parts.append(
            f"<h3>{esc(pair.claim.name)}: {esc(pair.verdict)}</h3>"
            f"<p class='meta'>{esc(pair.claim.source)}. Better arm "
            f"<code>{esc(pair.better.label)}</code> vs <code>{esc(pair.worse.label)}</code>."
            "</p><table class='directions'><thead><tr><th class='knob'>metric</th>"
            "<th>paper's better arm</th><th>other arm</th><th>difference</th>"
            f"<th class='knob'>verdict</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return f"<h2>Paper directions</h2>{''.join(parts)}" if parts else ""


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """report.md and report.html under `out_dir` (created); their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "report.md"
    page = out_dir / "report.html"
    markdown.write_text(render_markdown(report), encoding="utf-8")
    page.write_text(render_html(report), encoding="utf-8")
    return [markdown, page]


def report_paths(out: Path | None, sweep: str) -> Path:
    return out if out is not None else Path.cwd() / "mimray-reports" / sweep
