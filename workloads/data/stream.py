"""The training stream: what each Train worker iterates, in a new random order every epoch.

Ray Data keeps stored order unless asked, so mimray asks at three levels, chosen by cost
(`data.shuffle`):

    buffer (default)  file/block order reshuffled every epoch by Ray Data (cheap: no data
                      moves), plus a local shuffle buffer of `data.shuffle_buffer` rows in each
                      worker's batch iterator, seeded from (train.seed, epoch, rank)
    full              a full `random_shuffle` every epoch: every row can meet every other
                      (moves the whole dataset through the object store; small data only)
    none              stored order (for debugging the pipeline itself)

Repeatability: the orders are seeded from `train.seed` and reseeded per epoch, so epoch e of
a run is repeatable where Ray Data's execution is deterministic; with several read or decode
tasks in flight, rows can still arrive in a different interleaving (Ray's own caveat). Crops
and flips draw fresh entropy and are not repeatable. After a resume, each epoch's buffer seed
is its own epoch's; Ray Data counts file/block reshuffles per driver process, so the resumed
driver's first epoch gets a first epoch's file order.
"""

from __future__ import annotations

from typing import Any

SHUFFLE_MODES = ("buffer", "full", "none")
# What pretraining consumes: labels and ids stay out of the stream (strings do not convert to
# tensors, and the worker has no use for labels). Sources drop the rest while decoding.
PRETRAINING_COLUMNS = ("image", "ok")
# Batches each worker's `iter_torch_batches` fetches ahead (Ray's default). Ray 2.60's
# prefetcher hands out no block before it holds this many batches of rows plus the next
# block, so each batch of lookahead delays every epoch's first batch by about one block's
# decode; the blocks are already in the node's object store, and the batch being collated
# in the background thread overlaps the training step either way.
PREFETCH_BATCHES = 1


def pretraining_view(dataset: Any, shuffle: str, seed: int) -> Any:
    """A source's `PRETRAINING_COLUMNS` stream, shuffled as asked."""
    import ray.data

    if shuffle == "full":
        dataset = dataset.random_shuffle(
            seed=ray.data.RandomSeedConfig(seed, reseed_after_execution=True)
        )
    return dataset


def order_seed(shuffle: str, seed: int) -> int | None:
    """The seed of a source's file/block order randomisation (None: keep stored order)."""
    return None if shuffle == "none" else seed


def batch_shuffle_options(
    shuffle: str, buffer_rows: int, seed: int, epoch: int, rank: int
) -> dict[str, int]:
    """Keyword arguments of `iter_torch_batches` for one worker's epoch."""
    if shuffle != "buffer":
        return {}
    # Distinct per run seed, epoch and worker, and the same on a rerun.
    return {
        "local_shuffle_buffer_size": buffer_rows,
        "local_shuffle_seed": (seed * 1_000_003 + epoch * 1_009 + rank) % 2**32,
    }
