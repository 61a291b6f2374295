"""Reading and decoding as one Ray Data stage: what makes ingest as fast as a DataLoader.

Encoded images are read (Parquet rows or image files), decoded, cropped and resized in the
same stage, into blocks of about 16 MiB of pixels. Three choices, each measured with
`benchmarks/data_throughput.py` on 2 CPUs (JPEG 224 px, 36 shards of 16 MB):

- **Read and decode in one stage.** As two operators (a read, then `map_batches` with a
  `batch_size`, which Ray does not fuse with a read) they split the CPUs and one stayed idle
  a third of the time: 0.55-0.65x a DataLoader. Decode functions here take whole read
  blocks and decode them `rows` at a time themselves, yielding each chunk (a generator keeps
  only one chunk of pixels in memory).
- **Long-lived decoders when a CPU runs several reads.** Ray Data notices a finished task
  after up to 100 ms (`ray.wait` in its scheduling loop) and only then starts the next: a CPU
  idled ~200 ms between tasks of ~650 ms. A pool of decoder actors, one per CPU, is handed its
  next file while it decodes the current one: 1.8-1.95 of 2 CPUs busy instead of 1.5-1.6. A
  pool costs its start-up (1.5-2 s per epoch here, about the gaps of 8 tasks), so it is used
  only when each decoder has more than `POOL_MIN_FILES_PER_DECODER` files to read: with
  fewer, tasks finish the epoch sooner (a 2,048-image training run with a pool of one
  decoder waited on data 41% of each 6 s epoch). In a pool the decoders read their own
  files (`from_items` of paths): Ray 2.60 fuses a read into an actor stage only sometimes,
  and an unfused read's tasks wait for the CPUs the decoders hold, a deadlock on a small
  cluster (seen here on 2 CPUs).
- **Columns are chosen inside the stage.** A `select_columns` after an actor stage would be
  a stage of its own (task -> actor fuses, actor -> task does not), and after a task stage it
  merges the chunks back into one block per read.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from workloads.data.base import ROW_COLUMNS

if TYPE_CHECKING:
    import pyarrow
    import ray.data

# The stream's block size: the first batch comes after one chunk, not after Ray's default
# 128 MiB, and the workers' streaming split gets fine-grained blocks to share.
BLOCK_BYTES = 16 * 2**20

# More files per decoder than this, and the gaps a pool saves outweigh its start-up.
POOL_MIN_FILES_PER_DECODER = 8

DecodeBlock = Callable[..., Iterator[dict[str, Any]]]


class KeepColumns:
    """Runs `decode(block, **options)` (a generator of column dicts) and keeps only `keep`.

    A class so that the same code serves as a task's function and as a pool's actor."""

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
    decoders: int | None = None,
    pool: bool = True,
    **options: Any,
) -> ray.data.Dataset:
    """One row per file (`path`), each file read and decoded by `decode(block, **options)`
    in the same stage, in a new file order every epoch when `order_seed` is set.

    `decoders`: the CPUs Ray Data may decode on (None: all of the cluster's). With `pool` and
    more than `POOL_MIN_FILES_PER_DECODER` files per decoder the stage runs in a pool of that
    many decoder actors (at least one must start; the others join as CPUs allow), else as one
    task per file. A pool holds its CPUs for the whole epoch: streams that share CPUs with
    others (sweep trials running at once) decode in tasks, which interleave. `keep` is
    checked by `build_dataset`, the entry point.
    """
    import ray.data

    decoders = decoders or cluster_cpus()
    paths = ray.data.from_items([{"path": path} for path in files], override_num_blocks=len(files))
    if order_seed is not None:
        # One file per block: reordering blocks reorders files, without moving any data.
        paths = paths.randomize_block_order(
            seed=ray.data.RandomSeedConfig(order_seed, reseed_after_execution=True)
        )
    if not pool or len(files) <= POOL_MIN_FILES_PER_DECODER * decoders:
        return decode_in_tasks(paths, decode, keep, options)
    with warnings.catch_warnings():
        # `max_restarts` has no named parameter in Ray 2.60, only the deprecated
        # `ray_remote_args` route, which warns.
        warnings.simplefilter("ignore", DeprecationWarning)
        stream = paths.map_batches(
            KeepColumns,
            fn_constructor_kwargs={"decode": decode, "keep": keep, "options": options},
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(
                min_size=1, max_size=decoders, initial_size=decoders
            ),
            # Ray Data's default (restart forever) logs an error line about restarts in
            # every epoch (ray#53727); a decoder that dies fails the epoch, and the run
            # goes on from its last checkpoint as after any worker failure.
            max_restarts=0,
        )
    stream.context.target_max_block_size = BLOCK_BYTES
    return stream


def decode_in_tasks(
    dataset: ray.data.Dataset,
    decode: DecodeBlock,
    keep: Sequence[str] = ROW_COLUMNS,
    options: dict[str, Any] | None = None,
) -> ray.data.Dataset:
    """`dataset`'s blocks decoded by `decode` in tasks, fused with the read before it (no
    `batch_size`: Ray fuses a read only into a map that takes whole blocks)."""
    stream = dataset.map_batches(KeepColumns(decode, keep, options or {}), batch_format="pyarrow")
    stream.context.target_max_block_size = BLOCK_BYTES
    return stream


def in_chunks(block: pyarrow.Table, rows: int) -> Iterator[pyarrow.Table]:
    """`block` `rows` at a time (zero-copy slices)."""
    for start in range(0, block.num_rows, rows):
        yield block.slice(start, rows)


def read_tasks_for(num_files: int, rows: int) -> int:
    """Read tasks for `num_files` single-image files: about `rows` images each, so a task's
    work outweighs its scheduling and its decoded output is one or two chunks."""
    return max(1, math.ceil(num_files / rows))


def cluster_cpus() -> int:
    import ray

    return max(1, math.floor(ray.cluster_resources().get("CPU", 1.0)))
