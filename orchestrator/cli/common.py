"""What every `mimray` command module shares: the console, one-line errors, `--set`.

Kept apart from main.py so command modules never import main.py back: under
`python -m orchestrator.cli.main` that would load the CLI a second time, half-initialised.
"""

from __future__ import annotations

import importlib
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
    """One line that says why a run failed, from the exception objects Ray hands over: a
    worker group's failures by rank (`WorkerGroupError.worker_failures`), a controller's
    (`ControllerError.controller_failure`), a task's or actor's own exception
    (`RayTaskError.cause`), each unwrapped to the error the user's code raised."""
    rank, cause = _innermost(err)
    first = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    where = f"rank {rank}: " if rank is not None else ""
    return f"{where}{type(cause).__name__}: {first}"[:500] if first else type(cause).__name__


def _innermost(err: BaseException, rank: int | None = None) -> tuple[int | None, BaseException]:
    """(the failing worker's rank when known, the innermost exception)."""
    from ray.exceptions import RayTaskError
    from ray.train import ControllerError, WorkerGroupError

    if isinstance(err, WorkerGroupError) and err.worker_failures:
        first = min(err.worker_failures)
        return _innermost(err.worker_failures[first], first)
    if isinstance(err, ControllerError):
        return _innermost(err.controller_failure, rank)
    if isinstance(err, RayTaskError) and err.cause is not None and err.cause is not err:
        return _innermost(err.cause, rank)
    return rank, err


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


class LazyGroup(click.Group):
    """A command group whose commands from other modules are imported only when one runs.

    `mimray --help` lists them from their one-line help, so it starts without importing
    torch, Ray or MLflow (seconds of imports before it printed a line). The one-line help is
    given where the command is registered; a test checks it matches the command's own."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - click's signature
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[str, str]] = {}  # name -> ("module:attribute", short help)

    def add_lazy_command(self, name: str, target: str, short_help: str) -> None:
        self.lazy[name] = (target, short_help)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, attribute = self.lazy[name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.lazy and name not in self.commands:
                rows.append((name, click.utils.make_default_short_help(self.lazy[name][1], limit)))
                continue
            command = self.commands[name]
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)
