"""The batches one worker draws from its stream: rows mixed within every batch and a new order
every epoch, at a data size larger than the worker's shuffle buffer. Real Ray Data.

The stream is the trainer's (`orchestrator.pretrain.trainer.training_stream`), iterated with the
worker loop's batch settings (`workloads.data.stream.batch_shuffle_options`). 128 built-in
images come as one block here, so Ray Data's per-epoch block reshuffle moves nothing: what
reorders rows is the worker's buffer alone (16 rows, an eighth of the data); batches are
also compared as sets, which a reorder of whole blocks would keep. Crop and flip
are off, so a row is known by its pixels and its stored position read back from a pass in
stored order. (The same worker path end to end, through the loop itself, is checked by
`test_tiny_lr_run.py`.)
"""

from __future__ import annotations

import hashlib

import numpy as np
from tiny_model import TINY_MODEL

from orchestrator.config import load_spec
from orchestrator.pretrain.trainer import training_stream
from workloads.data.stream import PREFETCH_BATCHES, batch_shuffle_options

IMAGES, BUFFER, BATCH = 128, 16, 32
SETTINGS = [
    *TINY_MODEL,
    "data.source=shapes",
    f"data.num_images={IMAGES}",
    f"data.shuffle_buffer={BUFFER}",
    "data.crop_scale=null",
    "data.hflip=false",
    f"train.batch_size={BATCH}",
    "train.seed=5",
]


def row_key(image) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


def stored_positions() -> dict[str, int]:
    """Each row's position in stored order (the stream with shuffling off)."""
    spec = load_spec(None, [*SETTINGS, "data.shuffle=none"])
    rows = training_stream(spec).iter_torch_batches(batch_size=IMAGES)
    keys = [row_key(image) for batch in rows for image in batch["image"]]
    assert len(set(keys)) == IMAGES  # every image tells itself apart
    return {key: position for position, key in enumerate(keys)}


def worker_epochs(epochs: int = 2) -> list[list[list[int]]]:
    """The stored position of every row of every batch, per epoch, as one worker draws them."""
    spec = load_spec(None, SETTINGS)
    assert spec.data.shuffle == "buffer" and IMAGES > spec.data.shuffle_buffer
    positions = stored_positions()
    iterator = training_stream(spec).iterator()
    seen = []
    for epoch in range(epochs):
        options = batch_shuffle_options(
            spec.data.shuffle, spec.data.shuffle_buffer, spec.train.seed, epoch, rank=0
        )
        batches = iterator.iter_torch_batches(
            batch_size=BATCH, drop_last=True, prefetch_batches=PREFETCH_BATCHES, **options
        )
        seen.append([[positions[row_key(image)] for image in b["image"]] for b in batches])
    return seen


def test_a_workers_batches_mix_rows_and_change_every_epoch(ray_session):
    epochs = worker_epochs()
    orders = [np.concatenate(batches) for batches in epochs]
    for order in orders:
        assert sorted(order.tolist()) == list(range(IMAGES))  # every row once an epoch
        # Rows that follow each other in storage do not follow each other in a batch (stored
        # order: every pair does; a 16-row buffer: about one in 16).
        neighbours = np.mean(np.diff(order) == 1)
        assert neighbours < 0.3, order
    # Epoch 2 draws other batches in another order, although the stored order is the same.
    same_place = np.mean(orders[0] == orders[1])
    assert same_place < 0.3, (orders[0], orders[1])
    first_sets = [frozenset(batch) for batch in epochs[0]]
    assert all(frozenset(batch) not in first_sets for batch in epochs[1])
