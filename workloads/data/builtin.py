"""Built-in datasets: labelled images made on the fly from an index, no download.

A built-in is a `BuiltinSource` that knows its class names, which indices make up each split,
and how to load the images at some indices. Ray tasks render their batch from row positions,
so the driver never holds images; augmentation runs in the same task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from workloads.data.base import (
    ROW_COLUMNS,
    Augmentation,
    Columns,
    DatasetInfo,
    DataSource,
    PushRows,
    check_num_images,
    check_split,
    digest,
    object_array,
    rows_per_batch,
)
from workloads.data.decode import augment_pixels
from workloads.data.decode_stage import cluster_decode_plan

if TYPE_CHECKING:
    import ray.data

# (indices, img_size, seed) -> uint8 images (n, H, W, 3), int64 labels (n,)
Loader = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]
# Val indices of generated sets start far past any train size anyone will ask for, so the
# splits never overlap.
GENERATED_VAL_INDEX_OFFSET = 10_000_000
DEFAULT_GENERATED_IMAGES = {"train": 2048, "val": 512}


class BuiltinSource(DataSource):
    """A built-in dataset selected by its name (`data.source: shapes`)."""

    kind = "builtin"
    priority = 0

    def __init__(self, name: str, class_names: tuple[str, ...], load: Loader) -> None:
        self.name, self.class_names, self.load = name, list(class_names), load

    def claims(self, source: str) -> bool:
        return source == self.name

    def validate(self, source: str) -> None:
        return None  # a built-in name is valid once claimed

    def split_indices(self, split: str, num_images: int | None) -> np.ndarray:
        """The indices `load` takes for a split (fixed: the splits never move between runs)."""
        raise NotImplementedError

    def position_ids(self, split: str, indices: np.ndarray) -> list[str]:
        return [f"{self.name}/{split}/{index}" for index in indices]

    def describe(
        self, source: str, *, split: str, num_images: int | None, seed: int, columns: Columns
    ) -> DatasetInfo:
        check_split(split)
        check_num_images(num_images)
        num_rows = len(self.split_indices(split, num_images))
        return DatasetInfo(
            source,
            num_rows,
            self.class_names,
            split,
            self.kind,
            self._digest(split, num_rows, seed),
        )

    def _digest(self, split: str, num_rows: int, seed: int) -> str:
        return digest(self.name, split, num_rows, seed)

    def build(
        self,
        source: str,
        *,
        img_size: int,
        split: str,
        num_images: int | None,
        seed: int,
        augmentation: Augmentation | None,
        order_seed: int | None,
        columns: Columns,
        keep: Sequence[str] = ROW_COLUMNS,
    ) -> ray.data.Dataset:
        import ray.data

        check_split(split)
        check_num_images(num_images)
        indices = self.split_indices(split, num_images)
        batch_size = rows_per_batch(img_size)
        positions = ray.data.range(len(indices), override_num_blocks=-(-len(indices) // batch_size))
        if order_seed is not None:
            # Blocks of positions are cheap to reorder, and Ray reseeds this every epoch.
            positions = positions.randomize_block_order(
                seed=ray.data.RandomSeedConfig(order_seed, reseed_after_execution=True)
            )
        return positions.map_batches(
            _load_batch,
            fn_kwargs={
                "source": self,
                "split": split,
                "indices": indices,
                "img_size": img_size,
                "seed": seed,
                "augmentation": augmentation,
                "keep": keep,
            },
            batch_format="numpy",
            batch_size=batch_size,
            # At most this many tasks at once: the memory bound, see decode_stage.py.
            compute=ray.data.TaskPoolStrategy(size=cluster_decode_plan().tasks),
        )

    def push_rows(
        self, source: str, *, img_size: int, split: str, num_images: int | None, columns: Columns
    ) -> PushRows:
        check_split(split)
        check_num_images(num_images)
        indices = self.split_indices(split, num_images)

        def read(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
            chosen = indices[positions]
            images, labels = self.load(chosen, img_size, 0)
            return images, labels, self.position_ids(split, chosen)

        return PushRows(len(indices), self.class_names, read)


class GeneratedSource(BuiltinSource):
    """Images that are a pure function of (seed, index): any size, drawn lazily."""

    def split_indices(self, split: str, num_images: int | None) -> np.ndarray:
        check_split(split)
        if num_images is None:
            num_images = DEFAULT_GENERATED_IMAGES[split]
        if num_images > GENERATED_VAL_INDEX_OFFSET:
            raise ValueError(
                f"a generated {split} split holds at most {GENERATED_VAL_INDEX_OFFSET} images "
                f"(more would overlap the other split), num_images={num_images}"
            )
        start = GENERATED_VAL_INDEX_OFFSET if split == "val" else 0
        return np.arange(start, start + num_images, dtype=np.int64)

    def position_ids(self, split: str, indices: np.ndarray) -> list[str]:
        # Ids count from 0 in each split.
        offset = GENERATED_VAL_INDEX_OFFSET if split == "val" else 0
        return [f"{self.name}/{split}/{index - offset}" for index in indices]


def _load_batch(
    batch: dict[str, np.ndarray],
    source: BuiltinSource,
    split: str,
    indices: np.ndarray,
    img_size: int,
    seed: int,
    augmentation: Augmentation | None,
    keep: Sequence[str],
) -> dict[str, np.ndarray]:
    chosen = indices[batch["id"].astype(np.int64)]
    images, labels = source.load(chosen, img_size, seed)
    if augmentation is not None:
        images = augment_pixels(images, img_size, augmentation, np.random.default_rng())
    columns = {
        "image": images,
        "label": labels,
        "id": object_array(source.position_ids(split, chosen)),
        "ok": np.ones(len(chosen), dtype=bool),
    }
    return {name: columns[name] for name in keep}
