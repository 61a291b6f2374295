"""`mimray report SWEEP`: the sweep's ablation table from MLflow, as Markdown, HTML and text.

Registered (lazily, by name) on the `mimray` group at the end of `orchestrator/cli/main.py`;
it imports only from `orchestrator/cli/common.py`.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import click

from orchestrator.cli.common import tracking_option


@click.command()
@click.argument("sweep")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for report.md and report.html (default: ./mimray-reports/SWEEP/).",
)
@click.option("--experiment", help="MLflow experiment of the sweep (default: search them all).")
@tracking_option
def report(sweep: str, out: Path | None, experiment: str | None, tracking_uri: str | None) -> None:
    """Ablation table of SWEEP: mean ± std over seeds of final loss and every evaluation.

    Writes report.md and report.html (plots inline) and attaches both to the sweep's parent
    run in MLflow under report/."""
    from orchestrator.cli.common import console, fail
    from orchestrator.report.paper_directions import compare_pairs
    from orchestrator.report.render import report_paths, rich_table, write_report
    from orchestrator.report.table import ReportError, attach_report, build_report
    from orchestrator.tracking import resolve_tracking_uri
    from orchestrator.tracking.artifacts import ArtifactUploader
    from orchestrator.tracking.server_http import usable

    uri = resolve_tracking_uri(tracking_uri)
    server = usable(uri)
    # The reads need no MLflow (`sql_reads`, `rest_reads`); the upload at the end does, except
    # through a server's artifact proxy (plain HTTP, `attach_files`): otherwise a child process
    # imports MLflow and opens the store on the other core while this one works. Opening a
    # store through MLflow creates it where there is none, so the child starts before the
    # reads only for an SQLite file already there; otherwise once the reads found the sweep.
    # Beside a server's reads it would take CPU the server needs: for a server it starts after
    # them, and only where the sweep's artifacts are not proxied.
    uploader = ArtifactUploader(uri) if _store_is_there(uri) and not server else None
    if server:
        # Reads from a server wait on it: importing matplotlib for the plots overlaps that.
        _import_meanwhile("matplotlib.figure")
    try:
        built = build_report(uri, experiment, sweep)
    except ReportError as err:
        if uploader is not None:
            uploader.close()
        fail(str(err))
    if uploader is None and not (server and _is_proxied(uri, built.parent_run_id)):
        uploader = ArtifactUploader(uri)
    paths = write_report(built, report_paths(out, sweep))
    try:
        logged = attach_report(built, paths, uploader)
    except RuntimeError as err:
        fail(f"the report was written to {paths[0].parent} but not attached to MLflow: {err}")
    console.print(rich_table(built))
    for pair in compare_pairs(built):
        measured = "; ".join(f"{c.column.key} {c.verdict}" for c in pair.comparisons)
        console.print(
            f"paper direction {pair.claim.name!r} ({pair.better.label} vs {pair.worse.label}): "
            f"{pair.verdict}" + (f" [{measured}]" if measured else ""),
            markup=False,
        )
    if not built.has_evals:
        console.print(
            "No evaluation runs recorded for this sweep yet: the table shows pretraining loss only."
        )
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
    console.print(f"attached to MLflow parent run {built.parent_run_id}: {', '.join(logged)}")


def _store_is_there(uri: str) -> bool:
    """A tracking server, or an SQLite store whose file exists (and holds something)."""
    if uri.startswith(("http://", "https://")):
        return True
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        return path.is_file() and path.stat().st_size > 0
    return False


def _is_proxied(uri: str, run_id: str) -> bool:
    """Whether the server proxies the run's artifacts (no: MLflow's client uploads them)."""
    from orchestrator.tracking.artifacts import proxied_folder

    try:
        return proxied_folder(uri, run_id) is not None
    except RuntimeError:
        return False  # the upload through MLflow's client will say what is wrong


def _import_meanwhile(*modules: str) -> None:
    """Import `modules` on a background thread (a later import of one waits for it)."""

    def load() -> None:
        for name in modules:
            importlib.import_module(name)

    threading.Thread(target=load, daemon=True).start()
