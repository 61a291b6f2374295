"""CPU-side augmentation for pretraining, run in Ray Data's `map_batches` next to training."""

from __future__ import annotations

from typing import Any

import numpy as np


def random_hflip(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flip each image left-right with probability 1/2. (B, H, W, C) uint8 in and out."""
    images = batch["image"]
    flip = np.random.default_rng().random(len(images)) < 0.5
    images = images.copy()
    images[flip] = images[flip, :, ::-1]
    return {**batch, "image": images}


def pretraining_view(dataset: Any, hflip: bool = True, with_ok: bool = False) -> Any:
    """Only what pretraining consumes: the image column, augmented.

    Labels and ids stay out of the stream (strings do not convert to tensors, and the
    worker has no use for labels during pretraining).
    """
    # Sources that decode stored bytes flag undecodable rows with `ok`; the loop counts them.
    dataset = dataset.select_columns(["image", "ok"] if with_ok else ["image"])
    if hflip:
        dataset = dataset.map_batches(random_hflip, batch_format="numpy")
    return dataset
