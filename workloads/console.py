"""The `[mimray]` lines a worker writes for the driver's console."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    """One progress line on the driver's console.

    Ray Train patches `print` in workers to also go through its logger, which shows each
    line twice; writing to stdout directly shows it once.
    """
    sys.stdout.write(f"[mimray] {message}\n")
    sys.stdout.flush()
