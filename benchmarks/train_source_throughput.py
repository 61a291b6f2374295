"""Training images/s when streaming from S3 vs from the built-in generator, same run otherwise.

    python benchmarks/train_source_throughput.py [--images 1024] [--epochs 2]

Pushes `shapes` to a local moto S3 server, then pretrains the same tiny MAE twice in one Ray
session: once on the built-in source, once on the pushed shards. Reports the last epoch's
images/s of each (the first epoch includes pipeline start-up) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from data_throughput import start_moto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    server, endpoint = start_moto()
    os.chdir(tempfile.mkdtemp(prefix="mimray-bench-"))
    try:
        import boto3

        from orchestrator.launch import run_pretrain
        from orchestrator.spec import load_spec
        from workloads.data.shards import push_dataset

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        push_dataset("shapes", "s3://bench/shapes", num_images=args.images, img_size=32)
        common = [
            "model.embed_dim=96",
            "model.depth=4",
            "model.num_heads=3",
            f"train.epochs={args.epochs}",
            "train.batch_size=128",
            f"data.num_images={args.images}",
            "tracking.system_metrics=false",
        ]
        speeds = {}
        for label, source in [("built-in shapes", "shapes"), ("S3 shards", "s3://bench/shapes")]:
            result = run_pretrain(
                load_spec(None, [*common, f"data.source={source}"]), name=label.replace(" ", "-")
            )
            speeds[label] = result.images_per_s
        for label, speed in speeds.items():
            print(f"{label:>16}: {speed:6.0f} training images/s (epoch {args.epochs})")
        print(f"ratio S3 / built-in: {speeds['S3 shards'] / speeds['built-in shapes']:.2f}x")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
