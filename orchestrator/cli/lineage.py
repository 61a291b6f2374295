"""`mimray lineage TARGET`: where a run, checkpoint or sweep came from and what evaluated it.

Imports neither the spec nor torch: it reads MLflow only.
"""

from __future__ import annotations

import json

import click

from orchestrator.cli.common import console, fail, tracking_option
from orchestrator.errors import ConfigError
from orchestrator.tracking import resolve_tracking_uri


@click.command()
@click.argument("target")
@tracking_option
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
def lineage(target: str, tracking_uri: str | None, as_json: bool) -> None:
    """Show TARGET's lineage: sweep -> trial runs -> checkpoints -> evaluations.

    TARGET is a run id (sweep, trial, pretrain or eval run), a checkpoint model id (m-...),
    a run name or a sweep name.
    """
    from orchestrator.report.lineage import lineage as build_lineage
    from orchestrator.report.lineage import lineage_tree

    try:
        tree = build_lineage(resolve_tracking_uri(tracking_uri), target)
    except ConfigError as err:
        fail(str(err))
    if as_json:
        click.echo(json.dumps(tree, indent=2))
    else:
        console.print(lineage_tree(tree))
