"""Parquet images in either layout: mimray's shards or a Hugging Face image set as published.

    mimray shards     image (binary, encoded bytes), label (int64), id (string)
    Hugging Face      an image struct {bytes, path} under any name (`image`, CIFAR-10's `img`,
                      ...) and a label column (`label`, `fine_label`, ...)

The image column is the one named by `data.image_column`, else `image`, else the only
column that holds encoded images (a struct with `bytes`, or binary); the label column is
`data.label_column`, else `label`. A name that is not there is one line listing the columns.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workloads.data.base import FIND_COLUMNS, Columns
from workloads.data.object_store import DataSourceError

# Written into every shard's schema too, so a shard copied without its manifest still
# knows what its labels mean.
CLASS_NAMES_METADATA_KEY = b"mimray.class_names"
HUGGINGFACE_METADATA_KEY = b"huggingface"
SHARD_SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("id", pa.string())])
_DEFAULT_LABEL = "label"


def resolve_columns(schema: pa.Schema, source: str, columns: Columns = FIND_COLUMNS) -> Columns:
    """The image and label column names of a Parquet schema; raises DataSourceError naming
    the source, what is missing and the columns present."""
    present = ", ".join(schema.names)
    image = columns.image or _find_image_column(schema)
    if image is None or image not in schema.names:
        wanted = f"image column {image!r}" if image else "an image column"
        raise DataSourceError(
            f"Parquet source {source!r}: no {wanted} (found {present}); name it with "
            "data.image_column"
        )
    if not _holds_images(schema.field(image).type):
        raise DataSourceError(
            f"Parquet source {source!r}: column {image!r} must be binary or a struct "
            f"{{bytes, path}}, found {schema.field(image).type}"
        )
    label = columns.label or _DEFAULT_LABEL
    if label not in schema.names:
        raise DataSourceError(
            f"Parquet source {source!r}: no label column {label!r} (found {present}); name it "
            "with data.label_column"
        )
    return Columns(image=image, label=label)


def read_columns(schema: pa.Schema, columns: Columns) -> list[str]:
    """The columns to read: image, label and the stable id when the file has one."""
    return [columns.image, columns.label] + (["id"] if "id" in schema.names else [])


def normalise_parquet_batch(
    batch: pa.RecordBatch | pa.Table,
    source_name: str,
    columns: Columns,
    first_row: int | None = None,
) -> tuple[list[bytes | None], np.ndarray, list[str]]:
    """Encoded bytes, labels and ids from a batch in either layout.

    Ids come from an `id` column, else the struct's `path`, else the row number within the
    file (when known) or a content hash, so that every row has a stable name.
    """
    image = batch.column(columns.image)
    paths: list[str | None] = [None] * batch.num_rows
    if pa.types.is_struct(image.type):
        if image.type.get_field_index("path") >= 0:
            paths = pc.struct_field(image, "path").to_pylist()
        image = pc.struct_field(image, "bytes")
    encoded = image.to_pylist()
    labels = np.asarray(batch.column(columns.label).fill_null(-1).to_numpy(), dtype=np.int64)
    if "id" in batch.schema.names:
        ids = [str(value) for value in batch.column("id").to_pylist()]
    else:
        ids = [
            path
            or (
                f"{source_name}/{first_row + row}"
                if first_row is not None
                else f"{source_name}/sha256:{hashlib.sha256(data or b'').hexdigest()[:16]}"
            )
            for row, (path, data) in enumerate(zip(paths, encoded, strict=True))
        ]
    return encoded, labels, ids


def class_names_from_schema(
    schema: pa.Schema, label_column: str = _DEFAULT_LABEL
) -> list[str] | None:
    """Class names stored in Parquet metadata by a push or by Hugging Face `datasets`."""
    metadata = schema.metadata or {}
    if CLASS_NAMES_METADATA_KEY in metadata:
        return [str(name) for name in json.loads(metadata[CLASS_NAMES_METADATA_KEY])]
    if HUGGINGFACE_METADATA_KEY in metadata:
        try:
            features = json.loads(metadata[HUGGINGFACE_METADATA_KEY])["info"]["features"]
            return [str(name) for name in features[label_column]["names"]]
        except (KeyError, TypeError, ValueError):
            return None
    return None


def class_names_from_labels(labels: pa.ChunkedArray | pa.Array) -> list[str]:
    """Names "0".."max" when a file stores no class names."""
    highest = pc.max(labels).as_py()
    return [str(label) for label in range(0 if highest is None else int(highest) + 1)]


def _find_image_column(schema: pa.Schema) -> str | None:
    if "image" in schema.names:
        return "image"
    candidates = [field.name for field in schema if _holds_images(field.type)]
    return candidates[0] if len(candidates) == 1 else None


def _holds_images(data_type: pa.DataType) -> bool:
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type):
        return True
    return pa.types.is_struct(data_type) and data_type.get_field_index("bytes") >= 0
