"""A local folder of images with one sub-folder per class (`root/<class>/<file>.png`).

Class indices are positions in the sorted list of class folder names, so the same folder
always gives the same labels. A folder may hold its splits as `root/train/<class>/...` and
`root/val/<class>/...`; a folder with class sub-folders directly is the train split.
Files and folders whose names start with "." or "_" are skipped, as Ray's listing does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
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


def read_image_folder(
    root: str,
    img_size: int,
    class_names: list[str] | None = None,
    num_images: int | None = None,
) -> ray.data.Dataset:
    """Lazily read, decode and resize the class images under `root` into a Ray Dataset with
    columns `image` (uint8 HxWx3), `label` (int64) and `id` (path relative to `root`).

    `class_names` (default: the class folders of `root`) fixes the label indices; pass the
    names of all splits so that labels agree between them."""
    import ray.data

    present = folder_class_names(root)
    class_names = present if class_names is None else class_names
    unknown = sorted(set(present) - set(class_names))
    if unknown:
        raise ValueError(f"image folder {root!r} has class folders {unknown} not in class_names")
    # An explicit file list (not `root`) keeps stray files in `root` out of the dataset and
    # makes the rows exactly those that `folder_image_files` counts.
    dataset = ray.data.read_images(
        folder_image_files(root, num_images),
        size=(img_size, img_size),
        mode="RGB",
        include_paths=True,
        file_extensions=list(IMAGE_EXTENSIONS),
    )
    return dataset.map_batches(
        _label_from_path,
        fn_kwargs={"root": os.path.realpath(root), "class_names": class_names},
        batch_format="numpy",
    )


def _label_from_path(
    batch: dict[str, np.ndarray], root: str, class_names: list[str]
) -> dict[str, np.ndarray]:
    class_index = {name: index for index, name in enumerate(class_names)}
    # realpath on both sides: Ray may report resolved paths when `root` goes through a symlink.
    relative_paths = [
        os.path.relpath(os.path.realpath(str(path)), root).replace(os.sep, "/")
        for path in batch["path"]
    ]
    labels = [class_index[relative.split("/", 1)[0]] for relative in relative_paths]
    return {
        "image": batch["image"],
        "label": np.asarray(labels, dtype=np.int64),
        "id": np.asarray(relative_paths, dtype=object),
    }


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
