"""The on-storage format of `mimray data push`: Parquet shards plus a manifest.

    DEST/part-00000.parquet   columns image (binary, encoded file bytes), label (int64), id
    DEST/part-00001.parquet   ...
    DEST/manifest.json        {"format", "num_rows", "class_names", "shards", "digest"}

Images stay encoded (PNG for the built-in datasets, the original file bytes for folders and
Parquet inputs): that is several times smaller than pixels, and decoding happens in Ray Data
next to training anyway. Packing many images per object matters on object storage, where a
request per image costs more than the image.

The manifest is written last, so its presence marks a complete push; readers use exactly the
shards it lists, and its digest (sha256 over the shards' sha256s) names the data a run used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs
import pyarrow.parquet as pq

from workloads.data import folder
from workloads.data.object_store import (
    DataSourceError,
    S3Settings,
    check_reachable,
    filesystem_for,
    is_s3_uri,
)

MANIFEST_FORMAT = "mimray-shards/1"
MANIFEST_NAME = "manifest.json"
DEFAULT_SHARD_BYTES = 128 * 2**20
# Written into every shard's schema too, so a shard copied without its manifest still
# knows what its labels mean.
CLASS_NAMES_METADATA_KEY = b"mimray.class_names"
HUGGINGFACE_METADATA_KEY = b"huggingface"
SHARD_SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("id", pa.string())])
_SHARD_NAME = re.compile(r"^part-\d{5}\.parquet$")
_ENCODE_BATCH_ROWS = 64  # rows rendered and PNG-encoded at a time: bounds memory, paces progress
_ROW_GROUP_BYTES = 16 * 2**20  # row groups small enough that a reader streams a shard in parts

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it; `path` is relative to the manifest's folder."""

    path: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """What a push wrote: the exact shards, their checksums and the class names."""

    num_rows: int
    class_names: list[str]
    shards: list[ShardInfo] = field(default_factory=list)
    format: str = MANIFEST_FORMAT

    @property
    def digest(self) -> str:
        """sha256 over the shard checksums in order: one string that names the dataset."""
        return hashlib.sha256("".join(s.sha256 for s in self.shards).encode()).hexdigest()

    def to_json(self) -> str:
        document = {
            "format": self.format,
            "num_rows": self.num_rows,
            "class_names": list(self.class_names),
            "shards": [shard.__dict__ for shard in self.shards],
            "digest": self.digest,
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = MANIFEST_NAME) -> Manifest:
        """Parse and check a manifest; `source` names it in errors."""
        try:
            document = json.loads(text)
            if document.get("format") != MANIFEST_FORMAT:
                raise DataSourceError(
                    f"manifest {source!r}: format {document.get('format')!r}, "
                    f"expected {MANIFEST_FORMAT!r}"
                )
            manifest = cls(
                num_rows=int(document["num_rows"]),
                class_names=[str(name) for name in document["class_names"]],
                shards=[ShardInfo(**shard) for shard in document["shards"]],
            )
        except (ValueError, KeyError, TypeError) as error:
            if isinstance(error, DataSourceError):
                raise
            raise DataSourceError(f"manifest {source!r} is malformed: {error}") from None
        if document.get("digest") not in (None, manifest.digest):
            raise DataSourceError(f"manifest {source!r}: digest does not match its shard list")
        if sum(shard.rows for shard in manifest.shards) != manifest.num_rows:
            raise DataSourceError(f"manifest {source!r}: shard rows do not add up to num_rows")
        return manifest


def read_manifest(uri: str, settings: S3Settings | None = None) -> Manifest | None:
    """The manifest of a pushed dataset at `uri`, or None when there is none."""
    filesystem, path = filesystem_for(uri, settings)
    manifest_path = posixpath.join(path, MANIFEST_NAME)
    try:
        with filesystem.open_input_stream(manifest_path) as stream:
            text = stream.read().decode()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise DataSourceError(
            f"data source {uri!r}: cannot read {MANIFEST_NAME}: {error}"
        ) from None
    return Manifest.from_json(text, source=f"{uri.rstrip('/')}/{MANIFEST_NAME}")


def push_dataset(
    src: str,
    dest: str,
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    img_size: int = 32,
    num_images: int | None = None,
    split: str = "train",
    settings: S3Settings | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Write `src` as Parquet shards plus a manifest under `dest` (s3:// or a local path).

    `src` is a built-in dataset name (rendered at `img_size`, PNG-encoded), a local folder of
    images with class sub-folders, or a local Parquet file (mimray columns, or Hugging Face
    style with an `image` struct {bytes, path} and a `label` column). `num_images` picks how
    many images of the split (shapes default: 2048). `progress(rows_done, rows_total)` is
    called as rows are written. A failed push leaves no manifest and removes its shards.
    """
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
    if settings is None and is_s3_uri(dest):
        settings = S3Settings.from_env()  # once: it may consult the boto3 profile chain
    records = _open_source(src, img_size=img_size, num_images=num_images, split=split)
    check_reachable(dest, settings, require_data=False)
    filesystem, root = filesystem_for(dest, settings)
    manifest_path = posixpath.join(root, MANIFEST_NAME)
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        filesystem.create_dir(root, recursive=True)
    # A re-push first retracts the old manifest: while shards are being replaced, the
    # prefix must not claim to be complete.
    _delete_if_present(filesystem, manifest_path)
    writer = _ShardWriter(filesystem, root, shard_bytes, records.class_names)
    try:
        rows_done = 0
        for batch in records.batches:
            writer.add(batch)
            rows_done += batch.num_rows
            if progress is not None:
                progress(rows_done, records.num_rows)
        writer.flush()
        manifest = Manifest(rows_done, records.class_names, writer.shards)
        _write_atomically(filesystem, manifest_path, manifest.to_json().encode())
    except BaseException:
        for shard in writer.shards:
            _delete_if_present(filesystem, posixpath.join(root, shard.path))
        raise
    _remove_stale_shards(filesystem, root, {shard.path for shard in manifest.shards})
    return manifest


@dataclass
class _Records:
    """A source opened for pushing: batches in the shard schema, produced lazily."""

    batches: Iterator[pa.RecordBatch]
    num_rows: int
    class_names: list[str]


def _open_source(src: str, *, img_size: int, num_images: int | None, split: str) -> _Records:
    from workloads.data.sources import BUILTIN_DATASETS

    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if src in BUILTIN_DATASETS:
        return _builtin_records(src, img_size, num_images, split)
    path = os.path.expanduser(src)
    if os.path.isdir(path):
        return _folder_records(path, num_images, split)
    if os.path.isfile(path) and path.endswith(".parquet"):
        return _parquet_records(path, num_images)
    raise DataSourceError(
        f"push source {src!r}: expected a built-in dataset ({', '.join(BUILTIN_DATASETS)}), "
        "a folder of images with class sub-folders, or a local .parquet file"
    )


def _builtin_records(name: str, img_size: int, num_images: int | None, split: str) -> _Records:
    from workloads.data import sources
    from workloads.data.digits import DIGIT_CLASSES, load_digit_images
    from workloads.data.shapes import SHAPE_CLASSES, render_shapes

    if name == "shapes":
        indices = sources.shapes_split_indices(split, num_images)
        positions = indices - indices[0]  # ids count from 0 in each split, as build_dataset's do
        render = lambda chunk: render_shapes(chunk, img_size, seed=0)  # noqa: E731
        class_names = list(SHAPE_CLASSES)
    else:
        indices = sources.digits_split_indices(split, num_images)
        positions = indices
        render = lambda chunk: load_digit_images(img_size, indices=chunk)  # noqa: E731
        class_names = list(DIGIT_CLASSES)

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(indices), _ENCODE_BATCH_ROWS):
            chunk = slice(start, start + _ENCODE_BATCH_ROWS)
            images, labels = render(indices[chunk])
            ids = [f"{name}/{split}/{position}" for position in positions[chunk]]
            yield _record_batch([_encode_png(image) for image in images], labels, ids)

    return _Records(batches(), len(indices), class_names)


def _folder_records(root: str, num_images: int | None, split: str) -> _Records:
    from workloads.data.sources import SPLITS

    try:
        split_root = folder.split_folder(root, split)
        class_names = folder.split_class_names(root, SPLITS)
        files = folder.folder_image_files(split_root, num_images)
    except ValueError as error:
        raise DataSourceError(f"push source {root!r}: {error}") from None
    class_index = {name: index for index, name in enumerate(class_names)}

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(files), _ENCODE_BATCH_ROWS):
            chunk = files[start : start + _ENCODE_BATCH_ROWS]
            ids = [os.path.relpath(path, split_root).replace(os.sep, "/") for path in chunk]
            labels = [class_index[relative.split("/", 1)[0]] for relative in ids]
            # Original bytes, never re-encoded: a push must not change the pixels.
            encoded = [_read_bytes(path) for path in chunk]
            yield _record_batch(encoded, labels, ids)

    return _Records(batches(), len(files), class_names)


def _parquet_records(path: str, num_images: int | None) -> _Records:
    parquet_file = pq.ParquetFile(path)
    columns = parquet_table_columns(parquet_file.schema_arrow, path)
    num_rows = parquet_file.metadata.num_rows
    num_rows = num_rows if num_images is None else min(num_rows, num_images)
    class_names = class_names_from_schema(parquet_file.schema_arrow)
    if class_names is None:
        labels = pq.read_table(path, columns=["label"]).column("label")
        class_names = [str(label) for label in range(int(pc.max(labels).as_py()) + 1)]
    name = os.path.basename(path)

    def batches() -> Iterator[pa.RecordBatch]:
        done = 0
        for batch in parquet_file.iter_batches(batch_size=_ENCODE_BATCH_ROWS, columns=columns):
            batch = batch.slice(0, num_rows - done)
            encoded, labels, ids = normalise_parquet_batch(batch, name, first_row=done)
            done += batch.num_rows
            yield _record_batch(encoded, labels, ids)
            if done >= num_rows:
                return

    return _Records(batches(), num_rows, class_names)


def parquet_table_columns(schema: pa.Schema, source: str) -> list[str]:
    """The columns to read from a mimray or Hugging Face-style Parquet file; raises if the
    file has neither layout."""
    names = set(schema.names)
    if "image" not in names or "label" not in names:
        raise DataSourceError(
            f"Parquet source {source!r}: expected columns image and label "
            f"(found {', '.join(schema.names)})"
        )
    image_type = schema.field("image").type
    is_binary = pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)
    is_struct = pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0
    if not (is_binary or is_struct):
        raise DataSourceError(
            f"Parquet source {source!r}: column image must be binary or a struct "
            f"{{bytes, path}}, found {image_type}"
        )
    return ["image", "label"] + (["id"] if "id" in names else [])


def normalise_parquet_batch(
    batch: pa.RecordBatch | pa.Table, source_name: str, first_row: int | None = None
) -> tuple[list[bytes | None], np.ndarray, list[str]]:
    """Encoded bytes, labels and ids from a batch in either Parquet layout.

    Ids come from an `id` column, else the struct's `path`, else the row number within the
    file (when known) or a content hash, so that every row has a stable name.
    """
    image = batch.column("image")
    paths: list[str | None] = [None] * batch.num_rows
    if pa.types.is_struct(image.type):
        if image.type.get_field_index("path") >= 0:
            paths = pc.struct_field(image, "path").to_pylist()
        image = pc.struct_field(image, "bytes")
    encoded = image.to_pylist()
    labels = np.asarray(batch.column("label").fill_null(-1).to_numpy(), dtype=np.int64)
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


def class_names_from_schema(schema: pa.Schema) -> list[str] | None:
    """Class names stored in Parquet metadata by a push or by Hugging Face `datasets`."""
    metadata = schema.metadata or {}
    if CLASS_NAMES_METADATA_KEY in metadata:
        return [str(name) for name in json.loads(metadata[CLASS_NAMES_METADATA_KEY])]
    if HUGGINGFACE_METADATA_KEY in metadata:
        try:
            features = json.loads(metadata[HUGGINGFACE_METADATA_KEY])["info"]["features"]
            names = features["label"]["names"]
            return [str(name) for name in names]
        except (KeyError, TypeError, ValueError):
            return None
    return None


class _ShardWriter:
    """Cuts a stream of record batches into shards of about `shard_bytes` of image data."""

    def __init__(
        self, filesystem: pyarrow.fs.FileSystem, root: str, shard_bytes: int, class_names: list[str]
    ) -> None:
        self._filesystem = filesystem
        self._root = root
        self._shard_bytes = shard_bytes
        self._metadata = {CLASS_NAMES_METADATA_KEY: json.dumps(class_names).encode()}
        self._pending: list[pa.RecordBatch] = []
        self._pending_bytes = 0
        self.shards: list[ShardInfo] = []

    def add(self, batch: pa.RecordBatch) -> None:
        sizes = pc.binary_length(batch.column("image")).fill_null(0).to_numpy()
        start = 0
        while start < batch.num_rows:
            # Take rows until the next one would overflow the shard (at least one per shard).
            room = self._shard_bytes - self._pending_bytes
            fits = int(np.searchsorted(np.cumsum(sizes[start:]), room, side="right"))
            take = max(fits, 0 if self._pending else 1)
            if take == 0:
                self.flush()
                continue
            self._pending.append(batch.slice(start, take))
            self._pending_bytes += int(sizes[start : start + take].sum())
            start += take
            if start < batch.num_rows:
                self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending).replace_schema_metadata(self._metadata)
        rows_per_group = max(1, int(len(table) * _ROW_GROUP_BYTES / max(self._pending_bytes, 1)))
        buffer = io.BytesIO()
        # Encoded images do not compress further, and min/max statistics of the image column
        # would store whole images again in the metadata.
        pq.write_table(
            table,
            buffer,
            row_group_size=rows_per_group,
            compression="none",
            write_statistics=["label", "id"],
        )
        data = buffer.getvalue()
        name = f"part-{len(self.shards):05d}.parquet"
        with self._filesystem.open_output_stream(posixpath.join(self._root, name)) as stream:
            stream.write(data)
        self.shards.append(ShardInfo(name, len(table), len(data), hashlib.sha256(data).hexdigest()))
        self._pending, self._pending_bytes = [], 0


def _record_batch(encoded: list[bytes], labels, ids: list[str]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array(encoded, type=pa.binary()),
            pa.array(np.asarray(labels, dtype=np.int64)),
            pa.array(ids, type=pa.string()),
        ],
        schema=SHARD_SCHEMA,
    )


def _encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _write_atomically(filesystem: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    # A local file is written in place and could be seen half-written; a rename is atomic.
    # One S3 PUT is atomic already, and a copy would only add requests.
    if not isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)
        return
    partial = f"{path}.partial"
    with filesystem.open_output_stream(partial) as stream:
        stream.write(data)
    filesystem.move(partial, path)


def _delete_if_present(filesystem: pyarrow.fs.FileSystem, path: str) -> None:
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        pass


def _remove_stale_shards(filesystem: pyarrow.fs.FileSystem, root: str, keep: set[str]) -> None:
    """Shards of an earlier, larger push that the new manifest no longer lists."""
    listing = filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    for info in listing:
        if info.type == pyarrow.fs.FileType.File and _SHARD_NAME.match(info.base_name):
            if info.base_name not in keep:
                _delete_if_present(filesystem, info.path)
