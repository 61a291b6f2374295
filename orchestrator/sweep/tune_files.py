"""What Tune writes beside MLflow for a sweep: its CSV and JSON result files per trial, not its
TensorBoard files.

MLflow holds every curve; Tune's TensorBoard logger imports tensorboardX, which imports torch
into the sweep's driver, a process that never trains. Tune adds its CSV, JSON and TensorBoard
loggers unless `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1` (Tune's documented setting, read when a
run starts): the sweep names the first two itself and runs Tune with `NO_DEFAULT_LOGGERS`
set (`orchestrator.environment.environment_variable`).
"""

from __future__ import annotations

from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

NO_DEFAULT_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def result_file_loggers() -> list[Callback]:
    """The loggers of Tune's result files that a sweep keeps."""
    return [CSVLoggerCallback(), JsonLoggerCallback()]
