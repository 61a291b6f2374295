"""The private Ray names mimray still needs, in one place, for the one Ray release they were
read in.

Everything else in mimray uses Ray's public API. What is here has no public equivalent in Ray
2.60 and is only a nicety (where the console output goes, which node a detached actor lives
on): on any other Ray release each of these turns itself off instead of guessing, and
`tests/test_ray_internals.py` fails loudly until someone reads the new release's source and
moves `RAY_RELEASE` forward.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

# The Ray release whose source the names below were read in.
RAY_RELEASE = "2.60.0"

# Loggers that write while `ray.init` runs (before mimray can gate Ray's console handler).
# Only names: on another release they are loggers nobody writes to.
INIT_LOGGERS = ("ray._private.worker", "ray._private.authentication.authentication_token_setup")

# Ray Data's own session-file log handler, named in its logging config: mimray keeps Ray Data's
# file log and drops its console copy. No public handler writes to the session folder.
DATA_SESSION_FILE_HANDLER = "ray.data._internal.logging.SessionFileHandler"


def supported() -> bool:
    """Whether the installed Ray is the release these names were read in."""
    return version("ray") == RAY_RELEASE


def pin_data_coordinator_here() -> bool:
    """Create Ray Data's autoscaling coordinator on this driver's node; False when not done.

    Ray 2.60 creates it (a detached actor that outlives every job) on the node of the first
    process that runs a dataset. A one-worker trial reads its data inside its Tune actor,
    often on a GPU node the autoscaler added: created there, the coordinator keeps that node
    busy and the autoscaler never removes it. No public API places it.
    """
    if not supported():
        return False
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    get_or_create_autoscaling_coordinator()
    return True


def filter_forwarded_output(keep: Callable[[str], str | None]) -> bool:
    """Replace Ray's printer of forwarded worker output on this driver with one that prints
    `keep(line)` for each line where it is not None; False when not done.

    `log_to_driver` is all or nothing in Ray's public API; mimray wants its own `[mimray]`
    lines from workers on the console and the rest in the workers' log files.
    """
    if not supported():
        return False
    from ray._private import worker as ray_worker

    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    if not any(name == "ray_print_logs" for name, _ in getattr(dispatcher, "handlers", [])):
        return False  # log_to_driver is off: nothing is forwarded
    dispatcher.remove_handler("ray_print_logs")

    def print_kept(data: dict[str, Any]) -> None:
        kept = [k for k in (keep(line) for line in data["lines"]) if k is not None]
        if kept:
            sys.stdout.write("".join(f"{line}\n" for line in kept))
            sys.stdout.flush()

    dispatcher.add_handler("mimray_print_logs", print_kept)
    return True


def quiet_init_loggers(handlers: list[logging.Handler]) -> None:
    """Route the loggers Ray writes to during `ray.init` to `handlers` only."""
    for name in INIT_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        for handler in handlers:
            logger.addHandler(handler)
