"""Reading and decoding as one Ray Data stage, with the settings that bring it closest to a
DataLoader's pace (`benchmarks/README.md` has how close, on 2 CPUs).

Encoded images are read (Parquet rows or image files), decoded, cropped and resized in the
same task, into blocks of about 16 MiB of pixels. Each choice here was measured with
`benchmarks/data_throughput.py` on 2 CPUs (`benchmarks/README.md` has the tables):

- **Read and decode in one stage.** As two operators (a read, then `map_batches` with a
  `batch_size`, which Ray does not fuse with a read) they split the CPUs and one stayed idle
  a third of the time. Decode functions here take whole read blocks and decode them `rows`
  at a time themselves, yielding each chunk (a generator keeps one chunk of pixels in memory).
- **No operator resource reservation** (`DataContext.op_resource_reservation_enabled`). Ray
  2.60 budgets each operator from what its autoscaling coordinator has granted the
  execution, an answer that comes back asynchronously: for the first second of every epoch
  the budget was zero and one task ran on 2 CPUs, and afterwards a finished task's CPU went
  back to the budget only on a later scheduling round, leaving a CPU idle 150-250 ms between
  tasks of 350-750 ms (traced per task). Without the reservation, Ray's own scheduler hands
  out the CPUs: both decode from the first 40 ms, 10 ms between tasks. CPUs stay bounded by
  what Ray has (Train workers hold theirs in placement groups).
- **Two decode tasks in flight per CPU** (`TASKS_PER_CPU`): one decoding, one queued behind
  it at Ray's scheduler, so a CPU never waits for the executor to submit the next. This is
  also the memory bound that the reservation gave: without a cap every task is submitted at
  once and, behind a consumer slower than the decoders (training), the whole 2 GiB object
  store filled and spilled; with two per CPU it peaked at ~420 MiB (~540 MiB with the
  reservation). One per CPU brought the gaps back (JPEG 1,300 img/s, PNG 64 px -30%).
- **Eight blocks of buffer per decode task** (`_max_num_blocks_in_streaming_gen_buffer`,
  two by default): a task pauses when that many of its blocks wait for the executor, which
  runs in the consumer's process and, on a busy node, takes them late. 1,430 -> 1,580
  images/s for JPEG 224 px; first batch 2.2 -> 0.7 s.
- **Those buffers bounded by memory, not only by CPUs** (`decode_plan`): tasks × blocks ×
  16 MiB stays under `OBJECT_STORE_SHARE` of the cluster's object store. Two tasks per CPU
  with eight blocks each would be 48 GiB at 192 vCPUs; a node's store (30% of its memory by
  Ray's default, at most 200 GB) holds that on an 8-GPU machine with 1-2 TiB, not on a
  smaller one. Where it does not fit, each task keeps fewer blocks first (down to one),
  then fewer tasks run (memory, not CPUs, is then what bounds the stage).
- **Files split when there are fewer than CPUs** (`parts_per_file`). A task decodes one
  file, so a data set of fewer shards than CPUs left CPUs idle (one 73 MB shard on 2 CPUs:
  1,200-1,290 images/s steady; split in two, 2,080-2,240). Only then: splitting further, to
  fill the queued second task per CPU, delayed the first batch by ~0.2 s for no throughput.
- **Tasks, not a pool of decoder actors.** A pool's actors start in every epoch (1.5-2 s
  here before the first batch); with the two settings above tasks have no gaps left to save.
- **Columns are chosen inside the stage.** A `select_columns` after a task stage merges the
  chunks back into one block per read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workloads.data.base import ROW_COLUMNS

if TYPE_CHECKING:
    import pyarrow
    import ray.data

# The stream's block size: the first batch comes after one chunk, not after Ray's default
# 128 MiB, and the workers' streaming split gets fine-grained blocks to share.
BLOCK_BYTES = 16 * 2**20
# Blocks a decode task may have waiting for the executor before it pauses.
TASK_OUTPUT_BUFFER_BLOCKS = 8
# Decode tasks in flight per cluster CPU: one running, one queued.
TASKS_PER_CPU = 2
# The columns of `decode_files`'s rows: a file and which of its parts to decode.
PART_COLUMNS = ("path", "part", "parts")
# The most parts a file is split into for parallel decode: a pushed shard (128 MiB) holds
# eight row groups of 16 MiB.
MAX_PARTS_PER_FILE = 8
# The share of the cluster's object store that decode tasks' waiting blocks may fill: the
# rest is for the blocks the consumers hold (prefetched batches, the workers' split) and for
# everything else on the node.
OBJECT_STORE_SHARE = 0.25

DecodeBlock = Callable[..., Iterator[dict[str, Any]]]


@dataclass(frozen=True)
class DecodePlan:
    """How many decode tasks run at once and how many blocks each may have waiting."""

    tasks: int
    buffer_blocks: int

    @property
    def buffer_bytes(self) -> int:
        """The most the tasks' waiting blocks hold in the object store."""
        return self.tasks * self.buffer_blocks * BLOCK_BYTES


def decode_plan(cpus: float, object_store_bytes: float) -> DecodePlan:
    """`TASKS_PER_CPU` tasks per CPU with `TASK_OUTPUT_BUFFER_BLOCKS` blocks each, unless that
    exceeds `OBJECT_STORE_SHARE` of `object_store_bytes`: then fewer blocks per task, down
    to one, then fewer tasks (at least one)."""
    budget_blocks = math.floor(OBJECT_STORE_SHARE * object_store_bytes / BLOCK_BYTES)
    tasks = TASKS_PER_CPU * max(1, math.floor(cpus))
    blocks = min(TASK_OUTPUT_BUFFER_BLOCKS, budget_blocks // tasks)
    if blocks >= 1:
        return DecodePlan(tasks, blocks)
    return DecodePlan(max(1, budget_blocks), 1)


def cluster_decode_plan() -> DecodePlan:
    """`decode_plan` for the cluster as it is when the stream is built."""
    import ray

    resources = ray.cluster_resources()
    return decode_plan(resources.get("CPU", 1.0), resources.get("object_store_memory", 0.0))


class KeepColumns:
    """Runs `decode(block, **options)` (a generator of column dicts) and keeps only `keep`."""

    def __init__(self, decode: DecodeBlock, keep: Sequence[str], options: dict[str, Any]) -> None:
        self.decode, self.keep, self.options = decode, tuple(keep), options

    def __call__(self, block: pyarrow.Table) -> Iterator[dict[str, Any]]:
        for decoded in self.decode(block, **self.options):
            yield {name: decoded[name] for name in self.keep}


def decode_files(
    files: Sequence[str],
    decode: DecodeBlock,
    *,
    order_seed: int | None,
    keep: Sequence[str] = ROW_COLUMNS,
    **options: Any,
) -> ray.data.Dataset:
    """One row per file part (`path`, `part`, `parts`), each part read and decoded by
    `decode(block, **options)` in one task, in a new order every epoch when `order_seed` is
    set. `decode` reads only its part of a file (`file_part`). `keep` is checked by
    `build_dataset`, the entry point."""
    import ray.data

    # The CPUs the stage decodes on: its plan's tasks, which memory may have bounded.
    cpus = math.ceil(cluster_decode_plan().tasks / TASKS_PER_CPU)
    parts = parts_per_file(len(files), cpus)
    items = [
        {"path": path, "part": part, "parts": parts} for path in files for part in range(parts)
    ]
    rows = ray.data.from_items(items, override_num_blocks=len(items))
    if order_seed is not None:
        # One part per block: reordering blocks reorders parts, without moving any data.
        rows = rows.randomize_block_order(
            seed=ray.data.RandomSeedConfig(order_seed, reseed_after_execution=True)
        )
    return decode_in_tasks(rows, decode, keep, options)


def parts_per_file(num_files: int, cpus: int) -> int:
    """Parts each file is split into so that every CPU has one to decode: a task decodes one
    part, so 24 shards on a 192-vCPU node kept 24 CPUs busy and left 168 idle. Files are
    split only when there are fewer of them than CPUs (each task costs ~11 ms besides its
    images, and on 2 CPUs four half-files instead of two files delayed the first batch by
    ~0.2 s: `benchmarks/README.md`), and into at most `MAX_PARTS_PER_FILE`."""
    return max(1, min(MAX_PARTS_PER_FILE, math.ceil(cpus / max(1, num_files))))


def file_part(count: int, part: int, parts: int) -> range:
    """Part `part` of `parts` of a file's `count` row groups: contiguous, every group in
    exactly one part (a part may be empty when there are fewer groups than parts)."""
    return range(part * count // parts, (part + 1) * count // parts)


def decode_in_tasks(
    dataset: ray.data.Dataset,
    decode: DecodeBlock,
    keep: Sequence[str] = ROW_COLUMNS,
    options: dict[str, Any] | None = None,
) -> ray.data.Dataset:
    """`dataset`'s blocks decoded by `decode` in tasks, fused with the read before it (no
    `batch_size`: Ray fuses a read only into a map that takes whole blocks)."""
    import ray.data

    return dataset.map_batches(
        KeepColumns(decode, keep, options or {}),
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=cluster_decode_plan().tasks),
    )


def stream_settings(dataset: ray.data.Dataset) -> ray.data.Dataset:
    """`dataset` with the execution settings above, for every source's stream. They live in
    the dataset's own context, which the datasets derived from it share."""
    context = dataset.context
    context.target_max_block_size = BLOCK_BYTES
    context.op_resource_reservation_enabled = False
    # Private in Ray 2.60 (no public knob); a Ray without it keeps its default.
    if hasattr(context, "_max_num_blocks_in_streaming_gen_buffer"):
        context._max_num_blocks_in_streaming_gen_buffer = cluster_decode_plan().buffer_blocks
    return dataset


def chunk_rows(img_size: int) -> int:
    """Rows a decode task decodes and yields at a time: one more than `BLOCK_BYTES` of
    (img_size, img_size, 3) pixels hold.

    Ray Data's output buffer passes a task's output on only once it *exceeds* the stream's
    block size (`target_max_block_size`), and splits it when it reaches 1.5 times that. A
    chunk at or under `BLOCK_BYTES` therefore waited inside the task until the next chunk
    was decoded, and the two were concatenated (a copy of every pixel) and cut again: the
    stream's first block came out after two chunks' work. A chunk just over it leaves as
    the block it is, as soon as it is decoded. A task's last chunk leaves when the task ends.
    """
    return BLOCK_BYTES // (img_size * img_size * 3) + 1


def in_chunks(block: pyarrow.Table, rows: int) -> Iterator[pyarrow.Table]:
    """`block` `rows` at a time (zero-copy slices)."""
    for start in range(0, block.num_rows, rows):
        yield block.slice(start, rows)


def whole_chunks(batches: Iterable[pyarrow.RecordBatch], rows: int) -> Iterator[pyarrow.Table]:
    """`batches` regrouped `rows` at a time, across their boundaries; only the last chunk may
    be shorter. Zero-copy: a chunk that spans batches is a table of their slices.

    A Parquet file's row groups rarely hold a whole number of chunks. Read group by group,
    each group's short tail was a chunk under `BLOCK_BYTES` that waited inside the task for
    the next one, and Ray's output buffer then copied the two into one block and cut it
    again (`chunk_rows`)."""
    import pyarrow as pa

    pending: list[pyarrow.RecordBatch] = []
    count = 0
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            take = min(rows - count, batch.num_rows - start)
            pending.append(batch.slice(start, take))
            count, start = count + take, start + take
            if count == rows:
                yield pa.Table.from_batches(pending)
                pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def read_tasks_for(num_files: int, rows: int) -> int:
    """Read tasks for `num_files` single-image files: about `rows` images each, so a task's
    work outweighs its scheduling and its decoded output is one or two chunks."""
    return max(1, math.ceil(num_files / rows))
