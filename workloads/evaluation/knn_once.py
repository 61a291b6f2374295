"""kNN over every worker's features, computed once: on rank 0's device, the result shared.

kNN needs the whole feature bank, and its answer is one number: gathering every worker's
features on every rank and scoring them on each rank's CPU (as before) repeated the same
(queries x bank) similarity on every rank. Here only rank 0 receives the features, scores them
on its device (the GPU of a GPU run) and broadcasts the metrics, so every rank reports the
same values. Without an initialised process group (one worker, tests) it is a plain call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from workloads.evaluation.protocols import knn_metrics

Features = tuple[Tensor, Tensor]  # (N, D) features, (N,) labels


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_on_rank_zero(features: Tensor, labels: Tensor) -> Features | None:
    """Every worker's (features, labels) in rank order on rank 0; None on the other ranks."""
    if not _distributed():
        return features, labels
    rank = dist.get_rank()
    parts: list[Any] | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object((features, labels), parts, dst=0)
    if parts is None:
        return None
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def share_from_rank_zero(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def knn_once(
    train: Features,
    val: Features,
    num_classes: int,
    k: int,
    temperature: float,
    device: torch.device,
) -> dict[str, float]:
    """`knn_metrics` of all workers' `train`/`val` features, on rank 0's `device`, on every
    rank; with the image counts it scored (`eval/train_images`, `eval/val_images`)."""
    bank, queries = gather_on_rank_zero(*train), gather_on_rank_zero(*val)
    metrics = None
    if bank is not None and queries is not None:
        metrics = knn_metrics(bank, queries, num_classes, k, temperature, device)
        metrics["eval/train_images"] = float(len(bank[1]))
        metrics["eval/val_images"] = float(len(queries[1]))
    return share_from_rank_zero(metrics)
