"""The evaluation job: one `eval_loop_per_worker` function run by every Ray Train worker.

It loads the encoder from the checkpoint URI, reads its shards of the labelled `train` and
`val` datasets and runs the protocol. Frozen-feature protocols gather every worker's features
(small: one vector per image) so all ranks agree; fine-tuning is data-parallel. The final
metrics are reported with a small checkpoint holding `result.json`, which is how they reach
the driver (Ray Train V2 keeps only results that come with a checkpoint).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from workloads.checkpoint import read_checkpoint_state
from workloads.console import say
from workloads.distributed import global_sum
from workloads.evaluation.heads import load_encoder
from workloads.evaluation.protocols import (
    extract_features,
    finetune,
    knn_metrics,
    linear_probe,
)
from workloads.run_reporter import NullReporter, Reporter

RESULT_FILE = "result.json"


def labelled_batches(shard: Any, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, labels) of one pass over a Ray Data shard, without undecodable rows."""
    for batch in shard.iter_torch_batches(batch_size=batch_size, prefetch_batches=2):
        images, labels = batch["image"], batch["label"]
        if "ok" in batch:
            keep = batch["ok"].bool()
            images, labels = images[keep], labels[keep]
        if len(labels):
            yield images, labels


def gather_everywhere(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Every worker's (features, labels), concatenated in rank order, on every worker."""
    if not (dist.is_available() and dist.is_initialized()):
        return features, labels
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (features, labels))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def eval_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    spec: Mapping[str, Any] = config["eval"]
    protocol = spec["protocol"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    reporter: Reporter = config.get("reporter") or NullReporter()
    if rank != 0:
        reporter = NullReporter()

    earlier = ray.train.get_checkpoint()
    if earlier is not None:  # this job already finished once: report the same result again
        with earlier.as_directory() as folder, open(os.path.join(folder, RESULT_FILE)) as f:
            _report_result(json.load(f), rank)
        return

    uri = config["checkpoint_uri"]
    checkpoint = read_checkpoint_state(uri) if uri else None
    # The checkpoint names its method, whose contract says where its online encoder sits.
    method = (checkpoint or {}).get("spec", {}).get("method", {}).get("name")
    state = checkpoint["model"] if checkpoint else None
    encoder = load_encoder(config["model"], state, init_seed=spec["seed"], method=method)
    num_classes = config["num_classes"]
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        reporter.log_metrics(metrics, epoch)
        if rank == 0:
            shown = "  ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in metrics.items())
            say(f"{protocol} epoch {epoch}: {shown}")

    reporter.start()
    try:
        if protocol == "finetune":
            settings = spec["finetune"]
            per_worker_batch = max(1, settings["batch_size"] // world_size)
            metrics = finetune(
                encoder,
                lambda: labelled_batches(train_shard, per_worker_batch),
                lambda: labelled_batches(val_shard, per_worker_batch),
                num_classes,
                settings,
                steps_per_epoch=config["steps_per_epoch"],
                global_batch_size=per_worker_batch * world_size,
                device=device,
                pool=spec["pool"],
                seed=spec["seed"],
                wrap=ray.train.torch.prepare_model,
                reduce=lambda counts: global_sum(counts, device),
                on_epoch=log_epoch,
            )
        else:
            batch, pool = spec["knn"]["batch_size"], spec["pool"]
            train = gather_everywhere(
                *extract_features(encoder, labelled_batches(train_shard, batch), pool, device)
            )
            val = gather_everywhere(
                *extract_features(encoder, labelled_batches(val_shard, batch), pool, device)
            )
            if protocol == "knn":
                knn = spec["knn"]
                metrics = knn_metrics(train, val, num_classes, knn["k"], knn["temperature"])
            else:
                metrics = linear_probe(
                    train,
                    val,
                    num_classes,
                    spec["linear"],
                    seed=spec["seed"],
                    rank=rank,
                    world_size=world_size,
                    wrap=ray.train.torch.prepare_model,
                    on_epoch=log_epoch,
                )
            metrics["eval/train_images"] = float(len(train[1]))
            metrics["eval/val_images"] = float(len(val[1]))
    finally:
        reporter.close()
    _report_result(metrics, rank)


def _report_result(metrics: dict[str, float], rank: int) -> None:
    import ray.train

    if rank == 0:
        say("  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith("top1")))
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            with open(os.path.join(folder, RESULT_FILE), "w") as f:
                json.dump(metrics, f)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name="result")
