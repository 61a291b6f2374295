"""The single entry point from a data source name to a Ray Dataset of labelled images.

A source is a built-in dataset name (`shapes`, `digits`) or a local image folder. Every
source yields rows with the same columns, so nothing downstream knows which one it reads:

    image  uint8 (H, W, 3)
    label  int64 class index into `DatasetInfo.class_names`
    id     string that names the image stably, e.g. "shapes/train/17"

Splits are fixed and deterministic, so the train and val images of a source never overlap
and a rerun sees exactly the same images.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from workloads.data import folder
from workloads.data.colors import COLOR_CLASSES, render_colors
from workloads.data.digits import DIGIT_CLASSES, NUM_DIGIT_IMAGES, load_digit_images
from workloads.data.shapes import SHAPE_CLASSES, render_shapes

if TYPE_CHECKING:
    import ray.data

BUILTIN_DATASETS: tuple[str, ...] = ("shapes", "digits", "colors")
# Generated on the fly from (seed, index): any size, no download.
_GENERATED = {"shapes": (render_shapes, SHAPE_CLASSES), "colors": (render_colors, COLOR_CLASSES)}
SPLITS: tuple[str, ...] = ("train", "val")

DEFAULT_GENERATED_IMAGES = {"train": 2048, "val": 512}
# Val indices start far past any train size anyone will ask for, so the splits never overlap.
GENERATED_VAL_INDEX_OFFSET = 10_000_000
DIGITS_VAL_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0  # fixed, not the run's seed: the split must not move between runs
# Rows per Ray task: enough to amortise per-task overhead, few enough that a task's float
# intermediates (several times its uint8 output) stay around a hundred MB at large sizes.
_MAX_ROWS_PER_BATCH = 256
_BATCH_OUTPUT_BYTES = 16 * 2**20

_ALLOWED_SOURCES = (
    f"one of the built-in datasets ({', '.join(BUILTIN_DATASETS)}) "
    "or an existing local folder with one sub-folder of images per class"
)


@dataclass(frozen=True)
class DatasetInfo:
    """What a source holds for one split, known without decoding any image."""

    source: str
    num_rows: int
    class_names: list[str]
    split: str = "train"
    kind: str = "builtin"  # "builtin", "folder" or "remote"
    # Identifies the exact data: generation parameters for built-ins, file list for folders,
    # the manifest digest for pushed shards. Recorded with every run that reads it.
    digest: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def is_stored_source(source: str) -> bool:
    """Object storage, or a local folder / file written by `mimray data push` (or Parquet):
    sources of encoded images that are decoded while streaming (rows carry `ok`)."""
    if "://" in source:
        return True
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        return path.endswith(".parquet")
    return os.path.isfile(os.path.join(path, "manifest.json")) or any(
        name.endswith(".parquet") for name in _listdir(path)
    )


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def validate_source(source: str) -> None:
    """Cheap check, usable before Ray starts; raises ValueError with one clear line.

    Object storage is only checked for its form here; `describe_source` reaches it.
    """
    if source in BUILTIN_DATASETS:
        return
    if "://" in source:
        scheme, _, rest = source.partition("://")
        if scheme != "s3" or not rest.split("/", 1)[0]:
            raise ValueError(
                f"data source {source!r}: only s3://bucket[/prefix] object storage is "
                f"supported; or use {_ALLOWED_SOURCES}"
            )
        return
    if is_stored_source(source):
        return
    path = os.path.expanduser(source)
    if not os.path.isdir(path):
        raise ValueError(
            f"unknown data source {source!r}: expected {_ALLOWED_SOURCES}, an s3:// URI, "
            "or a folder written by `mimray data push`"
        )
    folder.folder_class_names(path)  # raises, naming the folder, when it holds no classes


def describe_source(
    source: str, *, split: str = "train", num_images: int | None = None, seed: int = 0
) -> DatasetInfo:
    """Row count and class names of a source split, from metadata or a directory listing."""
    validate_source(source)
    _check_split(split)
    _check_num_images(num_images)
    if is_stored_source(source):
        return _describe_stored(source, split, num_images)
    if source in _GENERATED:
        num_rows = _generated_num_images(split, num_images)
        digest = _digest(source, split, num_rows, seed)
        class_names = list(_GENERATED[source][1])
        return DatasetInfo(source, num_rows, class_names, split, digest=digest)
    if source == "digits":
        num_rows = len(digits_split_indices(split, num_images))
        digest = _digest(source, split, num_rows)
        return DatasetInfo(source, num_rows, list(DIGIT_CLASSES), split, digest=digest)
    root = os.path.expanduser(source)
    files = folder.folder_image_files(folder.split_folder(root, split), num_images)
    class_names = folder.split_class_names(root, SPLITS)
    digest = _digest(*(f"{os.path.relpath(f, root)}:{os.path.getsize(f)}" for f in files))
    return DatasetInfo(source, len(files), class_names, split, kind="folder", digest=digest)


def _describe_stored(source: str, split: str, num_images: int | None) -> DatasetInfo:
    from workloads.data import remote  # imports boto3/pyarrow only when data is stored

    info = remote.describe_remote(source)
    manifest = remote.read_manifest(source)
    num_rows = min(info.num_rows, num_images) if num_images else info.num_rows
    # The manifest's digest names the exact shards; without one, the listing stands in.
    digest = manifest.digest if manifest is not None else _digest(source, info.num_rows)
    return DatasetInfo(source, num_rows, info.class_names, split, kind=info.kind, digest=digest)


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def build_dataset(
    source: str,
    *,
    img_size: int,
    split: str = "train",
    num_images: int | None = None,
    seed: int = 0,
    augment: bool | None = None,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of `source`'s `split` with columns image, label and id.

    `seed` picks which images `shapes`/`colors` generate; the digits and folder splits are
    fixed. `num_images` sets the size of the split for generated sources; for digits and
    folders it keeps a fixed subset of that many images. `augment` (stored sources: random
    resized crops while decoding) defaults to on for the train split only.
    """
    validate_source(source)
    _check_split(split)
    _check_num_images(num_images)
    if img_size < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    if is_stored_source(source):
        from workloads.data import remote

        # Pushed data has one split per prefix; augmentation only for training.
        augment = split == "train" if augment is None else augment
        dataset = remote.build_remote_dataset(source, img_size=img_size, augment=augment)
        return dataset.limit(num_images) if num_images else dataset
    if source in _GENERATED:
        num_rows = _generated_num_images(split, num_images)
        return _build_generated(source, split, img_size, num_rows, seed)
    if source == "digits":
        return _build_digits(split, img_size, num_images)
    root = os.path.expanduser(source)
    return folder.read_image_folder(
        folder.split_folder(root, split),
        img_size,
        class_names=folder.split_class_names(root, SPLITS),
        num_images=num_images,
    )


def shapes_split_indices(split: str, num_images: int | None = None) -> np.ndarray:
    """Generator indices of the `shapes` split (train from 0, val from a far offset)."""
    _check_split(split)
    start = GENERATED_VAL_INDEX_OFFSET if split == "val" else 0
    return np.arange(start, start + _generated_num_images(split, num_images), dtype=np.int64)


def digits_split_indices(split: str, num_images: int | None = None) -> np.ndarray:
    """Indices into scikit-learn's digits for a split: a fixed shuffle, last 20% is val."""
    _check_split(split)
    permutation = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(NUM_DIGIT_IMAGES)
    num_val = round(NUM_DIGIT_IMAGES * DIGITS_VAL_FRACTION)
    indices = permutation[-num_val:] if split == "val" else permutation[:-num_val]
    if num_images is not None and num_images > len(indices):
        raise ValueError(
            f"digits {split} split has {len(indices)} images, num_images={num_images} asks for more"
        )
    return indices[:num_images]


def _build_generated(
    source: str, split: str, img_size: int, num_images: int, seed: int
) -> ray.data.Dataset:
    import ray.data

    # Rendering happens inside Ray tasks from row positions, so the driver never holds images.
    batch_size = _rows_per_batch(img_size)
    positions = ray.data.range(num_images, override_num_blocks=-(-num_images // batch_size))
    index_offset = GENERATED_VAL_INDEX_OFFSET if split == "val" else 0
    return positions.map_batches(
        _render_generated_batch,
        fn_kwargs={
            "source": source,
            "split": split,
            "img_size": img_size,
            "seed": seed,
            "offset": index_offset,
        },
        batch_format="numpy",
        batch_size=batch_size,
    )


def _render_generated_batch(
    batch: dict[str, np.ndarray], source: str, split: str, img_size: int, seed: int, offset: int
) -> dict[str, np.ndarray]:
    positions = batch["id"].astype(np.int64)
    images, labels = _GENERATED[source][0](positions + offset, img_size, seed)
    ids = np.asarray([f"{source}/{split}/{position}" for position in positions], dtype=object)
    return {"image": images, "label": labels, "id": ids}


def _build_digits(split: str, img_size: int, num_images: int | None) -> ray.data.Dataset:
    import ray.data

    digit_indices = digits_split_indices(split, num_images)
    num_rows, batch_size = len(digit_indices), _rows_per_batch(img_size)
    # Only indices travel to the tasks; each task resizes just the digits of its batch.
    positions = ray.data.range(num_rows, override_num_blocks=-(-num_rows // batch_size))
    return positions.map_batches(
        _load_digits_batch,
        fn_kwargs={"split": split, "img_size": img_size, "digit_indices": digit_indices},
        batch_format="numpy",
        batch_size=batch_size,
    )


def _load_digits_batch(
    batch: dict[str, np.ndarray], split: str, img_size: int, digit_indices: np.ndarray
) -> dict[str, np.ndarray]:
    indices = digit_indices[batch["id"].astype(np.int64)]
    images, labels = load_digit_images(img_size, indices=indices)
    ids = np.asarray([f"digits/{split}/{index}" for index in indices], dtype=object)
    return {"image": images, "label": labels, "id": ids}


def _generated_num_images(split: str, num_images: int | None) -> int:
    if num_images is None:
        return DEFAULT_GENERATED_IMAGES[split]
    if num_images > GENERATED_VAL_INDEX_OFFSET:
        raise ValueError(
            f"a generated {split} split holds at most {GENERATED_VAL_INDEX_OFFSET} images "
            f"(more would overlap the other split), num_images={num_images}"
        )
    return num_images


def _rows_per_batch(img_size: int) -> int:
    image_bytes = img_size * img_size * 3
    return max(1, min(_MAX_ROWS_PER_BATCH, _BATCH_OUTPUT_BYTES // image_bytes))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def _check_num_images(num_images: int | None) -> None:
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
