"""Data sources for pretraining and evaluation: the only package that knows dataset formats.

`build_dataset(source, img_size=...)` turns a source name into a Ray Dataset with columns
image (uint8 HxWx3), label (int64) and id (string), whatever the source is.
"""

from workloads.data.sources import (
    BUILTIN_DATASETS,
    DatasetInfo,
    build_dataset,
    describe_source,
    validate_source,
)

__all__ = [
    "BUILTIN_DATASETS",
    "DatasetInfo",
    "build_dataset",
    "describe_source",
    "validate_source",
]
