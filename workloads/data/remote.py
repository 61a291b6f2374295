"""Training data from object storage (or a local prefix) as a Ray Dataset, streamed.

A URI (`s3://bucket/prefix` or a local path) holds one of three layouts:

    shards       manifest.json + Parquet shards from `mimray data push` (exactly those shards)
    parquet      Parquet files without a manifest: mimray columns, or Hugging Face style with
                 an `image` struct {bytes, path} and a `label` column
    image-files  image files under class sub-folders (`prefix/<class>/<file>`)

Whatever the layout, rows come out as image (uint8 HxWx3), label (int64), id (string) and ok
(bool). Images are decoded and augmented inside Ray Data's `map_batches` on CPU, so decoding
overlaps training. An image that does not decode becomes all zeros with ok=False: it is never
dropped silently and never crashes a run; the training loop counts those rows.
"""

from __future__ import annotations

import io
import math
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs
import pyarrow.parquet as pq

from workloads.data.folder import IMAGE_EXTENSIONS
from workloads.data.object_store import (
    DataSourceError,
    S3Settings,
    check_reachable,
    filesystem_for,
    is_s3_uri,
)
from workloads.data.shards import (
    Manifest,
    class_names_from_schema,
    normalise_parquet_batch,
    parquet_table_columns,
    read_manifest,
)
from workloads.data.sources import DatasetInfo

if TYPE_CHECKING:
    import ray.data

# RandomResizedCrop as in MAE's pretraining recipe (torchvision's parameters).
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10
_SKIPPED_PREFIXES = (".", "_")  # hidden and bookkeeping files (e.g. _SUCCESS), as Ray skips
# Rows per decode task: enough to amortise task overhead, few enough that the decoded output
# of one batch stays around 16 MB whatever the image size.
_MAX_ROWS_PER_BATCH = 256
_BATCH_OUTPUT_BYTES = 16 * 2**20


@dataclass(frozen=True)
class RemoteLayout:
    """What a URI holds, found from a listing and the metadata only (no image decoded)."""

    kind: str  # "shards", "parquet" or "image-files"
    root: str  # scheme-less path inside the filesystem
    files: list[str]
    class_names: list[str] | None  # None: Parquet without names; derived from labels
    manifest: Manifest | None = None


def build_remote_dataset(
    uri: str,
    *,
    img_size: int,
    augment: bool = True,
    settings: S3Settings | None = None,
) -> ray.data.Dataset:
    """A lazy Ray Dataset of the images at `uri` with columns image, label, id and ok.

    With `augment`, each image gets a RandomResizedCrop (scale 0.2-1, ratio 3/4-4/3) to
    `img_size` and a horizontal flip with probability 1/2; without, it is resized whole to
    `img_size` (deterministic, for evaluation). Raises DataSourceError within seconds when the
    URI cannot be read.
    """
    import ray.data

    if img_size < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    settings = _settings_for(uri, settings)
    filesystem, layout = resolve_layout(uri, settings)
    decode_options = {"img_size": img_size, "augment": augment}
    batch_size = _rows_per_batch(img_size)
    if layout.kind == "image-files":
        dataset = ray.data.read_binary_files(
            layout.files, filesystem=filesystem, include_paths=True
        )
        return dataset.map_batches(
            _decode_file_batch,
            fn_kwargs={**decode_options, "root": layout.root, "class_names": layout.class_names},
            batch_format="pyarrow",
            batch_size=batch_size,
        )
    columns = parquet_table_columns(
        pq.read_schema(layout.files[0], filesystem=filesystem), _display(uri, layout.files[0])
    )
    dataset = ray.data.read_parquet(layout.files, filesystem=filesystem).select_columns(columns)
    return dataset.map_batches(
        _decode_parquet_batch,
        fn_kwargs={**decode_options, "source_name": posixpath.basename(layout.root)},
        batch_format="pyarrow",
        batch_size=batch_size,
    )


def describe_remote(uri: str, settings: S3Settings | None = None) -> DatasetInfo:
    """Row count and class names at `uri`: from the manifest when there is one, else from
    Parquet footers (plus the label column when no class names are stored) or a listing."""
    settings = _settings_for(uri, settings)
    filesystem, layout = resolve_layout(uri, settings)
    if layout.manifest is not None:
        manifest = layout.manifest
        return DatasetInfo(uri, manifest.num_rows, list(manifest.class_names), kind="shards")
    if layout.kind == "image-files":
        return DatasetInfo(uri, len(layout.files), list(layout.class_names or []), kind=layout.kind)
    num_rows = sum(_parquet_file(filesystem, path).metadata.num_rows for path in layout.files)
    class_names = layout.class_names
    if class_names is None:
        labels = pq.read_table(layout.files, filesystem=filesystem, columns=["label"])["label"]
        highest = pc.max(labels).as_py()
        class_names = [str(label) for label in range(0 if highest is None else highest + 1)]
    return DatasetInfo(uri, num_rows, class_names, kind=layout.kind)


def sample_ids(uri: str, count: int = 5, settings: S3Settings | None = None) -> list[str]:
    """The ids of the first `count` rows at `uri`, read without decoding any image."""
    settings = _settings_for(uri, settings)
    filesystem, layout = resolve_layout(uri, settings)
    if layout.kind == "image-files":
        return [posixpath.relpath(path, layout.root) for path in layout.files[:count]]
    parquet_file = _parquet_file(filesystem, layout.files[0])
    columns = parquet_table_columns(parquet_file.schema_arrow, _display(uri, layout.files[0]))
    for batch in parquet_file.iter_batches(batch_size=count, columns=columns):
        name = posixpath.basename(layout.files[0])
        return normalise_parquet_batch(batch, name, first_row=0)[2][:count]
    return []


def resolve_layout(
    uri: str, settings: S3Settings | None = None
) -> tuple[pyarrow.fs.FileSystem, RemoteLayout]:
    """The filesystem and layout of `uri`; raises DataSourceError naming the URI."""
    settings = _settings_for(uri, settings)
    check_reachable(uri, settings)
    filesystem, root = filesystem_for(uri, settings)
    manifest = read_manifest(uri, settings)
    if manifest is not None:
        files = [posixpath.join(root, shard.path) for shard in manifest.shards]
        if not files:
            raise DataSourceError(f"data source {uri!r}: manifest lists no shards")
        return filesystem, RemoteLayout("shards", root, files, manifest.class_names, manifest)
    try:
        info = filesystem.get_file_info(root)
        if info.type == pyarrow.fs.FileType.File:
            if not root.endswith(".parquet"):
                raise DataSourceError(f"data source {uri!r}: a single file must be .parquet")
            return filesystem, _parquet_layout(filesystem, posixpath.dirname(root), [root])
        listing = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    except OSError as error:
        raise DataSourceError(f"data source {uri!r}: cannot list it: {error}") from None
    files = sorted(
        entry.path
        for entry in listing
        if entry.type == pyarrow.fs.FileType.File
        and not any(part.startswith(_SKIPPED_PREFIXES) for part in _relative_parts(entry, root))
    )
    parquet_files = [path for path in files if path.endswith(".parquet")]
    if parquet_files:
        return filesystem, _parquet_layout(filesystem, root, parquet_files)
    image_files = [path for path in files if _is_image(path)]
    if not image_files:
        raise DataSourceError(
            f"data source {uri!r}: no manifest.json, Parquet files or images "
            f"({', '.join(IMAGE_EXTENSIONS)}) under it"
        )
    outside_class_folder = [path for path in image_files if posixpath.dirname(path) == root]
    if outside_class_folder:
        raise DataSourceError(
            f"data source {uri!r}: images must sit in class sub-folders (<prefix>/<class>/<file>), "
            f"found {posixpath.basename(outside_class_folder[0])!r} directly under it"
        )
    class_names = sorted({_class_of(path, root) for path in image_files})
    return filesystem, RemoteLayout("image-files", root, image_files, class_names)


def decode_images(
    encoded: list[bytes | None], img_size: int, *, augment: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Decode encoded images to uint8 (n, img_size, img_size, 3) and an ok flag per image.

    An image that PIL cannot read stays all zeros with ok=False.
    """
    from PIL import Image

    images = np.zeros((len(encoded), img_size, img_size, 3), dtype=np.uint8)
    ok = np.zeros(len(encoded), dtype=bool)
    for row, data in enumerate(encoded):
        if not data:
            continue
        try:
            with Image.open(io.BytesIO(data)) as opened:
                image = opened.convert("RGB")  # forces the full decode inside the try
        except Exception:  # noqa: BLE001 - any decoder failure means "corrupt", never a crash
            continue
        if augment:
            box = random_resized_crop_box(image.width, image.height, rng)
            image = image.resize((img_size, img_size), Image.Resampling.BICUBIC, box=box)
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        elif image.size != (img_size, img_size):
            # Whole image, bilinear: the same pixels as the local folder source gives.
            image = image.resize((img_size, img_size), Image.Resampling.BILINEAR)
        images[row] = np.asarray(image, dtype=np.uint8)
        ok[row] = True
    return images, ok


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) crop as torchvision's RandomResizedCrop picks it: an area
    share in `scale` and an aspect ratio log-uniform in `ratio`, else the central crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_CROP_ATTEMPTS):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width = round(math.sqrt(target_area * aspect))
        crop_height = round(math.sqrt(target_area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            left = int(rng.integers(0, width - crop_width + 1))
            top = int(rng.integers(0, height - crop_height + 1))
            return left, top, left + crop_width, top + crop_height
    # Fallback for extreme aspect ratios: the largest central crop within `ratio`.
    crop_width, crop_height = width, height
    if width / height < ratio[0]:
        crop_height = round(width / ratio[0])
    elif width / height > ratio[1]:
        crop_width = round(height * ratio[1])
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


def _decode_parquet_batch(
    batch: pa.Table, img_size: int, augment: bool, source_name: str
) -> dict[str, np.ndarray]:
    encoded, labels, ids = normalise_parquet_batch(batch, source_name)
    images, ok = decode_images(encoded, img_size, augment=augment, rng=np.random.default_rng())
    return {"image": images, "label": labels, "id": np.asarray(ids, dtype=object), "ok": ok}


def _decode_file_batch(
    batch: pa.Table, img_size: int, augment: bool, root: str, class_names: list[str]
) -> dict[str, np.ndarray]:
    class_index = {name: index for index, name in enumerate(class_names)}
    paths = [str(path) for path in batch.column("path").to_pylist()]
    ids = [posixpath.relpath(path, root) for path in paths]
    labels = np.asarray([class_index[_class_of(path, root)] for path in paths], dtype=np.int64)
    encoded = batch.column("bytes").to_pylist()
    images, ok = decode_images(encoded, img_size, augment=augment, rng=np.random.default_rng())
    return {"image": images, "label": labels, "id": np.asarray(ids, dtype=object), "ok": ok}


def _parquet_layout(filesystem: pyarrow.fs.FileSystem, root: str, files: list[str]) -> RemoteLayout:
    schema = _parquet_file(filesystem, files[0]).schema_arrow
    parquet_table_columns(schema, files[0])  # fail now, not inside a Ray task
    return RemoteLayout("parquet", root, files, class_names_from_schema(schema))


def _parquet_file(filesystem: pyarrow.fs.FileSystem, path: str) -> pq.ParquetFile:
    return pq.ParquetFile(filesystem.open_input_file(path))


def _settings_for(uri: str, settings: S3Settings | None) -> S3Settings | None:
    # Read the environment once, on the driver: Ray workers may not share its environment.
    if settings is None and is_s3_uri(uri):
        return S3Settings.from_env()
    return settings


def _relative_parts(entry: pyarrow.fs.FileInfo, root: str) -> list[str]:
    return posixpath.relpath(entry.path, root).split("/")


def _class_of(path: str, root: str) -> str:
    return posixpath.relpath(path, root).split("/", 1)[0]


def _is_image(path: str) -> bool:
    return posixpath.splitext(path)[1].lstrip(".").lower() in IMAGE_EXTENSIONS


def _display(uri: str, path: str) -> str:
    return f"{uri.rstrip('/')}/{posixpath.basename(path)}"


def _rows_per_batch(img_size: int) -> int:
    return max(1, min(_MAX_ROWS_PER_BATCH, _BATCH_OUTPUT_BYTES // (img_size * img_size * 3)))
