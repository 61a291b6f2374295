"""What `pretrain`, `demo`, `sweep` and `eval` show: mimray's lines, and errors.

Ray, Ray Data, Tune and MLflow write INFO lines, deprecation warnings and banners to the
console from the driver, and Ray forwards every worker's output to it. With `quiet_libraries()`
the driver keeps to mimray's own lines (`[mimray] ...`, its tables, its one-line errors) and
the libraries' ERROR records; the rest goes to `mimray-driver.log` in Ray's session log folder
(next to the workers' own logs), whose path is printed once Ray is up. Records from before Ray
started (MLflow creating its store, say) are held in memory and written there then. Forwarded
worker output keeps only `[mimray]` lines: a failure reaches the driver as the exception that
ends the run.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from orchestrator import ray_internals

MIMRAY_PREFIX = "[mimray]"
LIBRARIES = ("ray", "mlflow", "alembic", "py.warnings", "urllib3", "botocore", "filelock")
DRIVER_LOG = "mimray-driver.log"

_held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
_active = False


class _ErrorsOnly(logging.Filter):
    """On a library's console handler: only errors reach the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def is_active() -> bool:
    return _active


def quiet_libraries() -> None:
    """From now on library logs below ERROR go to the driver log, not the console."""
    global _active
    _active = True
    # Tune's experiment banner and result tables are printed, not logged: its legacy output
    # at verbose=0 prints none of them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray Data's own file log (ray-data.log in the session folder) without its console copy.
    if ray_internals.supported():
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(_data_logging_config()))
    # MLflow then adds no console handler of its own: its records reach the file only.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    logging.captureWarnings(True)  # RayDeprecationWarning & co. become py.warnings records
    import ray  # noqa: F401 - Ray installs its console handler on import: gate it now

    # Ray's loggers that write while `ray.init` runs, when Ray may have just replaced its
    # console handler (not yet gated), are kept off the console at the source.
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    ray_internals.quiet_init_loggers([_held, errors])
    gate_library_handlers()


def gate_library_handlers() -> None:
    """Put the gate on every library console handler that exists now (libraries add theirs
    on import and on `ray.init`, so this runs again after those)."""
    if not _active:
        return
    names = [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] in LIBRARIES]
    for name in dict.fromkeys([*LIBRARIES, *names]):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if _is_console(handler) and not any(
                isinstance(f, _ErrorsOnly) for f in handler.filters
            ):
                handler.addFilter(_ErrorsOnly())
        top_level = name in LIBRARIES or not logger.propagate
        if top_level and _held not in logger.handlers:
            logger.addHandler(_held)  # at the level the library chose (MLflow quiets alembic)
    if not logging.getLogger("ray").isEnabledFor(logging.INFO):
        logging.getLogger("ray").setLevel(logging.INFO)


def attach_session_log(logs_dir: str | None) -> str | None:
    """Write the held and all later library records to `logs_dir/mimray-driver.log`, gate
    the handlers Ray just added, and keep forwarded worker output to mimray's lines and
    lines. Returns the log's path (None when inactive)."""
    if not _active:
        return None
    folder = Path(logs_dir) if logs_dir else Path(os.getcwd()) / "mimray-runs" / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DRIVER_LOG
    file = logging.FileHandler(path)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _held.setTarget(file)
    _held.flush()
    _held.capacity = 1  # from now on every record is written as it comes
    gate_library_handlers()
    _filter_forwarded_output()
    return str(path)


def _filter_forwarded_output() -> None:
    """Ray prints each worker's forwarded output lines on the driver; keep mimray's lines
    (without Ray's `(pid=...)` prefix). Everything is in the workers' log files, and a failure
    that matters reaches the driver as the exception that ends the run (one line). On a Ray
    release other than the one `ray_internals` was read in, every forwarded line is printed."""
    ray_internals.filter_forwarded_output(_mimray_part)


def _mimray_part(line: str) -> str | None:
    return line[line.index(MIMRAY_PREFIX) :] if MIMRAY_PREFIX in line else None


def _is_console(handler: logging.Handler) -> bool:
    if isinstance(handler, logging.FileHandler | logging.handlers.MemoryHandler):
        return False
    stream = getattr(handler, "stream", None)
    # Ray's PlainRayHandler and MLflow's stream look sys.stderr up when they write.
    return (
        stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        or type(handler).__name__ == "PlainRayHandler"
        or type(stream).__name__ == "MlflowLoggingStream"
    )


def _data_logging_config() -> Path:
    """Ray Data's default logging config minus its console handler (a file of our own)."""
    import tempfile

    name = f"mimray-ray-data-logging-{ray_internals.RAY_RELEASE}.yaml"
    path = Path(tempfile.gettempdir()) / name
    if not path.exists():
        path.write_text(
            "version: 1\n"
            "disable_existing_loggers: false\n"
            "formatters:\n"
            "  ray:\n"
            '    format: "%(asctime)s %(levelname)s %(filename)s:%(lineno)s -- %(message)s"\n'
            "handlers:\n"
            "  file:\n"
            f"    class: {ray_internals.DATA_SESSION_FILE_HANDLER}\n"
            "    formatter: ray\n"
            "    filename: ray-data.log\n"
            "loggers:\n"
            "  ray.data:\n"
            "    level: DEBUG\n"
            "    handlers: [file]\n"
            "    propagate: false\n"
        )
    return path
