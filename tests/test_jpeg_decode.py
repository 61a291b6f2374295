"""The JPEG fast path (`workloads/data/jpeg_decode.py`) against a whole decode of the same box.

Tolerance, in levels of 255 per channel over a 224 px crop, with Pillow's whole decode and
Pillow's resize of the box the fast path took as the reference:
- decoded at full scale (only the resize differs: torch's kernel vs Pillow's): mean
  absolute difference <= 0.1, PSNR >= 55 dB;
- decoded at 1/2, 1/4 or 1/8 (the DCT shrinks first): mean <= 2, PSNR >= 36 dB.
Measured on these photos (500×375 to 2000×1400, 36 crops): full scale mean <= 0.03 and
>= 60 dB; reduced mean <= 1.5 and >= 39 dB. Through `decode_images`, where the box is also
moved to whole pixels of the reduced image: mean <= 3, PSNR >= 33 dB.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from workloads.data import jpeg_decode
from workloads.data.base import Augmentation
from workloads.data.decode import decode_images, random_resized_crop_box
from workloads.data.jpeg_decode import decode_jpeg_crop

OUT_PX = 224
FULL_SCALE = (0.1, 55.0)  # (max mean |difference|, min PSNR dB)
REDUCED_SCALE = (2.0, 36.0)
# decode_images with and without the fast path: the boxes also differ by the move to whole
# pixels of the reduced image (up to one full-size pixel at 1/2).
MOVED_BOX = (3.0, 33.0)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(image) for image in load_sample_images().images]


def jpeg(pixels: np.ndarray, size: tuple[int, int], quality: int = 90, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS).convert(mode)
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def extraneous_bytes(data: bytes) -> bytes:
    """`data` with three stray bytes before its quantisation tables (seen in real photo sets)."""
    marker = data.find(b"\xff\xdb")
    return data[:marker] + b"\x00\x00\x00" + data[marker:]


def whole_decode(data: bytes, box: tuple[float, ...], resample: str) -> np.ndarray:
    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(image.resize((OUT_PX, OUT_PX), filters[resample], box=box))


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean absolute difference, PSNR in dB)."""
    delta = a.astype(np.float64) - b
    mse = max(float(np.mean(delta**2)), 1e-12)
    return float(np.mean(np.abs(delta))), 10 * np.log10(255**2 / mse)


def crops(data: bytes, count: int, seed: int, resample: str = "bicubic"):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield decode_jpeg_crop(
            data, OUT_PX, lambda w, h: random_resized_crop_box(w, h, rng), resample
        )


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow-draft"])
def test_scaled_decode_matches_the_whole_decode_of_its_box(photos, decoder, monkeypatch):
    if decoder == "pillow-draft":
        monkeypatch.setattr(jpeg_decode, "simplejpeg", None)
    elif jpeg_decode.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    scales = set()
    # ImageNet's typical size (full-scale decodes) and a large photo (1/2 and 1/4 decodes).
    for size in [(500, 375), (1600, 1067)]:
        for index, photo in enumerate(photos):
            data = jpeg(photo, size)
            for crop in crops(data, 3, seed=index):
                reference = whole_decode(data, crop.box, "bicubic")
                mean, psnr = difference(crop.pixels, reference)
                limit = FULL_SCALE if crop.scale == 1 else REDUCED_SCALE
                assert crop.pixels.shape == (OUT_PX, OUT_PX, 3)
                assert mean <= limit[0] and psnr >= limit[1], (size, crop.box, crop.scale)
                # A reduced scale kept the crop >= OUT_PX across (up to the whole-pixel move).
                width, height = crop.box[2] - crop.box[0], crop.box[3] - crop.box[1]
                if crop.scale < 1:
                    assert min(width, height) * crop.scale >= OUT_PX - 1, (crop.box, crop.scale)
                scales.add(crop.scale)
    assert 1.0 in scales and min(scales) <= 0.5, scales  # both kinds were checked


def test_whole_image_for_evaluation_matches_pillows_bilinear(photos):
    data = jpeg(photos[0], (1600, 1067))
    crop = decode_jpeg_crop(data, OUT_PX, lambda w, h: (0, 0, w, h), "bilinear")
    assert crop.scale < 1
    mean, psnr = difference(crop.pixels, whole_decode(data, crop.box, "bilinear"))
    assert mean <= REDUCED_SCALE[0] and psnr >= REDUCED_SCALE[1]


def test_decode_images_fast_and_plain_paths_agree(photos):
    """Same seed, same crop boxes and flips: the stream's pixels with and without the fast
    path, over sizes, qualities, greyscale and CMYK JPEGs, a PNG and corrupt bytes."""
    encoded = [
        jpeg(photos[0], (500, 375), 75),
        jpeg(photos[1], (375, 500), 96),
        jpeg(photos[0], (1200, 800), 90),
        jpeg(photos[1], (500, 333), 90, mode="L"),
        jpeg(photos[0], (500, 375), 90, mode="CMYK"),  # left to Pillow: converted its way
        jpeg(photos[1], (64, 48), 90),  # smaller than the output: upscaled
        png(photos[1]),
        # Last: a failed fast decode has drawn its crop box, the plain one had not (the
        # random streams of the two paths part there). Extraneous bytes before a marker:
        # libjpeg-turbo's strict mode refuses them, Pillow reads the image.
        extraneous_bytes(jpeg(photos[1], (500, 375))),
        jpeg(photos[0], (500, 375))[:3000],  # truncated
        b"\xff\xd8\xff not a jpeg",
        b"",
    ]
    augmentation = Augmentation()
    fast, fast_ok = decode_images(
        encoded, OUT_PX, augmentation=augmentation, rng=np.random.default_rng(3)
    )
    plain, plain_ok = decode_images(
        encoded, OUT_PX, augmentation=augmentation, rng=np.random.default_rng(3), scaled_jpeg=False
    )
    assert fast_ok.tolist() == plain_ok.tolist() == [True] * 8 + [False] * 3
    for row in range(7):
        mean, psnr = difference(fast[row], plain[row])
        assert mean <= MOVED_BOX[0] and psnr >= MOVED_BOX[1], row
    # The CMYK JPEG and the PNG went the plain way: identical.
    assert np.array_equal(fast[4], plain[4]) and np.array_equal(fast[6], plain[6])


def test_resize_crop_hands_back_pixels_without_a_transpose(photos):
    """The kernel is given the crop with channels-last strides, so it writes (h, w, 3)
    pixels: equal to resizing the planar crop, C-contiguous as they come, and without the
    buffers of the planar way (the kernel wrote planes, which had to be transposed back: it
    doubled the CPU). Bytes allocated, not time: the same on a busy machine."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    pixels = np.ascontiguousarray(photos[0][:375, :500])
    for box in [(30, 20, 400, 320), (0, 0, 500, 375), (100, 50, 101, 300), (7, 9, 231, 233)]:
        for resample in ("bicubic", "bilinear"):
            out = jpeg_decode.resize_crop(pixels, box, OUT_PX, resample)
            left, top, right, bottom = box
            planar = torch.from_numpy(
                np.ascontiguousarray(pixels[top:bottom, left:right].transpose(2, 0, 1))
            )[None]
            reference = F.interpolate(planar, size=(OUT_PX, OUT_PX), mode=resample, antialias=True)
            assert out.shape == (OUT_PX, OUT_PX, 3) and out.flags.c_contiguous, (box, resample)
            assert np.array_equal(out, reference[0].permute(1, 2, 0).numpy()), (box, resample)

    def allocated(call) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as run:
            call()
        return sum(max(event.cpu_memory_usage, 0) for event in run.events())

    def planar_way() -> np.ndarray:  # the crop as planes, the result transposed back
        crop = torch.from_numpy(pixels)[20:320, 30:400].permute(2, 0, 1)[None]
        resized = F.interpolate(crop, size=(OUT_PX, OUT_PX), mode="bicubic", antialias=True)
        return resized[0].permute(1, 2, 0).contiguous().numpy()

    ours = allocated(lambda: jpeg_decode.resize_crop(pixels, (30, 20, 400, 320), OUT_PX, "bicubic"))
    assert ours < allocated(planar_way), ours


def test_store_row_mirrors_exactly(photos):
    """The stream's flip (whole pixels moved as 3-byte items) equals numpy's plain mirror,
    for the fast path's contiguous pixels and for a strided view."""
    from workloads.data.decode import store_row

    pixels = np.ascontiguousarray(photos[1][:224, :224])
    out = np.zeros((3, 224, 224, 3), dtype=np.uint8)
    store_row(out, 0, pixels, flip=True)
    store_row(out, 1, pixels, flip=False)
    store_row(out, 2, photos[1][:224, :448:2], flip=True)  # not contiguous: the plain way
    assert np.array_equal(out[0], pixels[:, ::-1])
    assert np.array_equal(out[1], pixels)
    assert np.array_equal(out[2], photos[1][:224, :448:2][:, ::-1])
