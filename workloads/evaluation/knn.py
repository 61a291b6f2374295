"""k-nearest-neighbour classification on frozen features (cosine similarity).

Votes are weighted by exp(similarity / T), as in the kNN monitor of InstDisc/DINO; k = 1 is
plain 1-NN (the weight of a single vote does not matter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Queries per similarity block: bounds the (queries, bank) matrix at a few hundred MB.
_QUERY_CHUNK = 1024


@torch.no_grad()
def knn_predict(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    k: int,
    num_classes: int,
    temperature: float = 0.07,
) -> Tensor:
    """(N, D) bank features, (N,) labels, (Q, D) queries -> (Q,) predicted classes, computed
    on the device the tensors are on."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    predictions = []
    for chunk in queries.float().split(_QUERY_CHUNK):
        similarity = F.normalize(chunk, dim=1) @ bank.T  # (q, N) cosine
        top_similarity, top_index = similarity.topk(k, dim=1)  # (q, k)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, dtype=weights.dtype, device=chunk.device)
        votes.scatter_add_(1, bank_labels[top_index], weights)  # (q, C)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_top1(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    k: int,
    num_classes: int,
    temperature: float = 0.07,
) -> float:
    """Share of queries whose kNN prediction is their label."""
    predicted = knn_predict(bank, bank_labels, queries, k, num_classes, temperature)
    return (predicted == query_labels.to(predicted.device)).float().mean().item()
