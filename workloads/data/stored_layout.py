"""What a storage location holds, found from a listing and metadata only (no image decoded).

A location (`s3://bucket/prefix`, or a local folder or Parquet file) holds one of three
layouts, described in `workloads/data/sources/stored.py`, which reads them:

    shards       manifest.json + Parquet shards from `mimray data push`
    parquet      Parquet files without a manifest
    image-files  image files under class sub-folders (`prefix/<class>/<file>`)

Every check here fails with one `DataSourceError` line naming the location.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workloads.data.base import FIND_COLUMNS, Columns, DatasetInfo, digest
from workloads.data.manifest import Manifest, read_manifest
from workloads.data.object_store import (
    DataSourceError,
    S3Settings,
    check_reachable,
    filesystem_for,
    is_s3_uri,
)
from workloads.data.sources.folder import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.fs
    import pyarrow.parquet

SUPPORTED_SCHEMES = ("s3",)
_SKIPPED_PREFIXES = (".", "_")  # hidden and bookkeeping files (e.g. _SUCCESS), as Ray skips


@dataclass(frozen=True)
class StoredLayout:
    """What a location holds, found from a listing and the metadata only (no image decoded)."""

    kind: str  # "shards", "parquet" or "image-files"
    root: str  # scheme-less path inside the filesystem
    files: list[str]
    class_names: list[str] | None  # None: Parquet without names; derived from labels
    manifest: Manifest | None = None
    columns: Columns = Columns(image="image", label="label")


def validate_location(
    uri: str, *, what: str, allowed: str = "s3://bucket[/prefix] or a local path"
) -> None:
    """One line naming `uri` when its scheme is not supported or its bucket is missing."""
    if "://" not in uri or uri.startswith("file://"):
        return
    scheme, _, rest = uri.partition("://")
    if scheme not in SUPPORTED_SCHEMES or not rest.split("/", 1)[0]:
        raise DataSourceError(f"{what} {uri!r}: unsupported location; allowed: {allowed}")


def describe_layout(
    uri: str, filesystem: pyarrow.fs.FileSystem, layout: StoredLayout
) -> DatasetInfo:
    """Row count, class names and digest of a resolved layout (the manifest's when there is
    one, else from Parquet footers, the label column or the listing)."""
    import pyarrow.parquet as pq

    from workloads.data.parquet import class_names_from_labels

    if layout.manifest is not None:
        manifest = layout.manifest
        return DatasetInfo(
            uri,
            manifest.num_rows,
            list(manifest.class_names),
            kind="shards",
            digest=manifest.digest,
            max_side=manifest.max_side,
        )
    if layout.kind == "image-files":
        return DatasetInfo(
            uri,
            len(layout.files),
            list(layout.class_names or []),
            kind=layout.kind,
            digest=digest(uri, len(layout.files)),
        )
    num_rows = sum(open_parquet(filesystem, path).metadata.num_rows for path in layout.files)
    class_names = layout.class_names
    if class_names is None:
        labels = pq.read_table(layout.files, filesystem=filesystem, columns=[layout.columns.label])
        class_names = class_names_from_labels(labels[layout.columns.label])
    return DatasetInfo(uri, num_rows, class_names, kind=layout.kind, digest=digest(uri, num_rows))


def resolve_layout(
    uri: str, settings: S3Settings | None = None, columns: Columns = FIND_COLUMNS
) -> tuple[pyarrow.fs.FileSystem, StoredLayout]:
    """The filesystem and layout of `uri`; raises DataSourceError naming the URI."""
    import pyarrow.fs

    validate_location(uri, what="data source")
    settings = settings_for(uri, settings)
    check_reachable(uri, settings)
    filesystem, root = filesystem_for(uri, settings)
    manifest = None if _is_file(filesystem, root) else read_manifest(uri, settings)
    if manifest is not None:
        files = [posixpath.join(root, shard.path) for shard in manifest.shards]
        if not files:
            raise DataSourceError(f"data source {uri!r}: manifest lists no shards")
        return filesystem, StoredLayout("shards", root, files, manifest.class_names, manifest)
    try:
        info = filesystem.get_file_info(root)
        if info.type == pyarrow.fs.FileType.File:
            if not root.endswith(".parquet"):
                raise DataSourceError(f"data source {uri!r}: a single file must be .parquet")
            return filesystem, _parquet_layout(
                filesystem, uri, posixpath.dirname(root), [root], columns
            )
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
        return filesystem, _parquet_layout(filesystem, uri, root, parquet_files, columns)
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
    return filesystem, StoredLayout("image-files", root, image_files, class_names)


def _parquet_layout(
    filesystem: pyarrow.fs.FileSystem, uri: str, root: str, files: list[str], columns: Columns
) -> StoredLayout:
    from workloads.data.parquet import class_names_from_schema, resolve_columns

    schema = open_parquet(filesystem, files[0]).schema_arrow
    resolved = resolve_columns(schema, uri, columns)  # fail now, not inside a Ray task
    class_names = class_names_from_schema(schema, resolved.label)
    return StoredLayout("parquet", root, files, class_names, columns=resolved)


def open_parquet(
    filesystem: pyarrow.fs.FileSystem, path: str, pre_buffer: bool = False
) -> pyarrow.parquet.ParquetFile:
    """A Parquet file's footer and row groups, read on demand. `pre_buffer`: the columns of a
    row group come in one coalesced read, not one request per column; it fetches every row
    group a read asks for before the first batch, so ask for one row group at a time."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(filesystem.open_input_file(path), pre_buffer=pre_buffer)


def _is_file(filesystem: pyarrow.fs.FileSystem, path: str) -> bool:
    import pyarrow.fs

    try:
        return filesystem.get_file_info(path).type == pyarrow.fs.FileType.File
    except OSError:
        return False


def settings_for(uri: str, settings: S3Settings | None) -> S3Settings | None:
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
