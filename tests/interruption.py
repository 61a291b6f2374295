"""Interrupting a run at a known point, and telling afterwards what its resume touched.

A run is killed on a condition (its epoch-1 checkpoint recorded), never after a guessed sleep,
and every process that trains is killed at once: a Tune trial or Ray Train worker outlives
its killed driver until Ray notices, and could checkpoint another epoch meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from waiting import wait_until

T = TypeVar("T")


def run_until_then_kill(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    ready: Callable[[str], T],
    timeout_s: float,
    what: str,
    trainer_pids: Callable[[], list[int]] = list,
    interval_s: float = 0.1,
) -> T:
    """Start COMMAND (its output to `log_path`), wait until `ready(output so far)` is truthy,
    then SIGKILL it and `trainer_pids()` at once; returns what `ready` returned."""
    with log_path.open("w") as log:
        driver = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )

    def ended() -> str | None:
        if driver.poll() is None:
            return None
        return f"the run ended before it was killed:\n{log_path.read_text()[-3000:]}"

    try:
        found = wait_until(
            lambda: ready(log_path.read_text()), timeout_s, what, interval=interval_s, give_up=ended
        )
        kill_now(driver, trainer_pids())
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    return found


def file_states(folder: Path) -> dict[str, tuple[int, str]]:
    """name -> (modification time in ns, sha256) of every file under `folder`."""
    return {
        str(path.relative_to(folder)): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def actors(gcs_address: str, class_name: str, alive_only: bool = True) -> list[Any]:
    """The actors of `class_name` (live ones, or all ever started) on the Ray cluster at
    `gcs_address`, with their process ids."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", class_name)]
    if alive_only:
        filters.append(("state", "=", "ALIVE"))
    return list_actors(gcs_address, filters=filters, detail=True, limit=1000)


def alive_actor_pids(gcs_address: str, class_name: str) -> list[int]:
    return [actor.pid for actor in actors(gcs_address, class_name) if actor.pid]


def kill_now(driver: subprocess.Popen, trainer_pids: list[int]) -> None:
    """SIGKILL the driver's process group, then the processes that train for it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)
    for pid in trainer_pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    driver.wait(timeout=30)


def steps_logged_since(client: Any, run_id: str, key: str, since_ms: int) -> list[int]:
    """Steps of `key` whose points are dated at or after `since_ms` (MLflow timestamps)."""
    return sorted(m.step for m in client.get_metric_history(run_id, key) if m.timestamp >= since_ms)


def checkpointed_epochs(names: Iterable[str]) -> list[int]:
    """The epochs of the `checkpoint_epoch_NNNN` folder names (or any text naming them)."""
    return sorted({int(e) for name in names for e in re.findall(r"checkpoint_epoch_(\d+)", name)})
