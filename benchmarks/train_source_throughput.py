"""Training from S3 vs from the built-in generator: data-wait share and images/s per epoch.

    python benchmarks/train_source_throughput.py [--images 2048] [--epochs 3] [--tuned]

Pushes `shapes` to a local moto S3 server, then pretrains the same tiny MAE twice in one
process with `run_pretrain` (what `mimray pretrain` runs): once on the built-in source, once on
the pushed shards. Per epoch it prints, from the MLflow record, how long rank 0 waited for
batches from Ray Data (`epoch/data_wait_s`) as a share of the epoch (`epoch/epoch_time_s`),
and training images/s. The first epoch includes the pipeline's start-up.

--tuned sets, in this driver before the datasets are built, the Ray Data settings that
benchmarks/data_throughput.py found faster (V1 Parquet reader, 16 MiB blocks), to see
whether they reach training.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from data_throughput import start_moto


def push_shapes(dest: str, images: int, img_size: int, shard_mb: float) -> None:
    try:
        from workloads.data.push import push_dataset
    except ImportError:  # before issue 11's per-source modules
        from workloads.data.shards import push_dataset
    push_dataset(
        "shapes", dest, num_images=images, img_size=img_size, shard_bytes=int(shard_mb * 2**20)
    )


def per_epoch(tracking_uri: str, run_id: str) -> list[tuple[int, float, float, float]]:
    """(epoch, data-wait share, data wait s, images/s) of rank 0, from the MLflow record."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run_id, key)}

    waits, times = history("epoch/data_wait_s"), history("epoch/epoch_time_s")
    speeds = history("epoch/images_per_s")
    return [
        (epoch, waits[epoch] / times[epoch], waits[epoch], speeds.get(epoch, float("nan")))
        for epoch in sorted(times)
        if epoch in waits
    ]


def tune_ray_data() -> None:
    """Parquet through Ray Data's V1 reader (a read task per file, blocks split for parallelism;
    V2 packs up to 128 MiB of row groups into one read task) and 16 MiB blocks."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.use_datasource_v2 = False
    context.target_max_block_size = 16 * 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--shard-mb", type=float, default=1.0)
    parser.add_argument("--tuned", action="store_true", help="apply the tuned Ray Data settings")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="spec override, e.g. scaling.num_workers=1",
    )
    args = parser.parse_args()
    server, endpoint = start_moto()
    os.chdir(tempfile.mkdtemp(prefix="mimray-bench-"))
    try:
        import boto3

        from orchestrator.config import load_spec
        from orchestrator.pretrain.launch import run_pretrain

        if args.tuned:
            tune_ray_data()
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        push_shapes("s3://bench/shapes", args.images, args.img_size, args.shard_mb)
        common = [
            "model.embed_dim=96",
            "model.depth=4",
            "model.num_heads=3",
            f"model.img_size={args.img_size}",
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}",
            f"data.num_images={args.images}",
            "tracking.system_metrics=false",
            *args.set,
        ]
        rows = {}
        for label, source in [("built-in", "shapes"), ("S3 shards", "s3://bench/shapes")]:
            spec = load_spec(None, [*common, f"data.source={source}"])
            result = run_pretrain(spec, name=label.replace(" ", "-"))
            rows[label] = per_epoch(result.tracking_uri, result.run_id)
        settings = "tuned Ray Data settings" if args.tuned else "Ray Data defaults"
        print(f"\n{args.images} images, {args.img_size} px, {settings}; {' '.join(args.set)}")
        print(f"{'source':10} {'epoch':>5} {'data wait':>9} {'share':>6} {'images/s':>8}")
        for label, epochs in rows.items():
            for epoch, share, wait, speed in epochs:
                print(f"{label:10} {epoch:5d} {wait:8.1f}s {share:6.0%} {speed:8.0f}")
        last = {label: epochs[-1][3] for label, epochs in rows.items()}
        print(f"last epoch images/s S3 / built-in: {last['S3 shards'] / last['built-in']:.2f}x")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
