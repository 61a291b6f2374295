"""kNN accuracy during pretraining: a per-epoch metric that Tune schedulers (ASHA) can act on.

Runs on every worker at the chosen epochs: each extracts features of its shards of the
labelled `knn_train`/`knn_val` datasets with the online encoder; rank 0 gathers them, scores
them once on its device and shares the top-1 with every rank (`knn_once.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from workloads.evaluation.knn_once import knn_once
from workloads.evaluation.loop import labelled_batches
from workloads.evaluation.protocols import extract_features

TRAIN_SPLIT, VAL_SPLIT = "knn_train", "knn_val"


def online_encoder(model: nn.Module) -> nn.Module:
    """The method's online ViT encoder, as its contract (`PretrainModel.encoder`) names it."""
    return model.encoder


def knn_during_training(
    model: nn.Module,
    monitor: Mapping[str, Any],
    device: torch.device,
    dataset_shard: Callable[[str], Any],
) -> dict[str, float]:
    """{"knn/top1", "knn/top1_1nn"} of the model's current encoder; `dataset_shard(name)` is
    the worker session's shard of a labelled split."""
    encoder = online_encoder(model)
    batch, pool = monitor["batch_size"], monitor["pool"]
    train, val = (
        extract_features(encoder, labelled_batches(dataset_shard(name), batch), pool, device)
        for name in (TRAIN_SPLIT, VAL_SPLIT)
    )
    metrics = knn_once(
        train, val, monitor["num_classes"], monitor["k"], monitor["temperature"], device
    )
    return {key: value for key, value in metrics.items() if key.startswith("knn/")}
