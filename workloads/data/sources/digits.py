"""scikit-learn's bundled handwritten digits as RGB images: real data that needs no download.

The 1,797 digits are 8x8 greyscale with values 0..16. They are resized bilinearly to the
requested size and the grey is copied to three channels, so models see the same uint8 HxWx3
images as for every other source.
"""

from __future__ import annotations

import functools

import numpy as np

from workloads.data.base import check_split, digest
from workloads.data.builtin import BuiltinSource

DIGIT_CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
NUM_DIGIT_IMAGES = 1797  # fixed by scikit-learn's bundled file; lets callers count without loading
_MAX_DIGIT_VALUE = 16.0
DIGITS_VAL_FRACTION = 0.2
_SPLIT_SEED = 0  # fixed, not the run's seed: the split must not move between runs


def load_digit_images(
    img_size: int, indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Digits at `indices` (default: all, in scikit-learn's order).

    Returns images uint8 (n, img_size, img_size, 3) and labels int64 (n,).
    """
    if img_size < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    small_images, labels = _raw_digits()
    if indices is not None:
        # Select before resizing: a batch should not pay for resizing all 1,797 digits.
        indices = np.asarray(indices, dtype=np.int64)
        small_images, labels = small_images[indices], labels[indices]
    resized = [_resize_bilinear(image, img_size) for image in small_images]
    grey = np.array(resized, dtype=np.float32).reshape(-1, img_size, img_size)
    grey = np.rint(np.clip(grey / _MAX_DIGIT_VALUE, 0.0, 1.0) * 255.0).astype(np.uint8)
    images = np.repeat(grey.reshape(-1, img_size, img_size, 1), 3, axis=-1)  # (n, H, W, 3)
    return images, labels.copy()  # a copy: callers must not mutate the cached labels


def _resize_bilinear(image: np.ndarray, img_size: int) -> np.ndarray:
    # PIL rather than torch: Ray Data tasks that read digits then need no torch import
    # (seconds and hundreds of MB per worker process).
    from PIL import Image

    if image.shape == (img_size, img_size):
        return image
    resized = Image.fromarray(image).resize((img_size, img_size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scikit-learn takes a second to import and only this source needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def digits_split_indices(split: str, num_images: int | None = None) -> np.ndarray:
    """Indices into scikit-learn's digits for a split: a fixed shuffle, last 20% is val."""
    check_split(split)
    permutation = np.random.default_rng(_SPLIT_SEED).permutation(NUM_DIGIT_IMAGES)
    num_val = round(NUM_DIGIT_IMAGES * DIGITS_VAL_FRACTION)
    indices = permutation[-num_val:] if split == "val" else permutation[:-num_val]
    if num_images is not None and num_images > len(indices):
        raise ValueError(
            f"digits {split} split has {len(indices)} images, num_images={num_images} asks for more"
        )
    return indices[:num_images]


class DigitsSource(BuiltinSource):
    """scikit-learn's digits: a fixed set, so `seed` changes nothing."""

    def split_indices(self, split: str, num_images: int | None) -> np.ndarray:
        return digits_split_indices(split, num_images)

    def _digest(self, split: str, num_rows: int, seed: int) -> str:
        return digest(self.name, split, num_rows)


def _load(indices: np.ndarray, img_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return load_digit_images(img_size, indices=indices)


SOURCE = DigitsSource("digits", DIGIT_CLASSES, _load)
