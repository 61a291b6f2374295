"""Images in storage: an `s3://` prefix, or a local folder or file of Parquet, read streaming.

A location holds one of three layouts:

    shards       manifest.json + Parquet shards from `mimray data push` (exactly those shards)
    parquet      Parquet files without a manifest: mimray's columns, or a Hugging Face image
                 set as published (see `workloads/data/parquet.py` for the columns)
    image-files  image files under class sub-folders (`prefix/<class>/<file>`), object storage

Which layout a location holds is found by `workloads/data/stored_layout.py` (a listing and
metadata only); this module reads it. Images are decoded (and augmented, for training) inside
Ray Data's `map_batches`, so decoding overlaps training. A location holds one split:
evaluations name their val location.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from workloads.data.base import (
    FIND_COLUMNS,
    ROW_COLUMNS,
    Augmentation,
    Columns,
    DatasetInfo,
    DataSource,
    PushRows,
    check_num_images,
    object_array,
)
from workloads.data.decode import decode_images
from workloads.data.decode_stage import (
    PART_COLUMNS,
    chunk_rows,
    decode_files,
    file_part,
    whole_chunks,
)
from workloads.data.object_store import S3Settings
from workloads.data.registry import allowed_sources
from workloads.data.sources.folder import decode_class_file_list
from workloads.data.stored_layout import (
    describe_layout,
    open_parquet,
    resolve_layout,
    settings_for,
    validate_location,
)

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.fs
    import pyarrow.parquet
    import ray.data


class StoredSource(DataSource):
    """`s3://bucket/prefix`, or a local folder/file written by `mimray data push` or Parquet."""

    kind = "stored"
    priority = 10
    one_split_per_location = True

    def claims(self, source: str) -> bool:
        if "://" in source:
            return True  # unsupported schemes are claimed so that `validate` names them
        path = os.path.expanduser(source)
        if os.path.isfile(path):
            return path.endswith(".parquet")
        return os.path.isfile(os.path.join(path, "manifest.json")) or any(
            name.endswith(".parquet") for name in _listdir(path)
        )

    def validate(self, source: str) -> None:
        validate_location(source, what="data source", allowed=allowed_sources())

    def describe(
        self, source: str, *, split: str, num_images: int | None, seed: int, columns: Columns
    ) -> DatasetInfo:
        check_num_images(num_images)
        info = describe_stored(source, columns=columns)
        num_rows = min(info.num_rows, num_images) if num_images else info.num_rows
        return DatasetInfo(
            source, num_rows, info.class_names, split, self.kind, info.digest, info.max_side
        )

    def build(
        self,
        source: str,
        *,
        img_size: int,
        split: str,
        num_images: int | None,
        seed: int,
        augmentation: Augmentation | None,
        order_seed: int | None,
        columns: Columns,
        keep: Sequence[str] = ROW_COLUMNS,
    ) -> ray.data.Dataset:
        check_num_images(num_images)
        filesystem, layout = resolve_layout(source, columns=columns)
        if layout.kind == "image-files":
            dataset = decode_class_file_list(
                layout.files,
                root=layout.root,
                class_names=layout.class_names,
                img_size=img_size,
                augmentation=augmentation,
                order_seed=order_seed,
                keep=keep,
                filesystem=filesystem,
            )
        else:
            import pyarrow.parquet as pq

            from workloads.data.parquet import read_columns

            schema = pq.read_schema(layout.files[0], filesystem=filesystem)
            dataset = decode_files(
                layout.files,
                _decode_parquet_file,
                order_seed=order_seed,
                keep=keep,
                rows=chunk_rows(img_size),
                img_size=img_size,
                augmentation=augmentation,
                filesystem=filesystem,
                read_columns=read_columns(schema, layout.columns),
                source_name=posixpath.basename(layout.root),
                columns=layout.columns,
            )
        return dataset.limit(num_images) if num_images else dataset

    def push_rows(
        self, source: str, *, img_size: int, split: str, num_images: int | None, columns: Columns
    ) -> PushRows:
        import pyarrow.parquet as pq

        from workloads.data.parquet import normalise_parquet_batch, read_columns

        filesystem, layout = resolve_layout(source, columns=columns)
        info = describe_layout(source, filesystem, layout)  # one listing, not two
        num_rows = min(info.num_rows, num_images) if num_images else info.num_rows
        if layout.kind == "image-files":
            files = layout.files[:num_rows]
            class_index = {name: index for index, name in enumerate(info.class_names)}

            def read_files(positions: np.ndarray) -> tuple[list[bytes], np.ndarray, list[str]]:
                chosen = [files[position] for position in positions]
                ids = [posixpath.relpath(path, layout.root) for path in chosen]
                labels = [class_index[i.split("/", 1)[0]] for i in ids]
                encoded = [_read_file(filesystem, path) for path in chosen]
                return encoded, np.asarray(labels, dtype=np.int64), ids

            return PushRows(num_rows, info.class_names, read_files)
        # Parquet is read whole (image bytes only): random access by row needs it in memory.
        schema = pq.read_schema(layout.files[0], filesystem=filesystem)
        table = pq.read_table(
            layout.files, filesystem=filesystem, columns=read_columns(schema, layout.columns)
        ).slice(0, num_rows)
        # Ids from row numbers in the whole table, so they do not depend on push order.
        encoded, labels, ids = normalise_parquet_batch(
            table, posixpath.basename(layout.root), layout.columns, first_row=0
        )

        def read_rows(positions: np.ndarray) -> tuple[list[bytes | None], np.ndarray, list[str]]:
            return [encoded[p] for p in positions], labels[positions], [ids[p] for p in positions]

        return PushRows(num_rows, info.class_names, read_rows)


def describe_stored(
    uri: str, settings: S3Settings | None = None, columns: Columns = FIND_COLUMNS
) -> DatasetInfo:
    """Row count, class names and digest at `uri`: from the manifest when there is one, else
    from Parquet footers (plus the label column when no class names are stored) or a listing."""
    return describe_layout(uri, *resolve_layout(uri, settings_for(uri, settings), columns))


def sample_ids(uri: str, count: int = 5, settings: S3Settings | None = None) -> list[str]:
    """The ids of the first `count` rows at `uri`, read without decoding any image."""
    from workloads.data.parquet import normalise_parquet_batch, read_columns

    settings = settings_for(uri, settings)
    filesystem, layout = resolve_layout(uri, settings)
    if layout.kind == "image-files":
        return [posixpath.relpath(path, layout.root) for path in layout.files[:count]]
    first_file = open_parquet(filesystem, layout.files[0])
    columns = read_columns(first_file.schema_arrow, layout.columns)
    for batch in first_file.iter_batches(batch_size=count, columns=columns):
        name = posixpath.basename(layout.files[0])
        return normalise_parquet_batch(batch, name, layout.columns, first_row=0)[2][:count]
    return []


def _decode_parquet_file(
    block: pyarrow.Table,
    filesystem: pyarrow.fs.FileSystem,
    read_columns: list[str],
    rows: int,
    **options: object,
) -> Iterator[dict[str, np.ndarray]]:
    """The parts of Parquet files named in `block` (`path`, `part`, `parts`: `decode_files`),
    decoded `rows` at a time across row groups, streaming: at most two row groups' encoded
    columns and one chunk of decoded rows in memory at a time."""
    for path, part, parts in zip(
        *(block.column(name).to_pylist() for name in PART_COLUMNS), strict=True
    ):
        parquet_file = open_parquet(filesystem, path, pre_buffer=True)
        groups = file_part(parquet_file.num_row_groups, part, parts)
        for chunk in whole_chunks(
            _row_group_batches(parquet_file, groups, read_columns, rows), rows
        ):
            yield _decode_parquet_batch(chunk, **options)


def _row_group_batches(
    parquet_file: pyarrow.parquet.ParquetFile,
    groups: range,
    read_columns: list[str],
    rows: int,
) -> Iterator[pyarrow.RecordBatch]:
    """The record batches of a file's row `groups`, group by group: a pre-buffered reader
    fetches every row group it is asked for up front."""
    for group in groups:
        yield from parquet_file.iter_batches(rows, row_groups=[group], columns=read_columns)


def _decode_parquet_batch(
    batch: pyarrow.Table,
    img_size: int,
    augmentation: Augmentation | None,
    source_name: str,
    columns: Columns,
) -> dict[str, np.ndarray]:
    from workloads.data.parquet import normalise_parquet_batch

    encoded, labels, ids = normalise_parquet_batch(batch, source_name, columns)
    images, ok = decode_images(
        encoded, img_size, augmentation=augmentation, rng=np.random.default_rng()
    )
    return {"image": images, "label": labels, "id": object_array(ids), "ok": ok}


def _read_file(filesystem: pyarrow.fs.FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


SOURCE = StoredSource()
