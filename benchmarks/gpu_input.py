"""The input side of GPU pretraining: can the node's CPUs decode JPEGs as fast as a GPU trains?

Three measurements, each of which can be skipped on its own:

- `pil_decode_rate`: one process, one core, PIL decode + RandomResizedCrop + resize to
  224 px of the same JPEG bytes: the per-core ceiling, no Ray involved; and
  `parallel_pil_decode_rate`, the same in one process per core at once.
- `ray_decode_rate`: mimray's own stream (`build_dataset` over Parquet shards written by
  mimray's `push_dataset`, MAE's augmentation on) iterated by the driver with Ray Data on a
  given number of CPUs: images/s of a whole pass, and per core.
- `pretrain_data_wait`: a real `mimray pretrain` (one GPU worker, `scaling.use_gpu: true`)
  on those shards; the share of each epoch the worker spent waiting for batches.

mimray's data package is being reorganised; everything that touches it is in the three
helpers `push_jpeg_shards`, `stream_dataset` and `pretrain_data_wait`, imported lazily.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

# About ImageNet's mean size and JPEG weight (500×375, ~110 KB at quality 90 with texture).
JPEG_WIDTH, JPEG_HEIGHT = 500, 375
JPEG_QUALITY = 90
CROP_SCALE, CROP_RATIO = (0.2, 1.0), (3 / 4, 4 / 3)  # MAE's RandomResizedCrop


def synthetic_jpeg(rng: np.random.Generator) -> bytes:
    """A photo-like JPEG: smooth colour fields plus grain, so it compresses like a photo
    (flat noise would be far heavier, a flat colour far lighter)."""
    from PIL import Image

    coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((JPEG_WIDTH, JPEG_HEIGHT), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 12, (JPEG_HEIGHT, JPEG_WIDTH, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=JPEG_QUALITY
    )
    return buffer.getvalue()


def write_jpeg_folder(
    root: str, num_images: int, num_classes: int = 4, seed: int = 0, unique: int = 256
) -> int:
    """`root/<class>/<n>.jpg` images (the folder layout `mimray data push` reads); returns
    the mean JPEG size in bytes. At most `unique` distinct images are encoded and repeated:
    decoding costs the same, and encoding thousands would take longer than the benchmark."""
    rng = np.random.default_rng(seed)
    distinct = [synthetic_jpeg(rng) for _ in range(min(unique, num_images))]
    total = 0
    for index in range(num_images):
        folder = os.path.join(root, f"class{index % num_classes}")
        os.makedirs(folder, exist_ok=True)
        data = distinct[index % len(distinct)]
        total += len(data)
        with open(os.path.join(folder, f"{index:06d}.jpg"), "wb") as file:
            file.write(data)
    return total // max(1, num_images)


def _crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (scale 0.2–1, ratio 3/4–4/3), central fallback."""
    for _ in range(10):
        area = width * height * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height


def pil_decode_rate(encoded: list[bytes], img_size: int, seconds: float = 3.0) -> float:
    """Images/s of decode + RandomResizedCrop + bicubic resize in this process (one core)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        with Image.open(io.BytesIO(encoded[done % len(encoded)])) as opened:
            image = opened.convert("RGB")
        box = _crop_box(image.width, image.height, rng)
        np.asarray(image.resize((img_size, img_size), Image.Resampling.BICUBIC, box=box))
        done += 1
    return done / (time.perf_counter() - started)


def _pil_rate_worker(job: tuple[list[bytes], int, float]) -> float:
    return pil_decode_rate(*job)


def parallel_pil_decode_rate(
    encoded: list[bytes], img_size: int, processes: int, seconds: float = 3.0
) -> float:
    """Images/s of `processes` processes decoding at once: what the node's cores give
    together without Ray (memory bandwidth and turbo clocks make it less than cores × one)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return sum(pool.map(_pil_rate_worker, [(encoded, img_size, seconds)] * processes))


def push_jpeg_shards(folder: str, dest: str) -> dict[str, Any]:
    """Parquet shards + manifest of `folder` at `dest` with mimray's own push."""
    try:
        from workloads.data.push import push_dataset
    except ImportError:  # before the data package's reorganisation
        from workloads.data.shards import push_dataset

    manifest = push_dataset(folder, dest, shard_bytes=32 * 2**20)
    return {"rows": manifest.num_rows, "shards": len(manifest.shards)}


def stream_dataset(uri: str, img_size: int) -> Any:
    """mimray's training stream of pushed shards: decode + RandomResizedCrop + flip."""
    import workloads.data

    augmentation = getattr(workloads.data, "Augmentation", None)
    # Newer API: augmentation is explicit (MAE's crop + flip by default); older: on for train.
    options = {"augmentation": augmentation()} if augmentation else {}
    dataset = workloads.data.build_dataset(uri, img_size=img_size, split="train", **options)
    return dataset.select_columns(["image"])


def ray_decode_rate(uri: str, img_size: int, num_cpus: int, batch_size: int = 256) -> dict:
    """Images/s of Ray Data streaming `uri` on `num_cpus` CPUs: a second full pass, timed
    whole (each training epoch pays its pipeline's start too), and that pass's rate after its
    first batch. The first pass starts Ray's workers and is reported separately.

    Ray must already be started with `num_cpus` CPUs (the caller owns the Ray instance).
    """
    dataset = stream_dataset(uri, img_size)
    passes = []
    for _ in range(2):
        started = time.perf_counter()
        first_at, first_rows, rows = None, 0, 0
        for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
            rows += len(batch["image"])
            if first_at is None:
                first_at, first_rows = time.perf_counter(), rows
        ended = time.perf_counter()
        passes.append((rows, ended - started, (first_at or ended) - started, first_rows))
    (_, first_pass_s, _, _), (rows, pass_s, first_batch_s, first_rows) = passes
    after_first = pass_s - first_batch_s
    rate = rows / pass_s if pass_s > 0 else None
    return {
        "images": rows,
        "first_pass_s": first_pass_s,
        "first_batch_s": first_batch_s,
        "images_per_s": rate,
        "images_per_s_per_core": rate / num_cpus if rate else None,
        "images_per_s_after_first_batch": (
            (rows - first_rows) / after_first if after_first > 0 and rows > first_rows else None
        ),
        "cpus": num_cpus,
    }


def pretrain_data_wait(
    uri: str,
    model: Mapping[str, Any],
    workdir: str,
    batch_size: int,
    epochs: int,
    cpus: float,
    use_gpu: bool = True,
) -> dict[str, Any]:
    """Run `mimray pretrain` (MAE, one worker, on a GPU unless told otherwise) on `uri` and
    read back from MLflow the share of epoch time spent waiting for data (epochs after the
    first, which includes the pipeline's start-up, and all epochs)."""
    from orchestrator.config import load_spec
    from orchestrator.pretrain.launch import run_pretrain
    from orchestrator.tracking import Tracker

    tracking_uri = f"sqlite:///{os.path.join(workdir, 'mlflow.db')}"
    overrides = [f"model.{key}={value}" for key, value in model.items()] + [
        "method.name=mae",
        f"data.source={uri}",
        f"train.epochs={epochs}",
        f"train.batch_size={batch_size}",
        "train.warmup_epochs=0",
        f"train.checkpoint_every={epochs}",
        "scaling.num_workers=1",
        f"scaling.use_gpu={str(use_gpu).lower()}",
        f"scaling.cpus_per_worker={cpus}",
        f"tracking.uri={tracking_uri}",
        "tracking.system_metrics=false",
        f"storage.path={os.path.join(workdir, 'runs')}",
    ]
    spec = load_spec(None, overrides)
    started = time.perf_counter()
    result = run_pretrain(spec, name="gpu-data-wait")
    wall_s = time.perf_counter() - started
    tracker = Tracker(tracking_uri, spec.tracking.experiment)
    waits = [value for _, value in tracker.metric_history(result.run_id, "epoch/data_wait_s")]
    times = [value for _, value in tracker.metric_history(result.run_id, "epoch/epoch_time_s")]
    speeds = [value for _, value in tracker.metric_history(result.run_id, "epoch/images_per_s")]
    later = slice(1, None) if len(times) > 1 else slice(None)
    return {
        "epochs": len(times),
        "batch_size": batch_size,
        "data_wait_share": sum(waits[later]) / max(sum(times[later]), 1e-9),
        "data_wait_share_all_epochs": sum(waits) / max(sum(times), 1e-9),
        "images_per_s_by_epoch": speeds,
        "wall_s": wall_s,
    }
