"""Ingest speed: Ray Data vs a PyTorch DataLoader on the same shards and the same CPU count.

    python benchmarks/data_throughput.py [--images 20000] [--cpus 2] [--rounds 2]
        [--cases png64,jpeg224] [--stores s3,local] [--ray mimray[,v2,...]] [--stats]

Cases, each written once as `mimray data push`-style Parquet shards (columns image binary,
label int64, id string, plus manifest.json) and cached under --data-dir:
  - png64:   built-in `shapes` rendered at 64 px, PNG-encoded (what push writes for built-ins);
  - jpeg224: shapes rendered at 288 px, JPEG-encoded (quality 90), read as RandomResizedCrop
             to 224 px;
  - imagenet: ImageNet-like JPEGs (`imagenet_like.py`: ImageNet's sizes and qualities,
             photographs' content), RandomResizedCrop to 224 px; a pool of 400 distinct
             images, each stored many times;
  - imagenet320: the same images as `mimray data push --max-side 320` stores them.
For the imagenet cases the run also measures the single-thread decoders of `imagenet_like.py`
on the case's own images, and prints each Ray side's per-core rate against the best of them.
Shards are as large as push writes them by default (--shard-mb; rounds before the eighth used
16 MB). Each case is read from a moto S3 server on 127.0.0.1 and from the local folder, two
ways, side by side in one run, rounds alternating so drift hits both:
  - Ray Data (one or more configurations, --ray): `mimray` is the project's own stream
    (`build_remote_dataset` + the columns a Train worker takes); the others are the same
    decode in Ray Data set up differently (see RAY_CONFIGS);
  - baseline: a DataLoader with --cpus worker processes, each streaming whole shards
    (boto3 or local file) in batches of --batch and decoding them.
Both sides decode with the project's `decode_images` (PIL decode, RandomResizedCrop scale
0.2-1, ratio 3/4-4/3, bicubic, flip), output batches of --batch images as torch tensors.

Per run it reports time to first batch (dataset construction included), steady-state
images/s per CPU (between the batches by which a quarter and nine tenths of the pass had
come: `STEADY_FROM`), images per CPU-second (the DataLoader's also with Ray's idle
processes counted, as in a Ray Train job), and Ray Data / DataLoader.
Absolute figures depend on the machine; the ratios are the result.

moto answers a ranged GET by reading and copying the whole object before it cuts the range
out, so every row group mimray reads costs the server a copy of the whole shard, on the
cores both sides share (the DataLoader fetches each shard whole, once). The server's CPU is
printed and counted on neither side, but it takes CPU time from the Ray side's S3 rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import inspect
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

BUCKET = "bench"
BIN_PACKING_ENV = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"  # read by Ray in the driver
_ROW_GROUP_BYTES = 16 * 2**20  # as `mimray data push` writes row groups
try:  # the shard size `mimray data push` writes by default
    from workloads.data.push import DEFAULT_SHARD_BYTES

    PUSH_SHARD_MB = DEFAULT_SHARD_BYTES / 2**20
except ImportError:
    PUSH_SHARD_MB = 128.0
try:  # the worker loop's lookahead; trees before it was a constant used 2
    from workloads.data.stream import PREFETCH_BATCHES as TRAIN_PREFETCH_BATCHES
except ImportError:
    TRAIN_PREFETCH_BATCHES = 2


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    render_px: int  # size the source images are rendered at (shapes)
    out_px: int  # size the crop is resized to
    encoding: str  # PIL format name
    imagenet_like: bool = False  # ImageNet-like JPEGs (benchmarks/imagenet_like.py)
    max_side: int | None = None  # stored as `mimray data push --max-side` stores them


CASES = {
    "png64": Case("png64", render_px=64, out_px=64, encoding="PNG"),
    "jpeg224": Case("jpeg224", render_px=288, out_px=224, encoding="JPEG"),
    "imagenet": Case("imagenet", 0, out_px=224, encoding="JPEG", imagenet_like=True),
    "imagenet320": Case(
        "imagenet320", 0, out_px=224, encoding="JPEG", imagenet_like=True, max_side=320
    ),
}
IMAGENET_CLASSES = [f"class{index:02d}" for index in range(10)]
IMAGENET_POOL = 400  # distinct ImageNet-like images, each stored many times (see below)


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """How the Ray Data side is set up. `project=True` reads through mimray's own stream
    (`build_remote_dataset`); the DataContext/env settings below apply to it too."""

    project: bool = False
    # Ray 2.60 reads Parquet through "datasource V2" (ListFiles -> ReadFiles) by default: it
    # bin-packs row groups into read tasks of up to RAY_DATA_PARQUET_BIN_PACKING_BYTES
    # (128 MiB) and ignores override_num_blocks. `v1` switches back to one task per file.
    v1: bool = False
    bin_mb: int | None = None  # RAY_DATA_PARQUET_BIN_PACKING_BYTES for V2 reads
    read_blocks: str = "auto"  # V1: "auto" (>= 200 blocks, split, unfused) or "files"
    map_batch_rows: int | None = None  # rows per decode call; None: a whole block
    actors: int = 0  # >0: decode in an actor pool of up to this size instead of tasks
    prefetch_batches: int = TRAIN_PREFETCH_BATCHES  # iter_torch_batches, as the worker loop
    target_block_mb: int | None = None  # DataContext.target_max_block_size (128 MiB)
    note: str = ""


RAY_CONFIGS = {
    "mimray": RayConfig(project=True, note="the project's stream as it is"),
    "mimray-p2": RayConfig(project=True, prefetch_batches=2, note="2 batches ahead (rounds 1-7)"),
    "mimray-tuned": RayConfig(
        project=True, bin_mb=16, target_block_mb=16, note="project stream + recommended settings"
    ),
    "v2": RayConfig(note="read_parquet defaults, decode fused into the read"),
    "v2-bin16": RayConfig(bin_mb=16, note="V2, 16 MiB read units"),
    "v2-bin16-blk16": RayConfig(bin_mb=16, target_block_mb=16, note="+ 16 MiB blocks"),
    "v2-bin8-blk8": RayConfig(bin_mb=8, target_block_mb=8, note="8 MiB units and blocks"),
    "v2-bin16-b256": RayConfig(bin_mb=16, map_batch_rows=256, note="16 MiB units, 256-row map"),
    "v1-split": RayConfig(v1=True, map_batch_rows=256, note="V1, 200 blocks: read | decode"),
    "v1-files": RayConfig(v1=True, read_blocks="files", note="V1, a task per file, fused"),
    "v1-files-blk16": RayConfig(
        v1=True, read_blocks="files", target_block_mb=16, note="V1 per file + 16 MiB blocks"
    ),
    "actors": RayConfig(
        v1=True, read_blocks="files", target_block_mb=16, actors=2, note="V1 | 2 decode actors"
    ),
    "v2-bin16-p8": RayConfig(bin_mb=16, target_block_mb=16, prefetch_batches=8, note="prefetch 8"),
}


# ---------------------------------------------------------------- shared decode (both sides)


def project_decode():
    """The project's decode + RandomResizedCrop + flip, as f(encoded, out_px, rng), wherever
    it lives now (workloads.data.decode since issue 11, workloads.data.remote before)."""
    try:
        from workloads.data.base import Augmentation
        from workloads.data.decode import decode_images

        augmentation = Augmentation()  # MAE's: crop scale 0.2-1, ratio 3/4-4/3, flip
        return lambda encoded, out_px, rng: decode_images(
            encoded, out_px, augmentation=augmentation, rng=rng
        )
    except ImportError:
        from workloads.data.remote import decode_images

        return lambda encoded, out_px, rng: decode_images(encoded, out_px, augment=True, rng=rng)


def decode_column(encoded: list[bytes | None], out_px: int) -> tuple[np.ndarray, np.ndarray]:
    return project_decode()(encoded, out_px, np.random.default_rng())


def decode_arrow_batch(batch, out_px: int) -> dict[str, np.ndarray]:
    """Ray Data map_batches function: encoded `image` column -> image (uint8) + ok."""
    images, ok = decode_column(batch.column("image").to_pylist(), out_px)
    return {"image": images, "ok": ok}


class DecodeActor:
    """The same decode in a long-lived actor (Ray Data actor-pool map)."""

    def __init__(self, out_px: int) -> None:
        self.out_px = out_px
        self.decode = project_decode()

    def __call__(self, batch) -> dict[str, np.ndarray]:
        encoded = batch.column("image").to_pylist()
        images, ok = self.decode(encoded, self.out_px, np.random.default_rng())
        return {"image": images, "ok": ok}


# ---------------------------------------------------------------- data: written once, cached


def write_shards(case: Case, images: int, shard_mb: float, folder: Path) -> list[str]:
    """Shards as `mimray data push` lays them out; returns the shard file names."""
    if (folder / "bench.json").exists():
        return shard_files(folder)
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    try:
        from workloads.data.sources.shapes import SHAPE_CLASSES, render_shapes
    except ImportError:
        from workloads.data.shapes import SHAPE_CLASSES, render_shapes

    class_names = IMAGENET_CLASSES if case.imagenet_like else list(SHAPE_CLASSES)
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("id", pa.string())])
    metadata = {b"mimray.class_names": json.dumps(class_names).encode()}
    # 288 px renders cost ~13 ms each: render a pool of distinct images and encode each row
    # from a randomly flipped/rolled pool image, so every row's bytes still differ.
    pool_size = images if case.render_px <= 64 else min(images, 2000)
    rng = np.random.default_rng(0)
    rows: list[tuple[bytes, int, str]] = []
    names, shards, pending = [], [], 0
    options = {"quality": 90} if case.encoding == "JPEG" else {}

    def flush() -> None:
        nonlocal rows, pending
        if not rows:
            return
        table = pa.Table.from_pydict(
            {
                "image": [r[0] for r in rows],
                "label": [r[1] for r in rows],
                "id": [r[2] for r in rows],
            },
            schema=schema,
        ).replace_schema_metadata(metadata)
        name = f"part-{len(names):05d}.parquet"
        buffer = io.BytesIO()
        group = max(1, int(len(table) * _ROW_GROUP_BYTES / max(pending, 1)))
        pq.write_table(
            table,
            buffer,
            row_group_size=group,
            compression="none",
            write_statistics=["label", "id"],
        )
        data = buffer.getvalue()
        (folder / name).write_bytes(data)
        names.append(name)
        shards.append(
            {
                "path": name,
                "rows": len(table),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        rows, pending = [], 0

    if case.imagenet_like:
        # Generating a photo-like JPEG costs ~50-100 ms: a pool of distinct ones, each row a
        # copy (decoding a copy costs what decoding the original does).
        for position, (encoded, label) in enumerate(imagenet_rows(case, images)):
            if rows and pending + len(encoded) > shard_mb * 2**20:
                flush()
            rows.append((encoded, label, f"imagenet/train/{position}"))
            pending += len(encoded)
        flush()
        write_manifest(folder, images, class_names, shards, case.max_side)
        (folder / "bench.json").write_text(json.dumps({"files": names}))
        return names
    copies = -(-images // pool_size)  # variants of each rendered image
    position = 0
    for start in range(0, pool_size, 64):
        pixels, labels = render_shapes(
            np.arange(start, min(start + 64, pool_size)), case.render_px, seed=0
        )
        for source_image, label in zip(pixels, labels, strict=True):
            for copy in range(min(copies, images - position)):
                image = source_image
                if copy:  # a random roll/flip, so repeated pool images still differ
                    image = np.roll(image, int(rng.integers(1, case.render_px)), axis=1)
                    if rng.random() < 0.5:
                        image = image[::-1]
                buffer = io.BytesIO()
                Image.fromarray(np.ascontiguousarray(image)).save(
                    buffer, format=case.encoding, **options
                )
                encoded = buffer.getvalue()
                if rows and pending + len(encoded) > shard_mb * 2**20:
                    flush()
                rows.append((encoded, int(label), f"shapes/train/{position}"))
                pending += len(encoded)
                position += 1
    flush()
    write_manifest(folder, images, list(SHAPE_CLASSES), shards)
    (folder / "bench.json").write_text(json.dumps({"files": names}))
    return names


def imagenet_pool(case: Case, count: int) -> list[bytes]:
    """`count` distinct ImageNet-like JPEGs, bounded as `mimray data push --max-side` does."""
    sys.path.insert(0, str(Path(__file__).parent))
    from imagenet_like import bounded, imagenet_like_jpegs

    pool = imagenet_like_jpegs(count)
    return bounded(pool, case.max_side) if case.max_side else pool


def imagenet_rows(case: Case, images: int) -> Iterator[tuple[bytes, int]]:
    pool = imagenet_pool(case, min(images, IMAGENET_POOL))
    rng = np.random.default_rng(0)
    for position in range(images):
        yield pool[position % len(pool)], int(rng.integers(len(IMAGENET_CLASSES)))


def write_manifest(
    folder: Path,
    rows: int,
    class_names: list[str],
    shards: list[dict],
    max_side: int | None = None,
) -> None:
    """manifest.json through the project's Manifest when it exists; else Parquet files only."""
    try:
        from workloads.data.manifest import Manifest, ShardInfo
    except ImportError:
        try:
            from workloads.data.shards import Manifest, ShardInfo
        except ImportError:
            return
    manifest = Manifest(rows, class_names, [ShardInfo(**shard) for shard in shards])
    if max_side:
        manifest.max_side, manifest.quality = max_side, 90
    (folder / "manifest.json").write_text(manifest.to_json())


def shard_files(folder: Path) -> list[str]:
    return json.loads((folder / "bench.json").read_text())["files"]


# ---------------------------------------------------------------- S3 (moto on 127.0.0.1)


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server on a free loopback port, with the AWS environment pointing at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=1).read()
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return server, endpoint


def upload(endpoint: str, folder: Path, prefix: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(folder.iterdir()):
        if path.name != "bench.json":
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")


def s3_filesystem(endpoint: str):
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint.removeprefix("http://"),
        scheme="http",
        access_key="bench",
        secret_key="bench",
        region="us-east-1",
    )


# ---------------------------------------------------------------- the two sides


@dataclasses.dataclass(frozen=True)
class Source:
    """One case in one store: where the shards are and how each side opens them."""

    case: Case
    store: str  # "s3" or "local"
    uri: str  # what mimray's data.source would be
    paths: list[str]  # shard paths for pyarrow (scheme-less for S3) / boto3 keys
    endpoint: str


@dataclasses.dataclass
class Measured:
    first_batch_s: float  # wall time from building the dataset to the first batch
    # wall: images/s between the batches by which STEADY_FROM and STEADY_TO of the pass had
    # come, past the first batch's buffered images and the last files' tail
    steady_images_per_s: float
    after_first_images_per_s: float  # wall: from the first batch to the last (before round 7)
    epoch_images_per_s: float  # wall: all images / all time, start-up included
    images_per_cpu_s: float  # all images / CPU seconds the side's processes used
    images: int
    detail: str = ""
    # CPU seconds of the processes in `background` (Ray's, during a DataLoader pass)
    background_cpu_s: float = 0.0
    # CPU seconds by process (this driver, Ray's daemons, workers by their title), --breakdown
    breakdown: dict[str, float] = dataclasses.field(default_factory=dict)


def cpu_snapshot(ignore: set[int] | None = None) -> tuple[float, dict[int, float]]:
    """CPU seconds used so far by this process (incl. reaped children) and by each live
    descendant (Ray's raylet and workers, DataLoader workers), skipping pids in `ignore`."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    own = times.user + times.system + times.children_user + times.children_system
    descendants = {}
    for child in me.children(recursive=True):
        if ignore and child.pid in ignore:
            continue
        try:
            times = child.cpu_times()
            descendants[child.pid] = (
                times.user + times.system + times.children_user + times.children_system
            )
        except psutil.Error:
            continue
    return own, descendants


def cpu_seconds_since(start: tuple[float, dict[int, float]], ignore: set[int] | None) -> float:
    own, descendants = cpu_snapshot(ignore)
    used = own - start[0]
    for pid, seconds in descendants.items():
        used += seconds - start[1].get(pid, 0.0)
    return used


def process_cpu(pid: int) -> float:
    """CPU seconds process `pid` has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# The steady-state window, in shares of the pass's images. From the first batch on, a stream
# that took longer to its first batch hands out what it decoded meanwhile (the Ray side's
# first second is ~900 images here, nearly half of a 2,000-image pass), and the last files
# are decoded by fewer workers than there are CPUs: neither is the rate a long epoch runs at.
STEADY_FROM, STEADY_TO = 0.25, 0.9


def measure(
    batches: Iterable[Any],
    started: float,
    ignore: set[int] | None = None,
    background: set[int] | None = None,
) -> Measured:
    """Consume `batches` (image tensors) as fast as they come; `ignore`: pids whose CPU time
    is not this side's (the Ray processes, while the DataLoader runs); of those, the CPU of
    `background` is recorded apart."""
    cpu_start = cpu_snapshot(ignore)
    background_start = {pid: process_cpu(pid) for pid in background or ()}
    arrivals: list[tuple[float, int]] = []  # (time, images so far) at each batch
    count = 0
    for images in batches:
        count += len(images)
        arrivals.append((time.perf_counter(), count))
    if not arrivals:
        raise RuntimeError("no batch came out")
    cpu = cpu_seconds_since(cpu_start, ignore)
    measured = Measured(
        arrivals[0][0] - started,
        steady_rate(arrivals),
        after_first_rate(arrivals),
        count / (arrivals[-1][0] - started),
        count / cpu,
        count,
    )
    for pid, seconds in background_start.items():
        try:
            measured.background_cpu_s += process_cpu(pid) - seconds
        except Exception:  # noqa: BLE001 - a process that ended took its count with it
            continue
    measured.breakdown = cpu_by_process(cpu_start, ignore)
    return measured


def after_first_rate(arrivals: list[tuple[float, int]]) -> float:
    """Images per second from the first batch to the last (the images of the first excluded):
    the "steady" of this benchmark's rounds before the seventh."""
    (first_at, first), (last_at, total) = arrivals[0], arrivals[-1]
    return (total - first) / (last_at - first_at) if last_at > first_at else float("nan")


def steady_rate(arrivals: list[tuple[float, int]]) -> float:
    """Images per second between the batches by which `STEADY_FROM` and `STEADY_TO` of all
    images had arrived (`arrivals`: (time, images so far) per batch)."""
    total = arrivals[-1][1]
    start = next(a for a in arrivals if a[1] >= STEADY_FROM * total)
    end = next(a for a in arrivals if a[1] >= STEADY_TO * total)
    return (end[1] - start[1]) / (end[0] - start[0]) if end[0] > start[0] else float("nan")


def cpu_by_process(start: tuple[float, dict[int, float]], ignore: set[int] | None) -> dict:
    """CPU seconds since `start` by process name (Ray names its workers by what they run)."""
    import psutil

    own, descendants = cpu_snapshot(ignore)
    spent = {"driver (incl. reaped children)": own - start[0]}
    for pid, seconds in descendants.items():
        try:
            name = psutil.Process(pid).name()[:40]
        except psutil.Error:
            name = "gone"
        spent[name] = spent.get(name, 0.0) + seconds - start[1].get(pid, 0.0)
    return dict(sorted(spent.items(), key=lambda item: -item[1]))


class ShardStream(torch.utils.data.IterableDataset):
    """Baseline dataset: each DataLoader worker streams its share of shards, `batch` rows at a
    time, and decodes them; one item = one batch, so batch_size=None in the DataLoader."""

    def __init__(self, source: Source, batch: int) -> None:
        self.source, self.batch = source, batch

    def __iter__(self) -> Iterator[Any]:
        import pyarrow.parquet as pq
        import torch

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        client = None
        if self.source.store == "s3":
            import boto3

            client = boto3.client("s3", endpoint_url=self.source.endpoint)
        for path in self.source.paths[worker::workers]:
            if client is not None:
                bucket, key = path.split("/", 1)
                handle = io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read())
            else:
                handle = path
            reader = pq.ParquetFile(handle)
            for records in reader.iter_batches(batch_size=self.batch, columns=["image"]):
                images, ok = decode_column(records.column(0).to_pylist(), self.source.case.out_px)
                yield torch.from_numpy(images), torch.from_numpy(ok)


def run_dataloader(source: Source, cpus: int, batch: int, store_server: set[int]) -> Measured:
    import psutil
    import torch

    # Ray's processes, and the S3 server (counted on neither side: see `run_ray`). Ray's
    # are recorded apart: in a Ray Train job they run whichever loader feeds the workers.
    ray_processes = {child.pid for child in psutil.Process().children(recursive=True)}
    started = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        ShardStream(source, batch), batch_size=None, num_workers=cpus, prefetch_factor=2
    )
    return measure(
        (images for images, _ in loader),
        started,
        ignore=ray_processes,
        background=ray_processes - store_server,
    )


def ray_dataset(source: Source, config: RayConfig):
    import ray.data

    case = source.case
    if config.project:
        return project_stream(source.uri, case.out_px)
    filesystem = s3_filesystem(source.endpoint) if source.store == "s3" else None
    blocks = len(source.paths) if config.read_blocks == "files" else None
    dataset = ray.data.read_parquet(
        source.paths, filesystem=filesystem, override_num_blocks=blocks
    ).select_columns(["image"])
    if config.actors:
        return dataset.map_batches(
            DecodeActor,
            fn_constructor_kwargs={"out_px": case.out_px},
            batch_format="pyarrow",
            batch_size=config.map_batch_rows or 64,
            compute=ray.data.ActorPoolStrategy(
                min_size=1, max_size=config.actors if config.actors > 0 else 64
            ),
        )
    return dataset.map_batches(
        decode_arrow_batch,
        fn_kwargs={"out_px": case.out_px},
        batch_format="pyarrow",
        batch_size=config.map_batch_rows,
    )


def project_stream(uri: str, out_px: int):
    """mimray's own training stream of a stored source: the columns a Train worker takes."""
    try:
        from workloads.data import Augmentation, build_dataset
    except ImportError:  # before issue 11's registry
        from workloads.data.remote import build_remote_dataset

        dataset = build_remote_dataset(uri, img_size=out_px, augment=True)
        return dataset.select_columns(["image", "ok"])
    # order_seed: the file order reshuffled per epoch, as training does by default.
    options = {"img_size": out_px, "augmentation": Augmentation(), "order_seed": 0}
    if "keep" not in inspect.signature(build_dataset).parameters:  # before the decode stage
        return build_dataset(uri, **options).select_columns(["image", "ok"])
    # As `orchestrator/pretrain/trainer.py` asks for it (with the decode stage's execution
    # settings).
    return build_dataset(uri, **options, keep=("image", "ok"))


def run_ray(
    source: Source, config: RayConfig, batch: int, stats: bool, store_server: set[int]
) -> Measured:
    """One pass of the Ray side. Every process of this tree counts (the driver, Ray's
    daemons and workers), except `store_server`: the S3 server serves both sides, is not part
    of a training node, and the DataLoader's pass never counted it."""
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size, context.use_datasource_v2
    saved_env = os.environ.get(BIN_PACKING_ENV)
    if config.target_block_mb:
        context.target_max_block_size = config.target_block_mb * 2**20
    context.use_datasource_v2 = not config.v1
    if config.bin_mb:
        os.environ[BIN_PACKING_ENV] = str(config.bin_mb * 2**20)
    try:
        started = time.perf_counter()
        dataset = ray_dataset(source, config)
        batches = dataset.iter_torch_batches(
            batch_size=batch, prefetch_batches=config.prefetch_batches
        )
        result = measure((rows["image"] for rows in batches), started, ignore=store_server)
    finally:
        context.target_max_block_size, context.use_datasource_v2 = saved
        os.environ.pop(BIN_PACKING_ENV, None)
        if saved_env is not None:
            os.environ[BIN_PACKING_ENV] = saved_env
    if stats:
        result.detail = dataset.stats()
    return result


# ---------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Row:
    """One side in one case and store: best of the rounds, cold = round 1 (the first pass over
    this source; Ray's own start-up is paid before the table, see `main`)."""

    case: str
    store: str
    side: str
    steady_per_cpu: float  # wall images/s in the steady window (`STEADY_FROM`..), / CPUs
    steady_ratio: float  # vs the DataLoader
    per_cpu_s: float  # images per CPU second used (robust to other load on the machine)
    cpu_ratio: float
    # vs the DataLoader with Ray's processes counted on its side too, as they run in a Ray
    # Train job whichever loader feeds it (the DataLoader row: its own figure so counted)
    ray_job_per_cpu_s: float
    ray_job_cpu_ratio: float
    epoch_per_cpu: float  # wall images/s over the whole pass, start-up included, / CPUs
    epoch_ratio: float
    # The first batch came after half the pass: the stream decoded (nearly) everything before
    # yielding, so "steady" measures draining a buffer, not producing. Marked "!".
    front_loaded: bool
    first_batch_cold: float
    first_batch_warm: float
    first_batch_ratio: float  # warm, vs the DataLoader


def table_rows(case: str, store: str, results: dict[str, list[Measured]], cpus: int) -> list[Row]:
    def best(values: list[Measured], key: str) -> float:
        return max(getattr(value, key) for value in values)

    def warm(values: list[Measured]) -> float:
        return min((value.first_batch_s for value in values[1:]), default=values[0].first_batch_s)

    def in_ray_job(value: Measured) -> float:
        return value.images / (value.images / value.images_per_cpu_s + value.background_cpu_s)

    base = results["DataLoader"]
    base_in_ray_job = max(in_ray_job(value) for value in base)
    rows = []
    for side, values in results.items():
        steady, per_cpu_s = best(values, "steady_images_per_s"), best(values, "images_per_cpu_s")
        ray_job = base_in_ray_job if side == "DataLoader" else per_cpu_s
        rows.append(
            Row(
                case,
                store,
                side,
                steady / cpus,
                steady / best(base, "steady_images_per_s"),
                per_cpu_s,
                per_cpu_s / best(base, "images_per_cpu_s"),
                ray_job,
                ray_job / base_in_ray_job,
                best(values, "epoch_images_per_s") / cpus,
                best(values, "epoch_images_per_s") / best(base, "epoch_images_per_s"),
                any(v.first_batch_s * v.epoch_images_per_s > v.images / 2 for v in values),
                values[0].first_batch_s,
                warm(values),
                warm(values) / warm(base),
            )
        )
    return rows


HEADER = (
    f"{'case':8} {'store':5} {'side':11} {'steady/CPU':>10} {'ratio':>6} {'img/CPU-s':>9} "
    f"{'ratio':>6} {'in Ray job':>10} {'ratio':>6} {'epoch/CPU':>9} {'ratio':>6} "
    f"{'1st batch cold':>14} {'warm':>6} {'ratio':>6}"
)


def print_row(row: Row) -> None:
    mark = "!" if row.front_loaded else " "
    print(
        f"{row.case:8} {row.store:5} {row.side:11} {row.steady_per_cpu:9.0f}{mark} "
        f"{row.steady_ratio:5.2f}x {row.per_cpu_s:9.0f} {row.cpu_ratio:5.2f}x "
        f"{row.ray_job_per_cpu_s:10.0f} {row.ray_job_cpu_ratio:5.2f}x "
        f"{row.epoch_per_cpu:9.0f} {row.epoch_ratio:5.2f}x "
        f"{row.first_batch_cold:13.2f}s {row.first_batch_warm:5.2f}s "
        f"{row.first_batch_ratio:5.1f}x"
    )


def best_single_thread(case: Case, folder: Path, sample: int = 300) -> tuple[str, float, float]:
    """(decoder, images/s, images/CPU-s) of the fastest single-thread decoder on the case's
    own stored images (`imagenet_like.single_thread_rates`, each candidate also printed)."""
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).parent))
    from imagenet_like import single_thread_rates

    first = folder / shard_files(folder)[0]
    encoded = pq.read_table(first, columns=["image"]).column(0).to_pylist()[:sample]
    rates = single_thread_rates(encoded, seconds=6.0)
    print(f"single thread, {case.name}, load {os.getloadavg()[0]:.2f}:")
    for name, (wall, per_cpu) in rates.items():
        print(f"  {name:24} {wall:6.0f} img/s {per_cpu:6.0f} img/CPU-s")
    libraries = {name: rate for name, rate in rates.items() if name != "mimray"}
    best = max(libraries, key=lambda name: libraries[name][1])
    return (best, *libraries[best])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs = DataLoader workers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="images per batch, both sides")
    parser.add_argument(
        "--shard-mb",
        type=float,
        default=PUSH_SHARD_MB,
        help="shard size (default: what `mimray data push` writes)",
    )
    parser.add_argument("--cases", default="png64,jpeg224", help=f"of {', '.join(CASES)}")
    parser.add_argument("--stores", default="s3,local")
    parser.add_argument("--ray", default="mimray", help=f"of {', '.join(RAY_CONFIGS)}")
    parser.add_argument("--data-dir", default="/tmp/mimray-bench-data")
    parser.add_argument("--stats", action="store_true", help="print Ray Data's stats per run")
    parser.add_argument(
        "--breakdown", action="store_true", help="print each pass's CPU seconds by process"
    )
    args = parser.parse_args()
    cases = [CASES[name] for name in args.cases.split(",")]
    stores = args.stores.split(",")
    configs = {name: RAY_CONFIGS[name] for name in args.ray.split(",")}
    for name in [*stores]:
        if name not in ("s3", "local"):
            parser.error(f"--stores: {name!r} is not s3 or local")

    folders = {}
    for case in cases:
        folder = Path(args.data_dir) / f"{case.name}-{args.images}-{args.shard_mb:g}mb"
        started = time.perf_counter()
        if not (folder / "bench.json").exists():
            write_shards(case, args.images, args.shard_mb, folder)
            print(f"wrote {folder} in {time.perf_counter() - started:.0f} s")
        folders[case.name] = folder

    server, endpoint = start_moto()
    try:
        import boto3
        import ray

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        sources = []
        for case in cases:
            folder, files = folders[case.name], shard_files(folders[case.name])
            size = sum((folder / name).stat().st_size for name in files)
            stored = (
                f"ImageNet-like JPEG{f', max side {case.max_side}' if case.max_side else ''}"
                if case.imagenet_like
                else f"{case.encoding} {case.render_px} px"
            )
            print(
                f"{case.name}: {args.images} images ({stored} -> {case.out_px} px crop) in "
                f"{len(files)} shards, {size / 2**20:.0f} MB, {size / args.images / 1e3:.0f} KB "
                "per image"
            )
            for store in stores:
                if store == "s3":
                    upload(endpoint, folder, case.name)
                    paths = [f"{BUCKET}/{case.name}/{name}" for name in files]
                    uri = f"s3://{BUCKET}/{case.name}"
                else:
                    paths = [str(folder / name) for name in files]
                    uri = str(folder)
                sources.append(Source(case, store, uri, paths, endpoint))
        # Ray starts its workers at niceness +15 by default (its raylet's `worker_niceness`),
        # the DataLoader's workers run at this process's: on a machine shared with niced work
        # the Ray side's decoders lost the CPU to it while the DataLoader's did not. The same
        # niceness both ways (set before Ray starts; its raylet reads it).
        os.environ["RAY_worker_niceness"] = "0"
        ray.init(
            address="local",  # its own Ray, not one another process on the machine started
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=2 * 2**30,
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        print(f"{args.cpus} CPUs each way, batches of {args.batch}, {args.rounds} rounds")
        idle = cpu_snapshot()
        time.sleep(5)
        # Counted on the Ray side (it is Ray's cost), but not work on images.
        print(f"Ray's own processes, idle: {cpu_seconds_since(idle, None) / 5:.2f} CPU")
        # The first stream of a Ray instance starts Ray Data's stats and autoscaling actors and
        # the decode tasks' worker processes, which a training job pays once, not per epoch.
        # That pass runs here, outside the table, and is printed apart: the rounds below compare
        # warm Ray passes with DataLoader passes (whose workers start in every pass, as in
        # training).
        if configs and sources:
            first = run_ray(
                sources[0], next(iter(configs.values())), args.batch, False, {server.pid}
            )
            print(
                f"Ray Data's first stream in this Ray (start-up, not in the table): first batch "
                f"{first.first_batch_s:.2f} s, {first.images / first.images_per_cpu_s:.1f} CPU-s "
                f"for {first.images} images ({sources[0].case.name} {sources[0].store})"
            )
        rows, decoders = [], {}
        for source in sources:
            print(f"load average {os.getloadavg()[0]:.2f} ({source.case.name} {source.store})")
            results: dict[str, list[Measured]] = {"DataLoader": []}
            results.update({name: [] for name in configs})
            server_cpu: dict[str, list[float]] = {name: [] for name in results}
            for round_index in range(args.rounds):
                # A finished Ray Data iterator's blocks can stay in Ray's object store until
                # Python's cyclic GC frees them (1.1 GiB of 2 seen between runs here): the next
                # run then spilled to disk. Collected before every run, both sides alike.
                gc.collect()
                before = process_cpu(server.pid)
                results["DataLoader"].append(
                    run_dataloader(source, args.cpus, args.batch, {server.pid})
                )
                server_cpu["DataLoader"].append(process_cpu(server.pid) - before)
                for name, config in configs.items():
                    gc.collect()
                    before = process_cpu(server.pid)
                    measured = run_ray(source, config, args.batch, args.stats, {server.pid})
                    server_cpu[name].append(process_cpu(server.pid) - before)
                    results[name].append(measured)
                    if args.breakdown:
                        for side, pass_ in (
                            ("DataLoader", results["DataLoader"][-1]),
                            (name, measured),
                        ):
                            spent = ", ".join(
                                f"{process} {seconds:.2f}"
                                for process, seconds in pass_.breakdown.items()
                                if seconds >= 0.01
                            )
                            print(f"CPU s by process, {side} round {round_index + 1}: {spent}")
                    if args.stats and round_index == args.rounds - 1:
                        print(f"--- {source.case.name} {source.store} {name}\n{measured.detail}")
            if source.case.imagenet_like and source.case.name not in decoders:
                decoders[source.case.name] = best_single_thread(
                    source.case, folders[source.case.name]
                )
            if source.store == "s3":
                spent = ", ".join(
                    f"{name} {'/'.join(f'{value:.1f}' for value in values)} s"
                    for name, values in server_cpu.items()
                )
                print(f"S3 server CPU per pass, counted on neither side: {spent}")
            print(
                "from the first batch on (the steady of rounds before the seventh), images/s: "
                + ", ".join(
                    f"{side} "
                    + "/".join(f"{value.after_first_images_per_s:.0f}" for value in values)
                    for side, values in results.items()
                )
            )
            print(HEADER)
            for row in table_rows(source.case.name, source.store, results, args.cpus):
                print_row(row)
                rows.append(row)
        print(f"\n{HEADER}")
        for row in rows:
            print_row(row)
        for row in rows:
            if row.case in decoders and row.side != "DataLoader":
                name, wall, per_cpu_s = decoders[row.case]
                print(
                    f"{row.case} {row.store} {row.side}: per core {row.steady_per_cpu:.0f} "
                    f"img/s steady, {row.per_cpu_s:.0f} img/CPU-s = {row.steady_per_cpu / wall:.2f}"
                    f"x / {row.per_cpu_s / per_cpu_s:.2f}x the best single-thread decoder "
                    f"({name}: {wall:.0f} img/s, {per_cpu_s:.0f} img/CPU-s)"
                )
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
