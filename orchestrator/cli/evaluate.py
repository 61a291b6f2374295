"""`mimray eval` and `mimray lineage`: downstream numbers for checkpoints, and where they came
from."""

from __future__ import annotations

import click
from rich.table import Table

from orchestrator.cli.common import console, fail, root_cause, set_option, tracking_option
from orchestrator.config import PROTOCOLS, ConfigError, load_eval_spec
from orchestrator.tracking import resolve_tracking_uri


@click.command("eval")
@click.argument("target")
@click.option(
    "--protocol",
    "protocols",
    multiple=True,
    required=True,
    metavar="|".join(PROTOCOLS),
    help="Evaluation protocol (repeatable: --protocol knn --protocol linear).",
)
@set_option
@tracking_option
@click.option("--address", help="Ray cluster address (default: RAY_ADDRESS, else local Ray).")
def evaluate(
    target: str,
    protocols: tuple[str, ...],
    overrides: tuple[str, ...],
    tracking_uri: str | None,
    address: str | None,
) -> None:
    """Evaluate TARGET's checkpoints downstream: kNN, linear probe or fine-tune.

    TARGET is a pretrain run id or name (its last checkpoint), a checkpoint model id (m-...),
    a registered version (models:/NAME@ALIAS, from `mimray promote`) or a sweep name (each
    trial's last checkpoint). Each evaluation is an MLflow run nested under
    the pretrain run; evaluating the same checkpoint with the same settings reuses it.
    """
    uri = resolve_tracking_uri(tracking_uri)
    try:
        specs = [load_eval_spec(protocol, overrides) for protocol in protocols]
        # Deferred for start-up speed: MLflow is imported only once the specs are valid.
        from orchestrator.evaluation.checkpoints import resolve_checkpoints

        checkpoints = resolve_checkpoints(uri, target)
    except ConfigError as err:
        fail(str(err))
    from orchestrator.console_log import quiet_libraries
    from orchestrator.evaluation.runs import evaluate_checkpoint, print_result  # torch, Ray: now

    quiet_libraries()  # mimray's lines and errors on the console; the rest to a log file
    table = Table("run", "epoch", "protocol", "top-1", "MLflow eval run", title="evaluations")
    for checkpoint in checkpoints:
        for spec in specs:
            try:
                result = evaluate_checkpoint(checkpoint, spec, uri, address)
            except ValueError as err:
                fail(str(err))
            except Exception as err:  # noqa: BLE001 - failed inside Ray: say why in one line
                fail(f"evaluation failed: {root_cause(err)}", code=1)
            print_result(result)
            top1 = result.metrics.get(f"{spec.protocol}/top1")
            table.add_row(
                checkpoint.run_name,
                str(checkpoint.epoch),
                spec.protocol,
                f"{top1:.4f}" if top1 is not None else "-",
                result.run_id + (" (reused)" if result.reused else ""),
            )
    console.print(table)
