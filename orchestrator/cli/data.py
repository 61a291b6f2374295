"""`mimray data push` and `mimray data inspect`: datasets in object storage.

Registered (lazily, by name) on the `mimray` group at the end of `orchestrator/cli/main.py`;
it imports only from `orchestrator/cli/common.py`.
"""

from __future__ import annotations

import click
from rich.table import Table

from orchestrator.cli.common import console, fail


@click.group()
def data() -> None:
    """Datasets in object storage: push images as Parquet shards, inspect what is there."""


@data.command("push")
@click.argument("src")
@click.argument("dest")
@click.option("--shard-mb", default=128.0, show_default=True, help="Target shard size.")
@click.option("--img-size", default=32, show_default=True, help="Size built-ins are drawn at.")
@click.option("--num-images", type=int, help="Images to take (shapes default: 2048).")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "val"]))
@click.option("--seed", default=0, show_default=True, help="Seed of the rows' random order.")
@click.option(
    "--format",
    "image_format",
    type=click.Choice(["png", "jpeg"]),
    help="Re-encode every image (default: keep each image's bytes; built-ins as PNG).",
)
@click.option(
    "--max-side",
    type=int,
    help="Store images no larger than this on their longer side (larger ones shrunk, as JPEG).",
)
@click.option(
    "--quality", type=int, help="JPEG quality of re-encoded images (with --max-side: 90)."
)
@click.option("--image-column", help="Parquet SRC: the image column (default: find it).")
@click.option("--label-column", help="Parquet SRC: the label column (default: label).")
def data_push(
    src: str,
    dest: str,
    shard_mb: float,
    img_size: int,
    num_images: int | None,
    split: str,
    seed: int,
    image_format: str | None,
    max_side: int | None,
    quality: int | None,
    image_column: str | None,
    label_column: str | None,
) -> None:
    """Write SRC (built-in name, image folder, Parquet, a stored prefix) as shards + manifest
    to DEST, rows in a seeded random order.

    DEST is s3://bucket/prefix (settings from the AWS environment, AWS_ENDPOINT_URL included)
    or a local folder.
    """
    from rich.progress import Progress

    from workloads.data import Columns, validate_source
    from workloads.data.object_store import DataSourceError
    from workloads.data.push import check_bounds, push_dataset
    from workloads.data.sources.stored import validate_location

    try:  # what can be checked without reading anything: exit 2, nothing written
        validate_source(src)
        validate_location(dest, what="push destination")
        if num_images is not None and num_images < 1:
            raise ValueError(f"--num-images: {num_images}; allowed: a positive number")
        check_bounds(max_side, quality, image_format)
    except ValueError as err:
        fail(str(err))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"pushing {src} -> {dest}", total=None)
        try:
            manifest = push_dataset(
                src,
                dest,
                shard_bytes=int(shard_mb * 2**20),
                img_size=img_size,
                num_images=num_images,
                split=split,
                seed=seed,
                image_format=image_format,
                max_side=max_side,
                quality=quality,
                columns=Columns(image=image_column, label=label_column),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except (DataSourceError, ValueError, OSError) as err:
            fail(str(err) or type(err).__name__, code=1)
    bound = f", longer side <= {manifest.max_side} px" if manifest.max_side else ""
    console.print(
        f"pushed {manifest.num_rows} images in {len(manifest.shards)} shards to {dest} "
        f"({len(manifest.class_names)} classes{bound}); manifest digest {manifest.digest}"
    )


@data.command("inspect")
@click.argument("uri")
@click.option("--samples", default=5, show_default=True, help="Sample ids to show.")
def data_inspect(uri: str, samples: int) -> None:
    """Show the manifest at URI (or count rows and classes when there is none)."""
    from workloads.data.manifest import read_manifest
    from workloads.data.object_store import DataSourceError
    from workloads.data.sources.stored import describe_stored, sample_ids, validate_location

    try:
        validate_location(uri, what="data source")
    except ValueError as err:
        fail(str(err))
    try:
        manifest = read_manifest(uri)
        info = describe_stored(uri)
        ids = sample_ids(uri, samples)
    except (DataSourceError, ValueError, OSError) as err:
        fail(str(err) or type(err).__name__, code=1)
    table = Table(show_header=False, title=uri)
    table.add_row("rows", str(info.num_rows))
    table.add_row("classes", f"{len(info.class_names)}: {', '.join(info.class_names[:20])}")
    if manifest is not None:
        table.add_row("format", "mimray Parquet shards (manifest.json)")
        table.add_row("digest", manifest.digest)
        if manifest.max_side is not None:
            table.add_row("max side", f"{manifest.max_side} px (JPEG quality {manifest.quality})")
        for shard in manifest.shards:
            table.add_row(
                shard.path, f"{shard.rows} rows, {shard.bytes} bytes, sha256 {shard.sha256[:16]}"
            )
    else:
        table.add_row("format", f"{info.kind} (no manifest)")
    table.add_row("sample ids", ", ".join(ids))
    console.print(table)
