"""What every `mimray` command module shares: the console, one-line errors, `--set`.

Kept apart from cli.py so command modules never import cli.py back: under
`python -m orchestrator.cli` that would load the CLI a second time, half-initialised.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

# Tables of trials are wide: do not squeeze them to 80 columns when output is not a terminal.
console = Console(width=None if sys.stdout.isatty() else 160)
USAGE_ERROR = 2
RUNTIME_ERROR = 1


def fail(message: str, code: int = USAGE_ERROR) -> None:
    click.echo(f"mimray: error: {message}", err=True)
    sys.exit(code)


def root_cause(err: BaseException) -> str:
    """The line that says why, out of a Ray error that wraps a worker's traceback."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if "Error:" in line and not line.startswith("File ")]
    return (raised[-1] if raised else lines[-1] if lines else type(err).__name__)[:500]


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a spec value by dotted key, e.g. --set train.epochs=3 (repeatable).",
)

tracking_option = click.option(
    "--tracking-uri",
    help="MLflow store (default: MLFLOW_TRACKING_URI, else ./mimray-runs/mlflow.db).",
)
