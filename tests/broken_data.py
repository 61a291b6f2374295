"""Image folders that make a run fail in its worker, and that a test can repair.

A folder whose share of empty (0-byte) images exceeds `data.max_skipped_share` passes every
check before training (the files are there) and fails the worker's first epoch with
`DataQualityError`: a failure that happens where real ones do, with no hook in the product.
Writing the images back (`repair_folder`) makes the same spec train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from workloads.data.sources.shapes import render_shapes


def write_folder_with_empty_images(root: Path, count: int, empty: int) -> None:
    """Two classes of 32x32 PNGs, the first `empty` of them 0-byte files (a failed copy)."""
    images, _ = render_shapes(np.arange(count), 32, seed=0)
    for index, image in enumerate(images):
        path = root / f"class_{index % 2}" / f"{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if index < empty:
            path.write_bytes(b"")
        else:
            Image.fromarray(image).save(path)


def repair_folder(root: Path, count: int) -> None:
    """Every image of a `write_folder_with_empty_images` folder written in full."""
    write_folder_with_empty_images(root, count, empty=0)
