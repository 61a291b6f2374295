"""Pixels for the model: decode encoded images and apply MAE's augmentation, on CPU.

Runs inside Ray Data's `map_batches` tasks, next to training. An image that PIL cannot read
(0 bytes, truncated, not an image) stays all zeros with ok=False: never dropped silently,
never a crash; the training loop counts those rows in `data/skipped`.

Crops are drawn from fresh entropy in every task, so they differ from epoch to epoch; they
are not repeatable between runs (row order is, where Ray Data allows: see `stream.py`).
"""

from __future__ import annotations

import io
import math

import numpy as np

from workloads.data.base import CROP_RATIO, DEFAULT_CROP_SCALE, Augmentation
from workloads.data.jpeg_decode import decode_jpeg_crop

_CROP_ATTEMPTS = 10


def decode_images(
    encoded: list[bytes | None],
    img_size: int,
    *,
    augmentation: Augmentation | None,
    rng: np.random.Generator,
    scaled_jpeg: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode to uint8 (n, img_size, img_size, 3) plus an ok flag per image.

    With an augmentation, the crop is taken from the full-resolution image before resizing
    (as torchvision's RandomResizedCrop does); without, the whole image is resized
    bilinearly (deterministic, for evaluation). `scaled_jpeg` lets JPEGs decode at a reduced
    scale that still covers the output size (`jpeg_decode.py`); False decodes every image
    whole, the reference the scaled path is checked against.
    """
    images = np.zeros((len(encoded), img_size, img_size, 3), dtype=np.uint8)
    ok = np.zeros(len(encoded), dtype=bool)
    for row, data in enumerate(encoded):
        if not data:
            continue
        pixels = _decode_one(data, img_size, augmentation, rng, scaled_jpeg)
        if pixels is not None:
            store_row(images, row, pixels, flip=_draw_flip(augmentation, rng))
            ok[row] = True
    return images, ok


def _decode_one(
    data: bytes,
    img_size: int,
    augmentation: Augmentation | None,
    rng: np.random.Generator,
    scaled_jpeg: bool,
) -> np.ndarray | None:
    """One image at the model's size, or None when it cannot be decoded. The crop box is
    drawn from the header's size first, so a JPEG decoder can be asked for the smallest
    scale that keeps the box at least `img_size` across."""
    from PIL import Image

    def pick_box(width: int, height: int) -> tuple[int, int, int, int]:
        if augmentation is None or augmentation.crop_scale is None:
            return 0, 0, width, height
        return random_resized_crop_box(
            width, height, rng, augmentation.crop_scale, augmentation.crop_ratio
        )

    if scaled_jpeg:
        resample = "bilinear" if augmentation is None else "bicubic"
        try:
            fast = decode_jpeg_crop(data, img_size, pick_box, resample)
        except Exception:  # noqa: BLE001 - Pillow decides: it reads JPEGs with minor faults
            fast = None  # (extraneous bytes, ...) that libjpeg-turbo's strict mode refuses
        if fast is not None:
            return fast.pixels
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")  # forces the full decode inside the try
    except Exception:  # noqa: BLE001 - any decoder failure means "corrupt", never a crash
        return None
    return _resize_box(image, pick_box(image.width, image.height), img_size, augmentation)


def augment_pixels(
    images: np.ndarray, img_size: int, augmentation: Augmentation, rng: np.random.Generator
) -> np.ndarray:
    """The same augmentation for sources that produce pixels (built-ins): (n, H, W, 3) uint8
    in, (n, img_size, img_size, 3) out."""
    from PIL import Image

    out = np.empty((len(images), img_size, img_size, 3), dtype=np.uint8)
    for row, pixels in enumerate(images):
        image = Image.fromarray(pixels)
        if augmentation.crop_scale is None:
            box: tuple[float, ...] = (0, 0, image.width, image.height)
        else:
            box = random_resized_crop_box(
                image.width, image.height, rng, augmentation.crop_scale, augmentation.crop_ratio
            )
        resized = _resize_box(image, box, img_size, augmentation)
        store_row(out, row, resized, flip=_draw_flip(augmentation, rng))
    return out


def _resize_box(
    image, box: tuple[float, ...], img_size: int, augmentation: Augmentation | None
) -> np.ndarray:
    """`box` of `image` resized to (img_size, img_size): bilinear for evaluation (no
    augmentation), bicubic for training crops."""
    from PIL import Image

    whole = tuple(box) == (0, 0, image.width, image.height)
    if augmentation is None:
        resample = Image.Resampling.BILINEAR
    else:
        resample = Image.Resampling.BICUBIC
    if not (whole and image.size == (img_size, img_size)):
        image = image.resize((img_size, img_size), resample, box=None if whole else box)
    return np.asarray(image, dtype=np.uint8)


def _draw_flip(augmentation: Augmentation | None, rng: np.random.Generator) -> bool:
    return augmentation is not None and augmentation.hflip and rng.random() < 0.5


def store_row(out: np.ndarray, row: int, pixels: np.ndarray, *, flip: bool) -> None:
    """`out[row] = pixels` for uint8 (H, W, 3) pixels, mirrored left-right when `flip`.

    A mirrored copy moves whole (r, g, b) pixels as 3-byte items: numpy's copy through a
    negative-stride byte view went one byte at a time and cost half a resize."""
    if not flip:
        out[row] = pixels
    elif pixels.flags.c_contiguous and out.flags.c_contiguous and pixels.shape[-1] == 3:
        out[row].view("V3")[:] = pixels.view("V3")[:, ::-1]
    else:
        out[row] = pixels[:, ::-1]


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = DEFAULT_CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) crop as torchvision's RandomResizedCrop picks it: an area
    share in `scale` and an aspect ratio log-uniform in `ratio`, else the central crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_CROP_ATTEMPTS):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width = round(math.sqrt(target_area * aspect))
        crop_height = round(math.sqrt(target_area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            left = int(rng.integers(0, width - crop_width + 1))
            top = int(rng.integers(0, height - crop_height + 1))
            return left, top, left + crop_width, top + crop_height
    # Fallback for extreme aspect ratios: the largest central crop within `ratio`.
    crop_width, crop_height = width, height
    if width / height < ratio[0]:
        crop_height = round(width / ratio[0])
    elif width / height > ratio[1]:
        crop_width = round(height * ratio[1])
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


def random_hflip(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flip each image left-right with probability 1/2 (fine-tuning's light augmentation).
    (B, H, W, C) uint8 in and out."""
    images = batch["image"]
    flip = np.random.default_rng().random(len(images)) < 0.5
    images = images.copy()
    images[flip] = images[flip, :, ::-1]
    return {**batch, "image": images}
