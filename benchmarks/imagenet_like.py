"""ImageNet-like JPEGs for the ingest benchmarks, and the single-thread decoder measurement.

    python benchmarks/imagenet_like.py [--images 300] [--seconds 3] [--max-side 320]

**The images.** Sizes and quality are drawn like ImageNet's training set: about half at
500×375 or 375×500, a seventh at 500×333 / 333×500, a tenth at 500×500, the rest with a
long side log-normal around 450 px (150-1,200) and a common photo aspect; quality 75-96;
about 1% greyscale; 4:2:0 chroma (Pillow's default, as most of ImageNet). The content is
photographs: random crops, flips and colour casts of scikit-learn's two bundled photos
(`load_sample_images`, 640×427), downscaled to the target size (never upscaled, so detail
stays) plus light sensor grain, so they compress like photographs (≈ ImageNet's ~110 KB at
~400×350), not like flat shapes.

**The decoders.** One thread, the same bytes, decode + MAE's RandomResizedCrop (scale 0.2-1,
ratio 3/4-4/3) to 224 px, bicubic: Pillow (the plain path), Pillow with `draft` (DCT
scaling by 1/2, 1/4, 1/8), simplejpeg (libjpeg-turbo, whole and DCT-scaled by n/8),
torchvision.io.decode_jpeg + `resized_crop`, and the project's own `decode_images`.
Images/s of wall time and of this process's CPU time (robust to other load).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import time
from collections.abc import Callable

import numpy as np

OUT_PX = 224
# (probability, long side, short side) of ImageNet's most common sizes; the rest is drawn.
COMMON_SIZES = ((0.47, 500, 375), (0.14, 500, 333), (0.10, 500, 500))
QUALITIES = (75, 85, 90, 93, 96)
QUALITY_WEIGHTS = (0.15, 0.2, 0.3, 0.15, 0.2)
GREY_SHARE = 0.01
PORTRAIT_SHARE = 0.2


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(image) for image in load_sample_images().images]


def draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) of one image, drawn like ImageNet's."""
    draw = rng.random()
    shares = np.cumsum([share for share, _, _ in COMMON_SIZES])
    common = int(np.searchsorted(shares, draw, side="right"))
    if common < len(COMMON_SIZES):
        _, long_side, short_side = COMMON_SIZES[common]
    else:
        long_side = int(np.clip(rng.lognormal(math.log(450), 0.35), 150, 1200))
        short_side = round(long_side / rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9]))
    if rng.random() < PORTRAIT_SHARE:
        return short_side, long_side
    return long_side, short_side


def imagenet_like_jpeg(rng: np.random.Generator, photos: list[np.ndarray] | None = None) -> bytes:
    """One ImageNet-like JPEG (see the module docstring)."""
    from PIL import Image

    photos = photos or _photos()
    width, height = draw_size(rng)
    photo = photos[int(rng.integers(len(photos)))]
    # The largest crop of the photo with the target's aspect, times a random zoom, so the
    # target is a downscale (detail kept) wherever the photo is large enough.
    source_h, source_w = photo.shape[:2]
    fit = min(source_w / width, source_h / height)
    crop_w = max(8, round(width * fit * rng.uniform(0.8, 1.0)))
    crop_h = max(8, round(height * fit * crop_w / (width * fit)))
    left = int(rng.integers(0, source_w - crop_w + 1))
    top = int(rng.integers(0, source_h - crop_h + 1))
    image = Image.fromarray(photo).resize(
        (width, height), Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h)
    )
    pixels = np.asarray(image, dtype=np.float32)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    pixels = pixels * rng.uniform(0.8, 1.2, size=3)  # a colour cast
    pixels = pixels + rng.normal(0.0, rng.uniform(6.0, 14.0), size=pixels.shape[:2] + (1,))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < GREY_SHARE:
        image = image.convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.choice(QUALITIES, p=QUALITY_WEIGHTS)))
    return buffer.getvalue()


def imagenet_like_jpegs(count: int, seed: int = 0) -> list[bytes]:
    rng, photos = np.random.default_rng(seed), _photos()
    return [imagenet_like_jpeg(rng, photos) for _ in range(count)]


def bounded(encoded: list[bytes], max_side: int, quality: int = 90) -> list[bytes]:
    """The same images as `mimray data push --max-side` stores them."""
    from workloads.data.push import bounded_image

    return [bounded_image(data, max_side, quality) for data in encoded]


# ---------------------------------------------------------------- decoders, one thread

Decoder = Callable[[bytes, np.random.Generator], np.ndarray]


def _crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    from workloads.data.decode import random_resized_crop_box

    return random_resized_crop_box(width, height, rng)


def _pillow_resize(pixels, box) -> np.ndarray:
    from PIL import Image

    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    return np.asarray(image.resize((OUT_PX, OUT_PX), Image.Resampling.BICUBIC, box=box))


def _torch_resize(pixels: np.ndarray, box) -> np.ndarray:
    from workloads.data.jpeg_decode import resize_crop

    return resize_crop(pixels, box, OUT_PX, "bicubic")


def _pillow(draft: bool) -> Decoder:
    from PIL import Image

    def decode(data: bytes, rng: np.random.Generator) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            box = _crop_box(width, height, rng)
            if draft:  # 1/2, 1/4 or 1/8 while the crop keeps >= OUT_PX across
                shrink = max(1.0, min(box[2] - box[0], box[3] - box[1]) / OUT_PX)
                opened.draft("RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
            image = opened.convert("RGB")
        scale_x, scale_y = image.width / width, image.height / height
        box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
        box = (*box[:2], min(box[2], image.width), min(box[3], image.height))
        return _pillow_resize(image, box)

    return decode


def _simplejpeg(resize: Callable[[np.ndarray, tuple], np.ndarray]) -> Decoder:
    import simplejpeg

    def decode(data: bytes, rng: np.random.Generator) -> np.ndarray:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
        return resize(pixels, _crop_box(width, height, rng))

    return decode


def _simplejpeg_scaled(data: bytes, rng: np.random.Generator) -> np.ndarray:
    from workloads.data.jpeg_decode import decode_jpeg_crop

    return decode_jpeg_crop(data, OUT_PX, lambda w, h: _crop_box(w, h, rng), "bicubic").pixels


def _torchvision(data: bytes, rng: np.random.Generator) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resized_crop

    image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
    left, top, right, bottom = _crop_box(image.shape[2], image.shape[1], rng)
    out = resized_crop(
        image,
        top,
        left,
        bottom - top,
        right - left,
        [OUT_PX, OUT_PX],
        interpolation=InterpolationMode.BICUBIC,
        antialias=True,
    )
    return out.permute(1, 2, 0).numpy()


def _project(data: bytes, rng: np.random.Generator) -> np.ndarray:
    from workloads.data.base import Augmentation
    from workloads.data.decode import decode_images

    return decode_images([data], OUT_PX, augmentation=Augmentation(hflip=False), rng=rng)[0][0]


def decoders() -> dict[str, Decoder]:
    """The single-thread candidates, by name (decoder + resize); those whose library is
    missing are left out. `mimray` is the project's `decode_images` as it is."""
    found: dict[str, Decoder] = {"pillow": _pillow(draft=False), "pillow-draft": _pillow(True)}
    try:
        import simplejpeg  # noqa: F401

        found["simplejpeg"] = _simplejpeg(_pillow_resize)
        found["simplejpeg+torch"] = _simplejpeg(_torch_resize)
        found["simplejpeg-scaled+torch"] = _simplejpeg_scaled
    except ImportError:
        pass
    try:
        import torchvision.io  # noqa: F401

        found["torchvision"] = _torchvision
    except ImportError:
        pass
    found["mimray"] = _project
    return found


def single_thread_rates(
    encoded: list[bytes], seconds: float = 3.0, names: list[str] | None = None
) -> dict[str, tuple[float, float]]:
    """{decoder: (images per wall second, images per CPU second)} in this thread, decoders
    interleaved in rounds of `seconds / 3` so drift in the machine's load hits all alike."""
    import torch

    torch.set_num_threads(1)
    chosen = {name: fn for name, fn in decoders().items() if names is None or name in names}
    done = {name: 0 for name in chosen}
    wall = {name: 0.0 for name in chosen}
    cpu = {name: 0.0 for name in chosen}
    for _ in range(3):
        for name, decode in chosen.items():
            rng = np.random.default_rng(0)
            start_wall, start_cpu = time.perf_counter(), time.thread_time()
            while time.perf_counter() - start_wall < seconds / 3:
                decode(encoded[done[name] % len(encoded)], rng)
                done[name] += 1
            wall[name] += time.perf_counter() - start_wall
            cpu[name] += time.thread_time() - start_cpu
    return {name: (done[name] / wall[name], done[name] / cpu[name]) for name in chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0, help="per decoder and data set")
    parser.add_argument("--max-side", type=int, default=320)
    args = parser.parse_args()
    from PIL import Image

    full = imagenet_like_jpegs(args.images)
    sets = {"full": full, f"max-side {args.max_side}": bounded(full, args.max_side)}
    for label, encoded in sets.items():
        pixels = [int(np.prod(Image.open(io.BytesIO(data)).size)) for data in encoded]
        print(
            f"{label}: {len(encoded)} JPEGs, mean {np.mean([len(d) for d in encoded]) / 1e3:.0f}"
            f" KB, {np.mean(pixels) / 1e3:.0f} kpx, "
            f"{8 * sum(map(len, encoded)) / sum(pixels):.2f} bits/px; load {os.getloadavg()[0]:.2f}"
        )
        for name, (wall, per_cpu) in single_thread_rates(encoded, args.seconds).items():
            print(f"  {name:18} {wall:7.0f} img/s wall {per_cpu:7.0f} img/CPU-s")


if __name__ == "__main__":
    main()
