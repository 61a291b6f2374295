"""What every data source shares: the row format, the description of a split, the contract.

Every source yields Ray Dataset rows with the same columns, so nothing downstream knows
which one it reads:

    image  uint8 (H, W, 3)
    label  int64 class index into `DatasetInfo.class_names`
    id     string that names the image stably, e.g. "shapes/train/17"
    ok     bool, False for an image that could not be decoded (left all zeros)

A source is one module in `workloads/data/sources/` that defines `SOURCE`, an instance of a
`DataSource` subclass: how to recognise, validate, describe, build and push it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import ray.data

SPLITS: tuple[str, ...] = ("train", "val")
# The selection split: settings are chosen by fitting on the first part of the train split
# and scoring on its last SELECTION_SHARE, so val stays unread until numbers are reported.
SELECTION_SHARE = 0.2
ROW_COLUMNS: tuple[str, ...] = ("image", "label", "id", "ok")
# MAE's RandomResizedCrop (torchvision's parameters): area share and aspect-ratio range.
DEFAULT_CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
# Rows per Ray task: enough to amortise per-task overhead, few enough that a task's decoded
# output stays around 16 MB whatever the image size.
_MAX_ROWS_PER_BATCH = 256
_BATCH_OUTPUT_BYTES = 16 * 2**20


@dataclass(frozen=True)
class DatasetInfo:
    """What a source holds for one split, known without decoding any image."""

    source: str
    num_rows: int
    class_names: list[str]
    split: str = "train"
    kind: str = "builtin"  # the `DataSource.kind` that described it
    # Identifies the exact data: generation parameters for built-ins, file list for folders,
    # the manifest digest for pushed shards. Recorded with every run that reads it.
    digest: str = ""
    # Pushed with `--max-side`: no stored image is larger than this on its longer side.
    max_side: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Augmentation:
    """MAE's pretraining augmentation: RandomResizedCrop to the model's size, then a flip.

    `crop_scale=None` keeps the whole image (resized); evaluation reads pass no augmentation
    at all, so their pixels are deterministic.
    """

    crop_scale: tuple[float, float] | None = DEFAULT_CROP_SCALE
    hflip: bool = True
    crop_ratio: tuple[float, float] = CROP_RATIO


@dataclass(frozen=True)
class Columns:
    """Which Parquet columns hold the encoded image and the label (None: find them)."""

    image: str | None = None
    label: str | None = None


FIND_COLUMNS = Columns()  # the default: `image` (or the only image column) and `label`


@dataclass(frozen=True)
class PushRows:
    """A source opened for `mimray data push`: rows fetched by position, in any order.

    `read(positions)` returns the images (encoded bytes per row, or uint8 pixels
    (n, H, W, 3) for sources that only have pixels), int64 labels and ids.
    """

    num_rows: int
    class_names: list[str]
    read: Callable[[np.ndarray], tuple[list[bytes] | np.ndarray, np.ndarray, list[str]]]


class DataSource(ABC):
    """The contract of one kind of data source (see the module docstring)."""

    kind: str = ""
    priority: int = 10  # lower claims first: built-in names before paths
    # Stored data holds one split per location: evaluations must name their val source.
    one_split_per_location: bool = False

    @abstractmethod
    def claims(self, source: str) -> bool:
        """Whether `source` (a name, path or URI) is of this kind. Cheap: no network."""

    @abstractmethod
    def validate(self, source: str) -> None:
        """Raise ValueError with one clear line when `source` cannot be used. No network."""

    @abstractmethod
    def describe(
        self, source: str, *, split: str, num_images: int | None, seed: int, columns: Columns
    ) -> DatasetInfo:
        """Row count, class names and digest of one split, without decoding images."""

    @abstractmethod
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
        """A lazy Ray Dataset of the split with the common columns named in `keep`.

        `order_seed` (not None) asks for the source's cheap order randomisation (file or
        block order), reseeded by Ray Data on every execution, i.e. every epoch."""

    @abstractmethod
    def push_rows(
        self, source: str, *, img_size: int, split: str, num_images: int | None, columns: Columns
    ) -> PushRows:
        """The split's rows for `mimray data push`."""


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def selection_fit_rows(num_rows: int) -> int:
    """How many of a train split's first rows the selection split fits on; the rest score."""
    return round(num_rows * (1 - SELECTION_SHARE))


def check_keep(keep: Sequence[str]) -> None:
    unknown = [name for name in keep if name not in ROW_COLUMNS]
    if unknown or not keep:
        raise ValueError(
            f"columns {list(keep)}: expected a non-empty choice of {', '.join(ROW_COLUMNS)}"
        )


def check_num_images(num_images: int | None) -> None:
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")


def digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def rows_per_batch(img_size: int) -> int:
    return max(1, min(_MAX_ROWS_PER_BATCH, _BATCH_OUTPUT_BYTES // (img_size * img_size * 3)))


def object_array(values: Sequence[str]) -> np.ndarray:
    return np.asarray(list(values), dtype=object)
