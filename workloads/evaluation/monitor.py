"""kNN accuracy during pretraining: a per-epoch metric that Tune schedulers (ASHA) can act on.

Runs on every worker at the chosen epochs: each extracts features of its shards of the
labelled `knn_train`/`knn_val` datasets with the online encoder, the features are gathered,
and every rank computes the same top-1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from workloads.evaluation.loop import gather_everywhere, labelled_batches
from workloads.evaluation.protocols import extract_features, knn_metrics

TRAIN_SPLIT, VAL_SPLIT = "knn_train", "knn_val"


def online_encoder(model: nn.Module) -> nn.Module:
    """The method's online ViT encoder, as its contract (`PretrainModel.encoder`) names it."""
    return model.encoder


def knn_during_training(
    model: nn.Module, monitor: Mapping[str, Any], device: torch.device
) -> dict[str, float]:
    """{"knn/top1", "knn/top1_1nn"} of the model's current encoder."""
    import ray.train

    encoder = online_encoder(model)
    batch, pool = monitor["batch_size"], monitor["pool"]
    splits = [
        gather_everywhere(
            *extract_features(
                encoder, labelled_batches(ray.train.get_dataset_shard(name), batch), pool, device
            )
        )
        for name in (TRAIN_SPLIT, VAL_SPLIT)
    ]
    return knn_metrics(*splits, monitor["num_classes"], monitor["k"], monitor["temperature"])
