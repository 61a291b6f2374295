"""A decode task's chunk leaves the task as one block as soon as it is decoded, chunks are
whole across row groups, and a file is shared by the CPUs when there are fewer files than
CPUs (`workloads/data/decode_stage.py`: `chunk_rows`, `whole_chunks`, `parts_per_file`).

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
import ray
from PIL import Image

from orchestrator.evaluation.data import labelled_dataset
from workloads.data import build_dataset, describe_source
from workloads.data.decode_stage import (
    chunk_rows,
    decode_files,
    file_part,
    stream_settings,
)

IMG_SIZE = 224
# How long the fake decode waits for the consumer to see its first chunk before it gives up
# and decodes the next one anyway (a held chunk then leaves with it).
WAIT_S = 30.0


def test_a_chunk_leaves_the_task_before_the_next_is_decoded(ray_session, tmp_path):
    rows = chunk_rows(IMG_SIZE)
    seen = tmp_path / "consumer-saw-the-first-block"

    def decode_two_chunks(block: pa.Table, marker: str):
        """Stands for a Parquet file's decode: one chunk, then the next only once the
        consumer has the first (or after WAIT_S). The file is one row group: one part
        decodes it, the others nothing."""
        part, parts = block.column("part")[0].as_py(), block.column("parts")[0].as_py()
        if not file_part(1, part, parts):
            return
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


def write_jpeg_shard(path, groups: int, group: int) -> list[str]:
    """A Parquet shard of `groups` row groups of `group` tiny JPEGs; returns their ids."""
    encoded, ids = [], []
    for index in range(groups * group):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (index % 256, 0, 0)).save(buffer, format="JPEG")
        encoded.append(buffer.getvalue())
        ids.append(f"{path.stem}/{index}")
    table = pa.table(
        {
            "image": pa.array(encoded, pa.binary()),
            "label": pa.array(range(len(encoded)), pa.int64()),  # the row's place
            "id": ids,
        }
    )
    pq.write_table(table, path, row_group_size=group, compression="none")
    assert pq.ParquetFile(path).num_row_groups == groups
    return ids


def test_a_files_row_groups_are_decoded_in_whole_chunks(ray_session, tmp_path):
    """Row groups of 75 rows, chunks of 112: every block the stream hands out is a whole
    chunk (only each file's last is short), not a group's 75-row tail merged with the next
    group's rows by Ray's output buffer. As many files as CPUs: one task per file."""
    rows = chunk_rows(IMG_SIZE)
    files = int(ray.cluster_resources()["CPU"])
    for index in range(files):
        write_jpeg_shard(tmp_path / f"part-{index:05d}.parquet", groups=3, group=75)

    dataset = build_dataset(str(tmp_path), img_size=IMG_SIZE, keep=("image", "ok"))
    batches = dataset.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy")
    sizes = sorted(len(batch["ok"]) for batch in batches)
    assert sizes == [3 * 75 - 2 * rows] * files + [rows] * (2 * files), sizes


def test_a_file_is_shared_by_the_cpus(ray_session, tmp_path):
    """One shard of 8 row groups on a cluster with more CPUs than files: each CPU's task
    decodes a contiguous part of the row groups, and every image comes exactly once."""
    cpus = int(ray.cluster_resources()["CPU"])
    assert 8 % cpus == 0 and cpus > 1, cpus  # the shared Ray: 2 CPUs
    ids = write_jpeg_shard(tmp_path / "part-00000.parquet", groups=8, group=10)

    dataset = build_dataset(str(tmp_path), img_size=IMG_SIZE, keep=("id", "ok"))
    batches = dataset.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy")
    blocks = [list(batch["id"]) for batch in batches]
    assert sorted(len(block) for block in blocks) == [80 // cpus] * cpus, blocks
    assert sorted(sum(blocks, [])) == sorted(ids)
    for block in blocks:  # a part is contiguous: consecutive row groups of the file
        numbers = sorted(int(name.split("/")[1]) for name in block)
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers


def test_an_evaluation_reads_a_split_file_in_stored_order(ray_session, tmp_path):
    """Evaluations read in stored order (`labelled_dataset`: which images a `limit` keeps and
    the probe's feature order repeat from run to run): still so when the file is split."""
    write_jpeg_shard(tmp_path / "part-00000.parquet", groups=8, group=10)
    info = describe_source(str(tmp_path))
    labels = [
        int(label)
        for batch in labelled_dataset(info, 16, 0).iter_batches(batch_format="numpy")
        for label in batch["label"]
    ]
    assert labels == list(range(80)), labels
