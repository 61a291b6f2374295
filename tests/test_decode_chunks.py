"""A decode task's chunk leaves the task as one block as soon as it is decoded
(`workloads/data/decode_stage.py`, `chunk_rows`).

Ray Data's output buffer passes a task's output on only once it exceeds the stream's block
size; a chunk at or under it waited in the task for the next chunk (the first batch came
after two chunks' work, and every pixel was copied once more to merge them).
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from workloads.data import build_dataset
from workloads.data.decode_stage import chunk_rows, decode_files, stream_settings

IMG_SIZE = 224
# How long the fake decode waits for the consumer to see its first chunk before it gives up
# and decodes the next one anyway (a held chunk then leaves with it).
WAIT_S = 30.0


def test_a_chunk_leaves_the_task_before_the_next_is_decoded(ray_session, tmp_path):
    rows = chunk_rows(IMG_SIZE)
    seen = tmp_path / "consumer-saw-the-first-block"

    def decode_two_chunks(block: pa.Table, marker: str):
        """Stands for a Parquet file's decode: one chunk, then the next only once the
        consumer has the first (or after WAIT_S)."""
        pixels = np.zeros((rows, IMG_SIZE, IMG_SIZE, 3), dtype=np.uint8)
        yield {"image": pixels, "ok": np.ones(rows, dtype=bool)}
        deadline = time.monotonic() + WAIT_S
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield {"image": pixels[:10], "ok": np.ones(10, dtype=bool)}

    dataset = stream_settings(
        decode_files(
            ["one-file"],
            decode_two_chunks,
            order_seed=None,
            keep=("image", "ok"),
            marker=str(seen),
        )
    )
    started = time.monotonic()
    sizes = []
    for batch in dataset.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy"):
        if not sizes:
            waited = time.monotonic() - started
            seen.touch()
        sizes.append(len(batch["ok"]))
    assert sizes[0] == rows, sizes  # the first chunk, whole, on its own
    assert sum(sizes) == rows + 10, sizes
    assert waited < WAIT_S, f"the first block came after {waited:.1f} s: held for the next chunk"


def test_a_files_row_groups_are_decoded_in_whole_chunks(ray_session, tmp_path):
    """Row groups of 75 rows, chunks of 112: every block the stream hands out is a whole
    chunk (only the file's last is short), not a group's 75-row tail merged with the next
    group's rows by Ray's output buffer."""
    rows = chunk_rows(IMG_SIZE)
    group, groups = 75, 3
    encoded = []
    for index in range(group * groups):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (index % 256, 0, 0)).save(buffer, format="JPEG")
        encoded.append(buffer.getvalue())
    table = pa.table(
        {
            "image": pa.array(encoded, pa.binary()),
            "label": pa.array([0] * len(encoded), pa.int64()),
            "id": [f"image-{index}" for index in range(len(encoded))],
        }
    )
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path, row_group_size=group, compression="none")
    assert pq.ParquetFile(path).num_row_groups == groups

    dataset = build_dataset(str(path), img_size=IMG_SIZE, keep=("image", "ok"))
    batches = dataset.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy")
    sizes = [len(batch["ok"]) for batch in batches]
    assert sizes == [rows, rows, group * groups - 2 * rows], sizes
