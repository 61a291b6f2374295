"""The fast path for JPEGs: decode at a reduced scale, resize with torch's vectorised kernel.

A crop that will be shrunk to the model's size does not need every pixel of the image. A
JPEG decoder can scale while it inverts the DCT (by 1/2, 1/4, 1/8) for a fraction of the
cost of decoding every pixel and resizing after. So the crop box is drawn first, from the
header's size; the decoder is asked for the smallest of those scales at which the box stays
at least `out_px` across on both sides (the final resize still only shrinks); the box
is moved to whole pixels of the scaled image (a sub-pixel shift of a random crop); and the
crop is resized by torch's antialiased uint8 kernel, which follows Pillow's filters and
took a third of the time of Pillow's own here.

`decode_jpeg_crop` returns the pixels, the box it really took in full-size pixels and the
scale it decoded at, so `tests/test_jpeg_decode.py` can hold the pixels to a whole decode of
that same box within its stated tolerance. Decoder: simplejpeg (libjpeg-turbo); without it,
Pillow's `draft`. `benchmarks/imagenet_like.py` measured both against Pillow's and
torchvision's decoders (`benchmarks/README.md`). CMYK and YCCK JPEGs, and anything that is
not a JPEG, are left to the caller's whole decode (None).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

try:
    import simplejpeg
except ImportError:  # optional: Pillow's draft scales the same way, a little slower
    simplejpeg = None

JPEG_MAGIC = b"\xff\xd8\xff"
# Colour spaces whose conversion to RGB Pillow does its own way (Adobe's inverted CMYK).
_WHOLE_DECODE_COLORSPACES = ("CMYK", "YCCK")

Box = tuple[int, int, int, int]
PickBox = Callable[[int, int], Box]


class JpegCrop(NamedTuple):
    pixels: np.ndarray  # uint8 (out_px, out_px, 3)
    box: tuple[float, ...]  # the crop taken, in full-size pixels (left, top, right, bottom)
    scale: float  # decoded width / full width: 1, 1/2, 1/4 or 1/8


def decode_jpeg_crop(data: bytes, out_px: int, pick_box: PickBox, resample: str) -> JpegCrop | None:
    """The crop of a JPEG at (out_px, out_px), or None when the fast path does not take it.
    `pick_box(width, height)` draws the box in full-size pixels; `resample` is "bicubic" or
    "bilinear". Raises on a corrupt JPEG (the caller's "undecodable")."""
    if not data.startswith(JPEG_MAGIC):
        return None
    decoded = _simplejpeg_scaled(data, out_px, pick_box) if simplejpeg else None
    if decoded is None and simplejpeg is None:
        decoded = _pillow_draft_scaled(data, out_px, pick_box)
    if decoded is None:
        return None
    pixels, full_size, box = decoded
    scaled_size = (pixels.shape[1], pixels.shape[0])
    scale = dct_scale(full_size, scaled_size)
    scaled_box = whole_pixel_box(box, scale, scaled_size)
    # Back in full-size pixels; a rounded-up last block may reach past the last pixel.
    taken = tuple(
        min(side / scale, limit) for side, limit in zip(scaled_box, full_size * 2, strict=True)
    )
    return JpegCrop(resize_crop(pixels, scaled_box, out_px, resample), taken, scale)


def dct_scale(full: tuple[int, int], scaled: tuple[int, int]) -> float:
    """The scale a JPEG decoder shrank by: 1/n exactly (each 8×8 block became (8/n)²
    pixels), the last row and column of blocks rounded up; not the ratio of the sizes."""
    for scale in (1.0, 0.5, 0.25, 0.125):
        if (math.ceil(full[0] * scale), math.ceil(full[1] * scale)) == scaled:
            return scale
    return scaled[0] / full[0]


def whole_pixel_box(box: Box, scale: float, scaled: tuple[int, int]) -> Box:
    """`box` (full-size pixels) in the pixels of the image decoded at `scale`, rounded to
    whole pixels inside the (width, height) `scaled`, at least one pixel across."""
    left = min(round(box[0] * scale), scaled[0] - 1)
    top = min(round(box[1] * scale), scaled[1] - 1)
    right = max(left + 1, min(round(box[2] * scale), scaled[0]))
    bottom = max(top + 1, min(round(box[3] * scale), scaled[1]))
    return left, top, right, bottom


def resize_crop(pixels: np.ndarray, box: Box, out_px: int, resample: str) -> np.ndarray:
    """`box` of (H, W, 3) uint8 `pixels` resized to (out_px, out_px, 3), antialiased; a
    C-contiguous array."""
    import torch
    import torch.nn.functional as F

    left, top, right, bottom = box
    if (bottom - top, right - left) == (out_px, out_px):
        return np.ascontiguousarray(pixels[top:bottom, left:right])
    # (1, 3, h, w) over the (H, W, 3) pixels without a copy, with strides torch recognises as
    # channels-last (the batch dimension added before the permute: `[None]` after it gets a
    # stride of 3, which hides the layout). The kernel then writes channels-last, so the
    # (h, w, 3) view of its output is contiguous; otherwise it wrote planes, and turning
    # them back into pixels cost about as much CPU as the resize itself.
    crop = torch.from_numpy(pixels).unsqueeze(0)[:, top:bottom, left:right].permute(0, 3, 1, 2)
    resized = F.interpolate(crop, size=(out_px, out_px), mode=resample, antialias=True)
    return resized[0].permute(1, 2, 0).numpy()


def _shrink(box: Box, out_px: int) -> int:
    """How much the image may shrink with the box still `out_px` across: 1, 2, 4 or 8.
    Powers of two only: libjpeg-turbo's SIMD inverse DCTs are the whole and the halving
    ones, and a 7/8..5/8 decode was slower than a whole one here."""
    room = min(box[2] - box[0], box[3] - box[1]) / out_px
    return 1 if room < 2 else min(8, 2 ** int(math.log2(room)))


def _simplejpeg_scaled(data: bytes, out_px: int, pick_box: PickBox):
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    if colorspace in _WHOLE_DECODE_COLORSPACES:
        return None
    box = pick_box(width, height)
    shrink = _shrink(box, out_px)
    # The smallest scale that is at least 1/shrink: exactly 1/shrink (min_factor=1, the
    # default, never upscales).
    pixels = simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        min_height=math.ceil(height / shrink),
        min_width=math.ceil(width / shrink),
    )
    return pixels, (width, height), box


def _pillow_draft_scaled(data: bytes, out_px: int, pick_box: PickBox):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        if opened.format != "JPEG" or opened.mode in _WHOLE_DECODE_COLORSPACES:
            return None
        width, height = opened.size
        box = pick_box(width, height)
        shrink = _shrink(box, out_px)
        # draft picks the largest reduction that keeps the image >= the size asked: 1/shrink.
        opened.draft("RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
        pixels = np.asarray(opened.convert("RGB"))
    return pixels, (width, height), box
