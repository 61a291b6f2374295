"""`mimray export MODEL --to timm`: a pretrained encoder as a file timm loads."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli.common import fail, tracking_option
from orchestrator.tracking import resolve_tracking_uri

FORMATS = ("timm",)


@click.command("export")
@click.argument("model")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="|".join(FORMATS),
    help="Target library (timm: a safetensors file for timm.create_model).",
)
@click.option(
    "--out",
    help="File to write (default: ./<checkpoint folder>.safetensors).",
)
@tracking_option
def export(model: str, to: str, out: str | None, tracking_uri: str | None) -> None:
    """Write MODEL's pretrained encoder for another library, and print how to load it.

    MODEL is a checkpoint folder or URI (local or s3://), or anything `mimray eval` takes that
    names one checkpoint: a checkpoint model id (m-...), a registered version
    (models:/NAME@ALIAS), a pretrain run id or name (its last checkpoint).
    """
    if to not in FORMATS:
        fail(f"--to: unknown format {to!r}; allowed: {', '.join(FORMATS)}")
    from orchestrator.config import ConfigError
    from orchestrator.evaluation.export import (
        export_to_timm,  # torch: only once the arguments are valid
    )

    try:
        uri = _checkpoint_uri(model, tracking_uri)
        folder = uri.rstrip("/").rsplit("/", 1)[-1]
        target = export_to_timm(uri, out or f"{folder}.safetensors")
    except ConfigError as err:
        fail(str(err))
    click.echo(f"[mimray] wrote {target.file} (encoder of {uri})")
    click.echo(f"[mimray] timm model: {target.name}")
    click.echo("import timm")
    click.echo(f"model = {target.create_model_call()}")


def _checkpoint_uri(model: str, tracking_uri: str | None) -> str:
    """MODEL as a checkpoint URI: itself when it is a checkpoint folder (local or s3://),
    else the one checkpoint that `mimray eval`'s resolver finds for it."""
    from orchestrator.config import ConfigError

    folder = _checkpoint_folder(model)
    if folder is not None:
        return folder
    from orchestrator.evaluation.checkpoints import resolve_checkpoints

    checkpoints = resolve_checkpoints(resolve_tracking_uri(tracking_uri), model)
    if len(checkpoints) != 1:
        raise ConfigError(
            f"MODEL: {model} names {len(checkpoints)} checkpoints (a sweep); allowed: one "
            "checkpoint (a model id, a registered version or a run)"
        )
    return checkpoints[0].uri


def _checkpoint_folder(model: str) -> str | None:
    """MODEL's URI (a local path made absolute) when it is a folder holding checkpoint.pt."""
    from workloads.checkpoint import CHECKPOINT_FILE
    from workloads.data.object_store import filesystem_for

    is_uri = model.startswith(("s3://", "file://"))
    if not is_uri and not Path(model).is_dir():
        return None
    filesystem, path = filesystem_for(model)
    if not filesystem.get_file_info(f"{path.rstrip('/')}/{CHECKPOINT_FILE}").is_file:
        return None
    return model if model.startswith("s3://") else path
