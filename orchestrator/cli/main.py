"""The `mimray` command line.

Config errors print one line (`mimray: error: KEY: what is wrong; allowed ...`) and exit 2
before any Ray resource is used.
"""

from __future__ import annotations

import os
import sys
import time

import click
from rich.table import Table

from orchestrator import __version__
from orchestrator.cli.common import LazyGroup, console, fail, root_cause, set_option

# The spec (and through it torch), Ray and MLflow are imported inside the commands that need
# them: `mimray --help` does not pay seconds of imports before it prints a line.


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mimray")
def main() -> None:
    """mimray: masked-image-modeling pretraining ablations on Ray, tracked in MLflow."""
    from orchestrator.versions import version_warning

    warning = version_warning()
    if warning:
        click.echo(warning, err=True)


@main.command()
@click.argument("config")
@set_option
@click.option("--name", help="Run name; re-running a name resumes it. Default: from the config.")
@click.option("--address", help="Ray cluster address (default: RAY_ADDRESS, else local Ray).")
@click.option("--point", type=int, help="For a sweep spec: run only its trial number POINT.")
def pretrain(
    config: str,
    overrides: tuple[str, ...],
    name: str | None,
    address: str | None,
    point: int | None,
) -> None:
    """Pretrain a ViT with CONFIG (a YAML file or a preset name)."""
    _pretrain(config, overrides, name, address, point)


@main.command()
@set_option
@click.option("--name", default="demo", show_default=True, help="Run name (re-running resumes).")
def demo(overrides: tuple[str, ...], name: str) -> None:
    """Pretrain a tiny MAE on built-in shapes with 2 local Ray Train workers (a few minutes)."""
    _pretrain("demo", overrides, name, None)


def _pretrain(
    config: str,
    overrides: tuple[str, ...],
    name: str | None,
    address: str | None,
    point: int | None = None,
) -> None:
    from orchestrator.config import ConfigError, check_name, load_spec

    try:
        if name is not None:
            check_name(name, "--name")
        spec = load_spec(config, overrides, point=point)
    except ConfigError as err:
        fail(str(err))
    from orchestrator.console_log import quiet_libraries
    from orchestrator.pretrain.launch import run_pretrain  # heavy imports only after validation

    quiet_libraries()  # mimray's lines and errors on the console; the rest to a log file

    started = time.perf_counter()
    try:
        result = run_pretrain(spec, name=name, address=address)
    except ValueError as err:  # e.g. a batch larger than the dataset, or unreadable data
        fail(str(err))
    except Exception as err:  # noqa: BLE001 - training failed inside Ray: say why in one line
        fail(f"training failed: {root_cause(err)}", code=1)
    wall = time.perf_counter() - started
    table = Table(title=f"mimray run {result.name!r}", show_header=False)
    rows = [
        ("status", "resumed" if result.resumed else "new run"),
        ("epochs done", str(result.epochs_done)),
        ("final loss", f"{result.final_loss:.4f}" if result.final_loss is not None else "-"),
        ("images/s", f"{result.images_per_s:.0f}" if result.images_per_s else "-"),
        ("wall time", f"{wall:.0f} s"),
        ("MLflow run id", result.run_id),
        ("tracking URI", result.tracking_uri),
        ("last checkpoint", result.checkpoint_uri or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    console.print(
        f"\\[mimray] Evaluate it: [bold]mimray eval {result.name} --protocol knn[/bold] "
        "(or linear, finetune); its lineage: "
        f"[bold]mimray lineage {result.name}[/bold]"
    )
    console.print(
        "\\[mimray] Browse it: [bold]mimray ui[/bold] (MLflow UI on http://127.0.0.1:5000)"
        if result.tracking_uri.startswith("sqlite:")
        else f"\\[mimray] Browse it in MLflow at {result.tracking_uri}"
    )


@main.command()
@click.argument("config")
@set_option
@click.option("--dry-run", is_flag=True, help="Print the trials and resources; start nothing.")
@click.option("--name", help="Sweep name (default: the spec's); re-running a name restores it.")
@click.option("--address", help="Ray cluster address (default: RAY_ADDRESS, else local Ray).")
def sweep(
    config: str, overrides: tuple[str, ...], dry_run: bool, name: str | None, address: str | None
) -> None:
    """Run the ablation grid of CONFIG (a sweep YAML or preset) on Ray Tune."""
    from orchestrator.config import ConfigError, load_sweep

    try:
        # The sweep name is part of every trial's name, so it is set before expansion.
        sweep_spec, trials = load_sweep(config, [*overrides, *([f"name={name}"] if name else [])])
    except ConfigError as err:
        fail(str(err))
    from orchestrator.sweep.plan import plan_summary, plan_table

    console.print(plan_table(sweep_spec, trials))
    console.print(plan_summary(sweep_spec, trials))
    if dry_run:
        return
    from orchestrator.console_log import quiet_libraries

    quiet_libraries()  # before Ray, Tune and MLflow are imported: their handlers get gated
    from orchestrator.sweep.runner import run_sweep, summary_table

    result = run_sweep(sweep_spec, trials, address=address)
    console.print(summary_table(result))
    console.print(
        f"sweep {result.name!r}: {result.wall_s:.0f} s wall; MLflow parent run "
        f"{result.parent_run_id} (summary.md and summary.json attached)"
    )
    for outcome in result.outcomes:
        if outcome.status == "ERRORED":  # retries (train.max_failures) used up: say why
            click.echo(f"mimray: trial {outcome.trial.name} failed: {outcome.error}")
    left = sum(o.status != "FINISHED" for o in result.outcomes)
    if left:
        console.print(f"{left} trials did not finish; re-run the same command to resume them")
        sys.exit(1)


@main.command()
@click.option("--port", default=5000, show_default=True, type=int)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Bind address; keep 127.0.0.1 unless the network is trusted.",
)
def ui(port: int, host: str) -> None:
    """Serve the MLflow UI for this folder's store (./mimray-runs) or MLFLOW_TRACKING_URI."""
    from orchestrator.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri()
    if uri.startswith("sqlite:///") and not os.path.exists(uri.removeprefix("sqlite:///")):
        fail(f"no MLflow store at {uri}; run `mimray demo` or `mimray pretrain` here first")
    # One worker and no job runner: starts in seconds with ~0.5 GB instead of ~3 GB.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    console.print(f"MLflow UI for {uri} on http://{host}:{port} (Ctrl-C stops it)")
    from orchestrator.tracking.ui_links import experiment_link, training_experiments

    # MLflow opens experiments in its GenAI layout unless the link asks for the training one.
    base = f"http://{host}:{port}" if port else ""  # port 0: relative to the URL it binds
    for experiment_id, experiment in training_experiments(uri)[:20]:
        console.print(f"  {experiment}: {experiment_link(base, experiment_id)}", soft_wrap=True)
    sys.stdout.flush()
    # Become the server, so stopping this process stops the UI (no orphaned server).
    os.execve(sys.executable, command, env)


@main.command()
def methods() -> None:
    """List the registered pretraining methods and their knobs with defaults."""
    from workloads.methods import method_card, method_names  # the cards: no torch

    table = Table("method", "knob", "default", "description")
    for name in method_names():
        method = method_card(name)
        table.add_row(f"[bold]{name}[/bold]", "", "", method.summary)
        for knob, info in method.knobs.model_fields.items():
            if knob != "name":
                table.add_row("", f"method.{knob}", repr(info.default), info.description or "")
    console.print(table)


@main.command()
def presets() -> None:
    """List the built-in spec presets (usable wherever a CONFIG path is)."""
    from orchestrator.config import ConfigError, load_sweep, preset_names, read_spec_source

    table = Table("preset", "kind", "runs", "description")
    for name in preset_names():
        if "sweep" not in read_spec_source(name):
            table.add_row(name, "run", "1", "single pretrain run")
            continue
        try:
            sweep, trials = load_sweep(name)
        except ConfigError as err:
            table.add_row(name, "sweep", "?", f"invalid: {err}")
            continue
        table.add_row(name, "sweep", str(len(trials)), sweep.description)
    console.print(table)


# Registered by name and one-line help; their modules are imported when they run.
LAZY_COMMANDS = {
    "data": (
        "orchestrator.cli.data:data",
        "Datasets in object storage: push images as Parquet shards, inspect what is there.",
    ),
    "submit": (
        "orchestrator.cli.jobs:submit",
        "Run a mimray COMMAND on a Ray cluster as a job: mimray submit -- sweep emae-k",
    ),
    "jobs": ("orchestrator.cli.jobs:jobs", "Jobs on a Ray cluster: list, status, logs, stop."),
    "report": (
        "orchestrator.cli.report:report",
        "Ablation table of SWEEP: mean ± std over seeds of final loss and every evaluation.",
    ),
    "eval": (
        "orchestrator.cli.evaluate:evaluate",
        "Evaluate TARGET's checkpoints downstream: kNN, linear probe or fine-tune.",
    ),
    "lineage": (
        "orchestrator.cli.lineage:lineage",
        "Show TARGET's lineage: sweep -> trial runs -> checkpoints -> evaluations.",
    ),
    "promote": (
        "orchestrator.cli.promote:promote",
        "Register TARGET's best checkpoint as a model version with an alias (models:/NAME@ALIAS).",
    ),
    "export": (
        "orchestrator.cli.export:export",
        "Write MODEL's pretrained encoder for another library, and print how to load it.",
    ),
}
for _name, (_target, _short_help) in LAZY_COMMANDS.items():
    main.add_lazy_command(_name, _target, _short_help)

if __name__ == "__main__":
    main()
