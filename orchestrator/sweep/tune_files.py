"""What Tune writes beside MLflow for a sweep: its CSV and JSON result files per trial, not its
TensorBoard files.

MLflow holds every curve; Tune's TensorBoard logger imports tensorboardX, which imports torch
into the sweep's driver, a process that never trains. Tune adds its CSV, JSON and TensorBoard
loggers unless `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1` (Tune's documented setting, read when a
run starts): the sweep names the first two itself and runs Tune with that setting.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

NO_DEFAULT_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def result_file_loggers() -> list[Callback]:
    """The loggers of Tune's result files that a sweep keeps."""
    return [CSVLoggerCallback(), JsonLoggerCallback()]


@contextmanager
def without_default_loggers() -> Iterator[None]:
    """Run Tune inside this: it adds none of its own loggers. What was set before is put back
    (a sweep run in a process that goes on, as in the tests, leaves nothing behind)."""
    before = os.environ.get(NO_DEFAULT_LOGGERS)
    os.environ[NO_DEFAULT_LOGGERS] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(NO_DEFAULT_LOGGERS, None)
        else:
            os.environ[NO_DEFAULT_LOGGERS] = before
