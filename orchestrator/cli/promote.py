"""`mimray promote TARGET --metric knn/top1`: the best checkpoint of a run or sweep, registered
as a model version with an alias (`models:/NAME@best-knn`), which `mimray eval` takes as a
target.

Registered (lazily, by name) on the `mimray` group at the end of `orchestrator/cli/main.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from orchestrator.cli.common import console, fail, tracking_option

if TYPE_CHECKING:
    from orchestrator.evaluation.checkpoints import Checkpoint

MODES = ("max", "min")


@click.command()
@click.argument("target")
@click.option(
    "--metric",
    required=True,
    help="What 'best' means: a metric on the checkpoints, e.g. knn/top1 (from `mimray eval`).",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    help="Whether larger or smaller is better (default: min for a loss, else max).",
)
@click.option("--alias", help="Alias to point at the version (default: from the metric, best-knn).")
@click.option("--name", help="Registered model name (default: the sweep's name, else the run's).")
@tracking_option
def promote(
    target: str,
    metric: str,
    mode: str | None,
    alias: str | None,
    name: str | None,
    tracking_uri: str | None,
) -> None:
    """Register TARGET's best checkpoint as a model version with an alias (models:/NAME@ALIAS).

    TARGET is a pretrain run (id or name) or a sweep (name or parent run id).

    Every checkpoint of TARGET that holds METRIC competes (evaluate them first: mimray eval
    TARGET --protocol knn). Promoting the same checkpoint again moves the alias back to its
    existing version; `mimray eval models:/NAME@ALIAS` evaluates the checkpoint it points at.
    """
    from orchestrator.errors import ConfigError
    from orchestrator.tracking import resolve_tracking_uri
    from orchestrator.tracking.registry import check_alias, check_model_name, default_alias

    uri = resolve_tracking_uri(tracking_uri)
    try:
        alias = check_alias(alias if alias is not None else default_alias(metric))
        if name is not None:
            check_model_name(name)
        from orchestrator.evaluation.checkpoints import resolve_checkpoints

        checkpoints = resolve_checkpoints(uri, target, every_epoch=True)
        best, value = best_checkpoint(
            uri, target, checkpoints, metric, mode or default_mode(metric)
        )
        name = name or check_model_name(best.sweep or best.run_name)
    except ConfigError as err:
        fail(str(err))
    from orchestrator.tracking import CHECKPOINT_EPOCH_TAG, CHECKPOINT_URI_TAG, PRETRAIN_RUN_TAG
    from orchestrator.tracking.registry import PROMOTED_METRIC_TAG, register_checkpoint

    tags = {
        PROMOTED_METRIC_TAG: f"{metric}={value:.6g}",
        PRETRAIN_RUN_TAG: best.run_id,
        CHECKPOINT_EPOCH_TAG: str(best.epoch),
        CHECKPOINT_URI_TAG: best.uri,
    }
    version = register_checkpoint(uri, name, best.model_id, best.run_id, alias, tags)
    state = "registered as new version" if version.new else "already registered as version"
    console.print(
        f"{best.run_name} epoch {best.epoch} ({best.model_id}, {metric} {value:.4f}): "
        f"{state} {version.version} of {name!r}; alias {alias!r} points at it"
    )
    console.print(
        f"\\[mimray] Evaluate it: [bold]mimray eval models:/{name}@{alias} --protocol linear"
        "[/bold]",
        soft_wrap=True,
    )


def default_mode(metric: str) -> str:
    return "min" if metric.rsplit("/", 1)[-1].endswith("loss") else "max"


def best_checkpoint(
    tracking_uri: str, target: str, checkpoints: Sequence[Checkpoint], metric: str, mode: str
) -> tuple[Checkpoint, float]:
    """(the checkpoint with the best `metric`, its value); ConfigError when none holds it."""
    from orchestrator.errors import ConfigError
    from orchestrator.tracking.registry import checkpoint_metrics

    metrics: dict[str, dict[str, float]] = {}
    for experiment_id in {c.experiment_id for c in checkpoints}:
        runs = sorted({c.run_id for c in checkpoints if c.experiment_id == experiment_id})
        metrics.update(checkpoint_metrics(tracking_uri, experiment_id, runs))
    scored = [
        (c, metrics[c.model_id][metric])
        for c in checkpoints
        if metric in metrics.get(c.model_id, {})
    ]
    if not scored:
        held = sorted({key for c in checkpoints for key in metrics.get(c.model_id, {})})
        raise ConfigError(
            f"--metric {metric}: none of the {len(checkpoints)} checkpoints of {target} holds "
            f"it; allowed: {', '.join(held) or 'nothing yet'} (evaluate them first: mimray "
            f"eval {target} --protocol knn)"
        )
    # Ties go to the first in trial and epoch order: sorting is stable.
    ordered = sorted(scored, key=lambda item: item[1], reverse=mode == "max")
    return ordered[0]
