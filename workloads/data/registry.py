"""Which `DataSource` handles a given `data.source`: every module in `sources/` registers one.

Sources are asked in priority order (built-in names, then stored layouts, then folders); the
first that claims the string handles it. Nothing outside `workloads/data` branches on kinds.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from workloads.data import sources as sources_package
from workloads.data.base import DataSource

_ALLOWED = (
    "a built-in dataset ({builtins}), a local folder with one sub-folder of images per class, "
    "a folder or file of Parquet (e.g. written by `mimray data push`), or s3://bucket/prefix"
)


@functools.cache
def all_sources() -> tuple[DataSource, ...]:
    """Every registered source, in the order they are asked."""
    found = []
    for module_info in pkgutil.iter_modules(sources_package.__path__):
        module = importlib.import_module(f"{sources_package.__name__}.{module_info.name}")
        source = getattr(module, "SOURCE", None)
        if isinstance(source, DataSource):
            found.append(source)
    return tuple(sorted(found, key=lambda source: source.priority))


def builtin_names() -> tuple[str, ...]:
    """Names of the built-in datasets, for help texts and errors."""
    return tuple(source.name for source in all_sources() if source.kind == "builtin")


def allowed_sources() -> str:
    return _ALLOWED.format(builtins=", ".join(builtin_names()))


def source_for(source: str) -> DataSource:
    """The source kind that handles `source`, validated; ValueError with one line if none."""
    for candidate in all_sources():
        if candidate.claims(source):
            candidate.validate(source)
            return candidate
    raise ValueError(f"unknown data source {source!r}: expected {allowed_sources()}")
