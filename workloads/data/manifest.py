"""The manifest of a `mimray data push`: the exact shards, their checksums, the class names.

    DEST/part-00000.parquet   columns image (binary, encoded file bytes), label (int64), id
    DEST/part-00001.parquet   ...
    DEST/manifest.json        {"format", "num_rows", "class_names", "shards", "digest",
                               "max_side", "quality"}

`max_side` and `quality` are there when the push bounded the images' longer side (`mimray
data push --max-side N --quality Q`); a manifest without them holds the images as given.

The manifest is written last, so its presence marks a complete push; readers use exactly the
shards it lists, and its digest (sha256 over the shards' sha256s) names the data a run used.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field

from workloads.data.object_store import DataSourceError, S3Settings, filesystem_for

MANIFEST_FORMAT = "mimray-shards/1"
MANIFEST_NAME = "manifest.json"


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
    max_side: int | None = None  # longer side of every stored image at most this (pixels)
    quality: int | None = None  # JPEG quality of the images the bound re-encoded

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
        if self.max_side is not None:
            document.update(max_side=self.max_side, quality=self.quality)
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
                max_side=_optional_int(document.get("max_side")),
                quality=_optional_int(document.get("quality")),
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


def _optional_int(value: object) -> int | None:
    return None if value is None else int(value)


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
