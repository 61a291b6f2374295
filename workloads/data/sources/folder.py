"""A local folder of images with one sub-folder per class (`root/<class>/<file>.png`).

Class indices are positions in the sorted list of class folder names, so the same folder
always gives the same labels. A folder may hold its splits as `root/train/<class>/...` and
`root/val/<class>/...`; a folder with class sub-folders directly is the train split.
Files and folders whose names start with "." or "_" are skipped, as Ray's listing does.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from workloads.data.base import (
    ROW_COLUMNS,
    SPLITS,
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
from workloads.data.decode import decode_images
from workloads.data.decode_stage import decode_in_tasks, in_chunks, read_tasks_for

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs
    import ray.data

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp")
_SKIPPED_PREFIXES = (".", "_")
_SUBSET_SEED = 0  # fixed: a truncated folder must hold the same images in every run


def folder_class_names(root: str) -> list[str]:
    """Sorted names of the sub-folders of `root` that contain at least one image."""
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root!r} does not exist or is not a directory")
    class_names = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir()
        and not entry.name.startswith(_SKIPPED_PREFIXES)
        and _has_image(entry.path)
    )
    if not class_names:
        raise ValueError(
            f"image folder {root!r} has no class sub-folders with images "
            f"(expected {root}/<class>/<file>.{'|'.join(IMAGE_EXTENSIONS[:3])}|...)"
        )
    return class_names


def split_folder(root: str, split: str) -> str:
    """The folder that holds `split`: `root/<split>` when it has class folders, else `root`
    itself for the train split. Any other split without its own folder is an error, because
    silently reusing the train images would leak them into evaluation."""
    candidate = os.path.join(root, split)
    if _has_class_folders(candidate):
        return candidate
    if split == "train":
        return root
    raise ValueError(f"image folder {root!r} has no {split!r} split folder ({candidate!r})")


def split_class_names(root: str, splits: Sequence[str]) -> list[str]:
    """Class names shared by the splits of `root`: the sorted union over its split folders.

    One list for all splits keeps a class's label the same in train and val even when a
    split lacks some class."""
    split_roots = [os.path.join(root, split) for split in splits]
    split_roots = [split_root for split_root in split_roots if _has_class_folders(split_root)]
    if not split_roots:
        return folder_class_names(root)
    return sorted({name for split_root in split_roots for name in folder_class_names(split_root)})


def folder_image_files(root: str, num_images: int | None = None) -> list[str]:
    """Sorted image paths under the class folders of `root` (a listing, no decoding).

    With `num_images`, a fixed random subset of that many, so that a truncated folder still
    holds every class instead of only the first ones in alphabetical order."""
    files = sorted(
        path for name in folder_class_names(root) for path in _image_files(os.path.join(root, name))
    )
    if num_images is None or num_images >= len(files):
        return files
    chosen = np.random.default_rng(_SUBSET_SEED).permutation(len(files))[:num_images]
    return [files[index] for index in sorted(chosen)]


class FolderSource(DataSource):
    """A local folder of class sub-folders (`data.source: ./my-images`)."""

    kind = "folder"
    priority = 20  # after stored layouts: a folder of Parquet files is not an image folder

    def claims(self, source: str) -> bool:
        return "://" not in source and os.path.isdir(os.path.expanduser(source))

    def validate(self, source: str) -> None:
        folder_class_names(os.path.expanduser(source))  # raises, naming the folder

    def describe(
        self, source: str, *, split: str, num_images: int | None, seed: int, columns: Columns
    ) -> DatasetInfo:
        check_split(split)
        check_num_images(num_images)
        root = os.path.expanduser(source)
        files = folder_image_files(split_folder(root, split), num_images)
        class_names = split_class_names(root, SPLITS)
        fingerprint = digest(*(f"{os.path.relpath(f, root)}:{os.path.getsize(f)}" for f in files))
        return DatasetInfo(source, len(files), class_names, split, self.kind, fingerprint)

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
        check_split(split)
        check_num_images(num_images)
        root = os.path.expanduser(source)
        split_root = split_folder(root, split)
        # An explicit file list (not the folder) keeps stray files out of the dataset and
        # makes the rows exactly those that `describe` counts.
        return decode_class_file_list(
            folder_image_files(split_root, num_images),
            root=os.path.realpath(split_root),
            class_names=split_class_names(root, SPLITS),
            img_size=img_size,
            augmentation=augmentation,
            order_seed=order_seed,
            keep=keep,
        )

    def push_rows(
        self, source: str, *, img_size: int, split: str, num_images: int | None, columns: Columns
    ) -> PushRows:
        root = os.path.expanduser(source)
        split_root = split_folder(root, split)
        class_names = split_class_names(root, SPLITS)
        files = folder_image_files(split_root, num_images)
        class_index = {name: index for index, name in enumerate(class_names)}

        def read(positions: np.ndarray) -> tuple[list[bytes], np.ndarray, list[str]]:
            chosen = [files[position] for position in positions]
            ids = [os.path.relpath(path, split_root).replace(os.sep, "/") for path in chosen]
            labels = np.asarray([class_index[i.split("/", 1)[0]] for i in ids], dtype=np.int64)
            # Original bytes, never re-encoded unless asked: a push must not change pixels.
            return [_read_bytes(path) for path in chosen], labels, ids

        return PushRows(len(files), class_names, read)


def decode_class_file_list(
    files: list[str],
    *,
    root: str,
    class_names: list[str],
    img_size: int,
    augmentation: Augmentation | None,
    order_seed: int | None,
    keep: Sequence[str],
    filesystem: pyarrow.fs.FileSystem | None = None,
) -> ray.data.Dataset:
    """Image files under `root/<class name>/`, read and decoded in one stage, a few hundred
    per task (`decode_stage.py`), in a new file order every epoch when `order_seed` is set."""
    import ray.data

    shuffle = None if order_seed is None else ray.data.FileShuffleConfig(seed=order_seed)
    rows = rows_per_batch(img_size)
    encoded = ray.data.read_binary_files(
        files,
        filesystem=filesystem,
        include_paths=True,
        shuffle=shuffle,
        override_num_blocks=read_tasks_for(len(files), rows),
    )
    options = {
        "rows": rows,
        "root": root,
        "class_names": class_names,
        "img_size": img_size,
        "augmentation": augmentation,
    }
    return decode_in_tasks(encoded, decode_class_file_chunks, keep, options)


def decode_class_file_chunks(
    block: pa.Table, rows: int, **options: object
) -> Iterator[dict[str, np.ndarray]]:
    """A read block of (path, bytes) rows decoded `rows` at a time (`decode_stage.py`)."""
    for chunk in in_chunks(block, rows):
        yield decode_class_files(chunk, **options)


def decode_class_files(
    batch: pa.Table,
    root: str,
    class_names: list[str],
    img_size: int,
    augmentation: Augmentation | None,
) -> dict[str, np.ndarray]:
    """Rows of (path, bytes) under `root/<class>/...` -> the common columns.

    Shared by local folders and image files under an object-storage prefix."""
    class_index = {name: index for index, name in enumerate(class_names)}
    local = os.path.isabs(root)
    ids = []
    for path in batch.column("path").to_pylist():
        # realpath on both sides: Ray may report resolved paths when `root` is a symlink.
        path = os.path.realpath(path) if local else str(path)
        ids.append(posixpath.relpath(path, root).replace(os.sep, "/"))
    labels = np.asarray([class_index[i.split("/", 1)[0]] for i in ids], dtype=np.int64)
    images, ok = decode_images(
        batch.column("bytes").to_pylist(),
        img_size,
        augmentation=augmentation,
        rng=np.random.default_rng(),
    )
    return {"image": images, "label": labels, "id": object_array(ids), "ok": ok}


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _has_class_folders(root: str) -> bool:
    if not os.path.isdir(root):
        return False
    try:
        folder_class_names(root)
    except ValueError:
        return False
    return True


def _has_image(folder: str) -> bool:
    return next(_image_files(folder), None) is not None


def _image_files(folder: str) -> Iterator[str]:
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [
            name for name in subdirectories if not name.startswith(_SKIPPED_PREFIXES)
        ]
        for name in files:
            extension = os.path.splitext(name)[1].lstrip(".").lower()
            if extension in IMAGE_EXTENSIONS and not name.startswith(_SKIPPED_PREFIXES):
                yield os.path.join(directory, name)


SOURCE = FolderSource()
