"""Waiting on a condition instead of sleeping for a guessed while."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.2,
    give_up: Callable[[], str | None] | None = None,
) -> T:
    """Call `condition` until it returns something truthy, and return that.

    Fails the test with "timed out after N s waiting for WHAT" once `timeout` seconds pass.
    `give_up` is asked between tries; a non-empty answer (e.g. "the server exited with status
    1") fails at once instead of waiting out the timeout for something that cannot happen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        reason = give_up() if give_up else None
        if reason:
            raise AssertionError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
