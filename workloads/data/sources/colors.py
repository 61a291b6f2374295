"""Solid-colour noise images: a built-in task that any encoder separates easily.

Pretraining cannot teach much here; it exists to check that the evaluation protocols work
(a linear probe or fine-tune that cannot reach ~100% on it is broken), and as a fast smoke
test for a new pipeline. Like `shapes`, image i is a pure function of (seed, i).
"""

from __future__ import annotations

import numpy as np

from workloads.data.builtin import GeneratedSource

COLOR_CLASSES: tuple[str, ...] = ("red", "green", "blue", "yellow")
_BASE_RGB = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32)
_PIXEL_NOISE_STD = 0.15


def render_colors(indices: np.ndarray, img_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (n, img_size, img_size, 3) and labels int64 (n,), balanced by index."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    labels = indices % len(COLOR_CLASSES)
    images = np.empty((len(indices), img_size, img_size, 3), dtype=np.float32)
    for row, (index, label) in enumerate(zip(indices, labels, strict=True)):
        rng = np.random.default_rng([seed, int(index)])
        brightness = rng.uniform(0.4, 0.9)
        noise = rng.standard_normal((img_size, img_size, 3), dtype=np.float32)
        images[row] = _BASE_RGB[label] * brightness + 0.1 + noise * _PIXEL_NOISE_STD
    np.clip(images, 0.0, 1.0, out=images)
    return (images * 255.0 + 0.5).astype(np.uint8), labels


SOURCE = GeneratedSource("colors", COLOR_CLASSES, render_colors)
