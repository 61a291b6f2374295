"""Headless Chromium for tests: the rendered DOM of a page, or a screenshot of it.

Uses the system's Debian `chromium` (`.ci/run` installs it when missing). Tools that download
their own browser do not work on these machines. Without it, a test that needs the browser is
skipped with the reason (pytest's `-ra` summary lists it), so the README's test command passes
on a fresh machine; under `CI=true` (which `.ci/run` sets) it fails instead, so CI never
passes with an unchecked page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Debian's chromium runs headless on these machines with exactly these flags (no sandbox as
# root, no GPU, and nothing that phones home while a test waits).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_S = 120.0


def chromium() -> str:
    """Path of the chromium binary; without one the calling test skips (fails under CI)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    reason = (
        "chromium is not installed: browser checks need Debian's chromium "
        "(apt-get install chromium; .ci/run installs it when run as root)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; required because CI=true", pytrace=False)
    pytest.skip(f"{reason}; skipped outside CI")


def _run(args: list[str], budget_ms: int | None) -> subprocess.CompletedProcess[str]:
    # A fresh profile per call: a shared one is locked by a concurrent run and keeps state.
    with tempfile.TemporaryDirectory(prefix="mimray-chromium-") as profile:
        command = [chromium(), *FLAGS, f"--user-data-dir={profile}"]
        if budget_ms is not None:
            command.append(f"--virtual-time-budget={budget_ms}")
        done = subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done


def dump_dom(url: str, budget_ms: int | None = None) -> str:
    """The DOM after the page rendered (after `budget_ms` of virtual time for script pages)."""
    return _run(["--dump-dom", url], budget_ms).stdout


def screenshot(
    url: str, out: Path, size: tuple[int, int] = (1280, 2000), budget_ms: int | None = None
) -> Path:
    """A PNG of the page at `size` (width, height) written to `out`."""
    _run([f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", url], budget_ms)
    if not out.is_file():
        raise AssertionError(f"chromium wrote no screenshot at {out}")
    return out
