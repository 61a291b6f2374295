"""`mimray data push`: write a source as Parquet shards plus a manifest (see `manifest.py`).

Rows are written in a seeded random order, so every shard mixes classes and a reader that
takes shards or row groups in turn never sees one class at a time. Images keep their own
encoded bytes (a JPEG stays that JPEG); built-ins, which only have pixels, are encoded as PNG
unless `image_format` asks otherwise, and `image_format` re-encodes every image when given.
Packing many images per object matters on object storage, where a request per image costs
more than the image.

`max_side` stores images no larger than that on their longer side (FFCV's and DailyMAE's
practice: the loader then decodes a few times fewer pixels per image): a larger image is
shrunk (Lanczos, aspect kept) and stored as a JPEG of `quality` (PNG if `image_format` says
so); an image that fits keeps its bytes. The manifest records both, and so does every run
that reads the data (`DatasetInfo.max_side`).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs
import pyarrow.parquet as pq

from workloads.data.base import FIND_COLUMNS, Columns
from workloads.data.manifest import MANIFEST_NAME, Manifest, ShardInfo
from workloads.data.object_store import S3Settings, check_reachable, filesystem_for, is_s3_uri
from workloads.data.parquet import CLASS_NAMES_METADATA_KEY, SHARD_SCHEMA
from workloads.data.registry import source_for
from workloads.data.stored_layout import validate_location

DEFAULT_SHARD_BYTES = 128 * 2**20
IMAGE_FORMATS = ("png", "jpeg")
_JPEG_QUALITY = 95
DEFAULT_BOUNDED_QUALITY = 90  # with max_side: FFCV's and DailyMAE's choice
MIN_MAX_SIDE = 8
_SHARD_NAME = re.compile(r"^part-\d{5}\.parquet$")
_ENCODE_BATCH_ROWS = 64  # rows read and encoded at a time: bounds memory, paces progress
_ROW_GROUP_BYTES = 16 * 2**20  # row groups small enough that a reader streams a shard in parts

Progress = Callable[[int, int], None]


def push_dataset(
    src: str,
    dest: str,
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    img_size: int = 32,
    num_images: int | None = None,
    split: str = "train",
    seed: int = 0,
    image_format: str | None = None,
    columns: Columns = FIND_COLUMNS,
    settings: S3Settings | None = None,
    progress: Progress | None = None,
    max_side: int | None = None,
    quality: int | None = None,
) -> Manifest:
    """Write `src` (any data source: built-in name, image folder, Parquet, a stored prefix) as
    Parquet shards plus a manifest under `dest` (s3:// or a local path).

    Built-ins are rendered at `img_size`. `seed` fixes the row order. `max_side` bounds
    the images' longer side, `quality` is the JPEG quality of images it re-encodes (default
    90). `progress(rows_done, rows_total)` is called as rows are written. A failed push
    leaves no manifest and removes its shards.
    """
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
    if image_format not in (None, *IMAGE_FORMATS):
        raise ValueError(
            f"image format {image_format!r}: allowed: {', '.join(IMAGE_FORMATS)} (or none: keep)"
        )
    check_bounds(max_side, quality, image_format)
    if max_side is not None and quality is None:
        quality = DEFAULT_BOUNDED_QUALITY
    validate_location(dest, what="push destination")
    if settings is None and is_s3_uri(dest):
        settings = S3Settings.from_env()  # once: it may consult the boto3 profile chain
    rows = source_for(src).push_rows(
        src, img_size=img_size, split=split, num_images=num_images, columns=columns
    )
    check_reachable(dest, settings, require_data=False)
    filesystem, root = filesystem_for(dest, settings)
    manifest_path = posixpath.join(root, MANIFEST_NAME)
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        filesystem.create_dir(root, recursive=True)
    # A re-push first retracts the old manifest: while shards are being replaced, the
    # prefix must not claim to be complete.
    _delete_if_present(filesystem, manifest_path)
    writer = _ShardWriter(filesystem, root, shard_bytes, rows.class_names)
    order = np.random.default_rng(seed).permutation(rows.num_rows)
    try:
        for start in range(0, rows.num_rows, _ENCODE_BATCH_ROWS):
            images, labels, ids = rows.read(order[start : start + _ENCODE_BATCH_ROWS])
            if max_side is not None:
                encoded = [bounded_image(i, max_side, quality, image_format) for i in images]
            else:
                encoded = _encoded(images, image_format, quality)
            writer.add(_record_batch(encoded, labels, ids))
            if progress is not None:
                progress(min(start + _ENCODE_BATCH_ROWS, rows.num_rows), rows.num_rows)
        writer.flush()
        manifest = Manifest(
            rows.num_rows, rows.class_names, writer.shards, max_side=max_side, quality=quality
        )
        _write_atomically(filesystem, manifest_path, manifest.to_json().encode())
    except BaseException:
        for shard in writer.shards:
            _delete_if_present(filesystem, posixpath.join(root, shard.path))
        raise
    _remove_stale_shards(filesystem, root, {shard.path for shard in manifest.shards})
    return manifest


def check_bounds(max_side: int | None, quality: int | None, image_format: str | None) -> None:
    """Raise ValueError with one line (in the CLI's terms) when `max_side` / `quality`
    cannot be used."""
    if max_side is not None and max_side < MIN_MAX_SIDE:
        raise ValueError(f"--max-side {max_side}: allowed: an integer >= {MIN_MAX_SIDE} (pixels)")
    if quality is None:
        return
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality {quality}: allowed: 1 to 100 (JPEG quality)")
    if image_format == "png" or (image_format is None and max_side is None):
        raise ValueError(
            "--quality sets the JPEG quality of re-encoded images: allowed with --max-side "
            "or --format jpeg"
        )


def _encoded(
    images: list[bytes | None] | np.ndarray, image_format: str | None, quality: int | None
) -> list[bytes]:
    """Encoded bytes: pixels are encoded (PNG by default); bytes are kept unless a format is
    asked for, then re-encoded (an undecodable image is kept as it is, to be counted later)."""
    if isinstance(images, np.ndarray):
        return [_encode(pixels, image_format or "png", quality) for pixels in images]
    if image_format is None:
        return [data or b"" for data in images]
    return [_reencode(data, image_format, quality) for data in images]


def bounded_image(
    image: bytes | np.ndarray | None,
    max_side: int,
    quality: int = DEFAULT_BOUNDED_QUALITY,
    image_format: str | None = None,
) -> bytes:
    """`image` (encoded bytes or uint8 pixels) with its longer side at most `max_side`: a
    larger one shrunk (Lanczos) and encoded as JPEG of `quality` (or `image_format`); one
    that fits keeps its bytes unless `image_format` asks for another encoding. Undecodable
    bytes are kept as they are, to be counted by the reader."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if max(image.shape[:2]) <= max_side:  # as a push without the bound encodes pixels
            return _encode(image, image_format or "png", quality)
        opened = Image.fromarray(image)
    else:
        try:
            opened = Image.open(io.BytesIO(image or b""))
            opened.load()
        except Exception:  # noqa: BLE001 - corrupt stays corrupt; the reader counts it
            return image or b""
        fits = max(opened.size) <= max_side
        if fits and (image_format is None or image_format == opened.format.lower()):
            return image
    if max(opened.size) > max_side:
        # thumbnail keeps the aspect, shrinks with the JPEG decoder's draft first when the
        # image is far larger, then Lanczos.
        opened = opened.convert("RGB")
        opened.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return _encode(np.asarray(opened.convert("RGB")), image_format or "jpeg", quality)


def _encode(pixels: np.ndarray, image_format: str, quality: int | None = None) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    options = {"quality": quality or _JPEG_QUALITY} if image_format == "jpeg" else {}
    Image.fromarray(pixels).save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()


def _reencode(data: bytes | None, image_format: str, quality: int | None) -> bytes:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data or b"")) as opened:
            pixels = np.asarray(opened.convert("RGB"))
    except Exception:  # noqa: BLE001 - corrupt stays corrupt; the reader counts it
        return data or b""
    return _encode(pixels, image_format, quality)


def _record_batch(encoded: list[bytes], labels: np.ndarray, ids: list[str]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array(encoded, type=pa.binary()),
            pa.array(np.asarray(labels, dtype=np.int64)),
            pa.array(ids, type=pa.string()),
        ],
        schema=SHARD_SCHEMA,
    )


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
