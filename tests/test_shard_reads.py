"""How a decode task reads a stored shard from object storage, seen from the S3 server (moto
over HTTP, its own request recorder): each row group's columns come in one ranged GET, not one
request per column, and only the row groups being decoded are fetched, so a task holds at most
two row groups of encoded images however large the file."""

from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from servers import moto_requests

from workloads.data.object_store import filesystem_for
from workloads.data.parquet import read_columns, resolve_columns
from workloads.data.sources.stored import _decode_parquet_file

GROUPS, ROWS_PER_GROUP = 3, 6


def _shard() -> bytes:
    """A shard as `mimray data push` writes one (image, label, id), in three row groups."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(GROUPS * ROWS_PER_GROUP):
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)  # noise: ~7 KB each
        encoded = io.BytesIO()
        Image.fromarray(pixels).save(encoded, format="PNG")
        images.append(encoded.getvalue())
    count = len(images)
    table = pa.table(
        {
            "image": pa.array(images, pa.binary()),
            "label": pa.array([i % 2 for i in range(count)], pa.int64()),
            "id": pa.array([f"img-{i:03d}" for i in range(count)]),
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=ROWS_PER_GROUP)
    return out.getvalue()


def _row_group_spans(data: bytes) -> list[tuple[int, int]]:
    """[first byte, last byte] of each row group's column chunks in the file."""
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    spans = []
    for group in range(metadata.num_row_groups):
        chunks = [metadata.row_group(group).column(c) for c in range(metadata.num_columns)]
        starts = [
            min(o for o in (c.dictionary_page_offset, c.data_page_offset) if o) for c in chunks
        ]
        ends = [
            start + c.total_compressed_size - 1 for start, c in zip(starts, chunks, strict=True)
        ]
        spans.append((min(starts), max(ends)))
    return spans


def _ranges(requests: list[dict], key: str) -> list[tuple[int, int]]:
    """The byte ranges of the GETs of `key` among the recorded requests."""
    found = []
    for request in requests:
        headers = {name.lower(): value for name, value in request["headers"].items()}
        if request["method"] == "GET" and key in request["url"] and "range" in headers:
            first, last = re.fullmatch(r"bytes=(\d+)-(\d+)", headers["range"]).groups()
            found.append((int(first), int(last)))
    return found


def test_each_row_group_is_one_request_fetched_when_it_is_decoded(s3_env, s3_client, bucket):
    data = _shard()
    key = "pushed/part-00000.parquet"
    s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    spans = _row_group_spans(data)
    assert len(spans) == GROUPS

    filesystem, path = filesystem_for(f"s3://{bucket}/{key}")
    schema = pq.read_schema(path, filesystem=filesystem)
    columns = resolve_columns(schema, f"s3://{bucket}/pushed")
    with moto_requests(s3_env) as recorded:
        chunks = _decode_parquet_file(
            pa.table({"path": [path], "part": [0], "parts": [1]}),  # the whole file
            filesystem,
            read_columns(schema, columns),
            ROWS_PER_GROUP,
            img_size=32,
            augmentation=None,
            source_name="pushed",
            columns=columns,
        )
        first = next(chunks)
        before_first = _ranges(recorded(), key)
        rest = list(chunks)
        every = _ranges(recorded(), key)

    # What the reads were for: every row decoded.
    assert first["ok"].all()
    assert sum(len(c["ok"]) for c in [first, *rest]) == GROUPS * ROWS_PER_GROUP

    def overlapping(ranges, span):
        # Reads that end at the file's end are the footer's (pyarrow reads its last 64 KiB).
        data_reads = [r for r in ranges if r[1] != len(data) - 1]
        return [r for r in data_reads if r[0] <= span[1] and r[1] >= span[0]]

    # One GET per row group, covering all its columns.
    for span in spans:
        reads = overlapping(every, span)
        assert len(reads) == 1, f"row group {span}: GETs {reads}"
        assert reads[0][0] <= span[0] and reads[0][1] >= span[1], (reads, span)
    # When the first chunk came, nothing of the later row groups had been fetched.
    for span in spans[1:]:
        assert overlapping(before_first, span) == [], (before_first, spans)
