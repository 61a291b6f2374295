"""Data sources for pretraining and evaluation: the only package that knows dataset formats.

`build_dataset(source, img_size=...)` turns a source (a built-in name, an image folder,
Parquet, an `s3://` prefix) into a Ray Dataset with the columns of `base.py`, whatever the
source is. Each kind of source is one module in `sources/`, found by `registry.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from workloads.data.base import (
    FIND_COLUMNS,
    ROW_COLUMNS,
    SELECTION_SHARE,
    Augmentation,
    Columns,
    DatasetInfo,
    check_keep,
    check_split,
    selection_fit_rows,
)
from workloads.data.decode_stage import stream_settings
from workloads.data.registry import allowed_sources, builtin_names, source_for

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "Augmentation",
    "Columns",
    "FIND_COLUMNS",
    "ROW_COLUMNS",
    "SELECTION_SHARE",
    "DatasetInfo",
    "allowed_sources",
    "build_dataset",
    "builtin_names",
    "describe_source",
    "holds_one_split",
    "selection_fit_rows",
    "validate_source",
]


def validate_source(source: str) -> None:
    """Cheap check, usable before Ray starts; raises ValueError with one clear line.
    Object storage is only checked for its form here; `describe_source` reaches it."""
    source_for(source)


def holds_one_split(source: str) -> bool:
    """Stored data holds one split per location: evaluations must name their val data."""
    return source_for(source).one_split_per_location


def describe_source(
    source: str,
    *,
    split: str = "train",
    num_images: int | None = None,
    seed: int = 0,
    columns: Columns = FIND_COLUMNS,
) -> DatasetInfo:
    """Row count, class names and digest of a source split, from metadata or a listing."""
    check_split(split)
    return source_for(source).describe(
        source, split=split, num_images=num_images, seed=seed, columns=columns
    )


def build_dataset(
    source: str,
    *,
    img_size: int,
    split: str = "train",
    num_images: int | None = None,
    seed: int = 0,
    augmentation: Augmentation | None = None,
    order_seed: int | None = None,
    columns: Columns = FIND_COLUMNS,
    keep: Sequence[str] = ROW_COLUMNS,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of `source`'s `split` with columns image, label, id and ok.

    `seed` picks which images generated built-ins draw; other splits are fixed. `num_images`
    sets the size of a generated split and keeps a fixed subset elsewhere. `augmentation`
    (None for evaluation) crops and flips while decoding; `order_seed` reshuffles file or
    block order every epoch (see `stream.py`). `keep` names the columns to produce (chosen
    while decoding); the stream runs with `decode_stage.py`'s execution settings.
    """
    check_keep(keep)
    check_split(split)
    if img_size < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    dataset = source_for(source).build(
        source,
        img_size=img_size,
        split=split,
        num_images=num_images,
        seed=seed,
        augmentation=augmentation,
        order_seed=order_seed,
        columns=columns,
        keep=keep,
    )
    return stream_settings(dataset)
