"""The evaluation job: `evaluate(config, session)`, run by every worker.

`eval_loop_per_worker` is Ray Train's entry point (a worker group's worker); the in-process
path of one-worker evaluations calls `evaluate` with its own session (`workloads/session.py`).

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
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from workloads.checkpoint import read_checkpoint_state
from workloads.console import say
from workloads.data.stream import PREFETCH_BATCHES
from workloads.distributed import global_sum
from workloads.evaluation.heads import load_encoder
from workloads.evaluation.knn_once import knn_once
from workloads.evaluation.protocols import extract_features, finetune, linear_probe
from workloads.run_reporter import NullReporter, Reporter
from workloads.run_spec import EvalLoopConfig
from workloads.session import RayTrainSession, Session

RESULT_FILE = "result.json"
# Fine-tuning's shuffle buffer: holds a whole few-label training set (10% of a small dataset),
# and bounds memory on large ones (1,024 224-px images are ~150 MB).
SHUFFLE_BUFFER_ROWS = 1024


def labelled_batches(
    shard: Any, batch_size: int, shuffle_seed: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """(images, labels) of one pass over a Ray Data shard, without undecodable rows; with a
    `shuffle_seed`, through a local shuffle buffer of `SHUFFLE_BUFFER_ROWS` seeded with it."""
    shuffle = {}
    if shuffle_seed is not None:
        shuffle = {
            "local_shuffle_buffer_size": SHUFFLE_BUFFER_ROWS,
            "local_shuffle_seed": shuffle_seed % 2**32,
        }
    for batch in shard.iter_torch_batches(
        batch_size=batch_size, prefetch_batches=PREFETCH_BATCHES, **shuffle
    ):
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


def eval_loop_per_worker(config: EvalLoopConfig) -> None:
    """Ray Train's entry point: the evaluation in one worker of a worker group."""
    evaluate(config, RayTrainSession())


def evaluate(config: EvalLoopConfig, session: Session) -> None:
    """Evaluate the configured checkpoint and report the result (with its `result.json`)."""
    spec = config["eval"]
    protocol = spec["protocol"]
    rank, world_size = session.rank, session.world_size
    device = session.device
    reporter: Reporter = config["reporter"] or NullReporter()
    if rank != 0:
        reporter = NullReporter()

    earlier = session.latest_checkpoint()
    if earlier is not None:  # this job already finished once: report the same result again
        with earlier.as_directory() as folder, open(os.path.join(folder, RESULT_FILE)) as f:
            _report_result(json.load(f), session)
        return

    uri = config["checkpoint_uri"]
    checkpoint = read_checkpoint_state(uri) if uri else None
    # The checkpoint names its method, whose contract says where its online encoder sits.
    method = (checkpoint or {}).get("spec", {}).get("method", {}).get("name")
    state = checkpoint["model"] if checkpoint else None
    encoder = load_encoder(config["model"], state, init_seed=spec["seed"], method=method)
    num_classes = config["num_classes"]
    train_shard = session.dataset_shard("train")
    val_shard = session.dataset_shard("val")

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
            # A new order every epoch, the same on a rerun: seeded by (seed, epoch, rank).
            metrics = finetune(
                encoder,
                lambda epoch: labelled_batches(
                    train_shard,
                    per_worker_batch,
                    shuffle_seed=spec["seed"] * 1_000_003 + epoch * 1_009 + rank,
                ),
                lambda: labelled_batches(val_shard, per_worker_batch),
                num_classes,
                settings,
                steps_per_epoch=config["steps_per_epoch"],
                global_batch_size=per_worker_batch * world_size,
                device=device,
                pool=spec["pool"],
                seed=spec["seed"],
                rank=rank,
                wrap=session.prepare_model,
                reduce=lambda counts: global_sum(counts, device),
                on_epoch=log_epoch,
            )
        else:
            batch, pool = spec["knn"]["batch_size"], spec["pool"]
            train = extract_features(encoder, labelled_batches(train_shard, batch), pool, device)
            val = extract_features(encoder, labelled_batches(val_shard, batch), pool, device)
            if protocol == "knn":  # scored once, on rank 0's device
                knn = spec["knn"]
                metrics = knn_once(train, val, num_classes, knn["k"], knn["temperature"], device)
            else:
                train, val = gather_everywhere(*train), gather_everywhere(*val)
                metrics = linear_probe(
                    train,
                    val,
                    num_classes,
                    spec["linear"],
                    seed=spec["seed"],
                    rank=rank,
                    world_size=world_size,
                    wrap=session.prepare_model,
                    on_epoch=log_epoch,
                )
                metrics["eval/train_images"] = float(len(train[1]))
                metrics["eval/val_images"] = float(len(val[1]))
    finally:
        reporter.close()
    _report_result(metrics, session)


def _report_result(metrics: dict[str, float], session: Session) -> None:
    folder = None
    if session.rank == 0:
        say("  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith("top1")))
        folder = tempfile.mkdtemp(prefix="mimray-result-")
        with open(os.path.join(folder, RESULT_FILE), "w") as f:
            json.dump(metrics, f)
    session.report(metrics, checkpoint_folder=folder, dir_name="result")
