"""An environment variable set for the span of a library call, then put back as it was.

Some of Ray's and MLflow's settings are read from the environment only (Tune's default
loggers, MLflow's download progress bar). Setting one for the whole process would leak into
whatever else runs there (the tests run sweeps and reads in one process).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def environment_variable(name: str, value: str) -> Iterator[None]:
    """`name` set to `value` inside the block; afterwards what was there before, or nothing."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
