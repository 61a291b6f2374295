"""Decode + augment throughput streaming Parquet shards from a local S3 server.

    python benchmarks/data_throughput.py [--images 2000] [--img-size 64] [--cpus 2]

Starts moto's S3 server on 127.0.0.1, pushes `shapes` as Parquet shards (the `mimray data
push` format), then reads the same shards two ways, side by side in one run:
  - mimray: Ray Data `read_parquet` through pyarrow's S3 filesystem, decode + RandomResizedCrop
    + flip in `map_batches`, consumed with `iter_torch_batches` (what a Train worker does);
  - baseline: a PyTorch DataLoader with the same number of worker processes, each reading
    whole shards with boto3 and decoding with PIL (the same decode function).
Prints images/s for both and their ratio. Absolute figures depend on the machine; the ratio
is the result.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np


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


class ShardDataset:
    """Baseline: one item = one whole shard, fetched with boto3 and decoded with PIL."""

    def __init__(self, endpoint: str, bucket: str, keys: list[str], img_size: int) -> None:
        self.endpoint, self.bucket, self.keys, self.img_size = endpoint, bucket, keys, img_size

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        import boto3
        import pyarrow.parquet as pq
        import torch

        from workloads.data.remote import decode_images

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        body = client.get_object(Bucket=self.bucket, Key=self.keys[index])["Body"].read()
        table = pq.read_table(io.BytesIO(body), columns=["image", "label"])
        images, ok = decode_images(
            table.column("image").to_pylist(),
            self.img_size,
            augment=True,
            rng=np.random.default_rng(index),
        )
        return torch.from_numpy(images), torch.from_numpy(ok)


def baseline_images_per_s(endpoint, bucket, keys, img_size, workers) -> float:
    import torch

    loader = torch.utils.data.DataLoader(
        ShardDataset(endpoint, bucket, keys, img_size),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=2,
        persistent_workers=False,
    )
    started, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - started)


def mimray_images_per_s(uri: str, img_size: int, batch: int) -> float:
    from workloads.data.remote import build_remote_dataset

    dataset = build_remote_dataset(uri, img_size=img_size, augment=True).select_columns(
        ["image", "ok"]
    )
    started, count = time.perf_counter(), 0
    for rows in dataset.iter_torch_batches(batch_size=batch, prefetch_batches=4):
        count += len(rows["image"])
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--cpus", type=int, default=2, help="Ray CPUs = DataLoader workers")
    parser.add_argument("--shard-mb", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    server, endpoint = start_moto()
    try:
        import boto3
        import ray

        from workloads.data.shards import push_dataset

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        uri = "s3://bench/shapes"
        manifest = push_dataset(
            "shapes",
            uri,
            shard_bytes=int(args.shard_mb * 2**20),
            img_size=args.img_size,
            num_images=args.images,
        )
        keys = [f"shapes/{shard.path}" for shard in manifest.shards]
        print(
            f"{manifest.num_rows} images ({args.img_size}px PNG) in {len(keys)} shards "
            f"on moto S3 at {endpoint}; {args.cpus} CPUs each way"
        )
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        results: dict[str, list[float]] = {"mimray (Ray Data)": [], "baseline (DataLoader)": []}
        for _ in range(args.rounds):  # alternate, so drift hits both
            results["mimray (Ray Data)"].append(mimray_images_per_s(uri, args.img_size, 64))
            results["baseline (DataLoader)"].append(
                baseline_images_per_s(endpoint, "bench", keys, args.img_size, args.cpus)
            )
        for name, values in results.items():
            print(f"{name:>22}: {max(values):7.0f} images/s (best of {args.rounds})")
        ratio = max(results["mimray (Ray Data)"]) / max(results["baseline (DataLoader)"])
        print(f"ratio mimray / baseline: {ratio:.2f}x")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
