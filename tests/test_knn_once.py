"""kNN in a worker group is scored once, on rank 0's device, and every rank gets its numbers:
two real processes in a gloo process group (no Ray: the collective is torch's)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workloads.evaluation.knn_once import knn_once
from workloads.evaluation.protocols import knn_metrics

pytestmark = pytest.mark.slow  # two spawned processes importing torch


def _features(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(40, 8, generator=generator), torch.randint(0, 4, (40,), generator=generator)


def _worker(rank: int, port: int, results) -> None:  # noqa: ANN001 - a multiprocessing dict
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        train, val = _features(0), _features(1)
        mine = lambda split: (split[0][rank::2], split[1][rank::2])  # noqa: E731
        # Rank 1 gets a device nothing can be computed on: it must only receive the result.
        device = torch.device("cpu") if rank == 0 else torch.device("meta")
        results[rank] = knn_once(mine(train), mine(val), 4, k=5, temperature=0.1, device=device)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_knn_is_scored_on_rank_zero_and_shared():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
        results = dict(results)
    train, val = _features(0), _features(1)
    # The gathered bank is in rank order, not the original one: score the same order here.
    order = torch.cat([torch.arange(0, 40, 2), torch.arange(1, 40, 2)])
    expected = knn_metrics(
        (train[0][order], train[1][order]), (val[0][order], val[1][order]), 4, 5, 0.1
    )
    assert results[0] == results[1]
    assert {k: results[0][k] for k in expected} == expected
    assert results[0]["eval/train_images"] == 40.0
