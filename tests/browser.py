"""Headless Chromium for tests: the rendered DOM of a page, or a screenshot of it.

Uses the system's Debian `chromium` (`.ci/run` installs it when missing). Tools that download
their own browser do not work on these machines. Without it, a test that needs the browser is
skipped with the reason (pytest's `-ra` summary lists it), so the README's test command passes
on a fresh machine; under `CI=true` (which `.ci/run` sets) it fails instead, so CI never
passes with an unchecked page.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def page_text(dom: str) -> str:
    """The visible text of a dumped DOM, one ` | ` between elements: what a reader sees, in
    page order, so a test can look at what stands under a heading (scripts and styles left out).
    """
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.DOTALL | re.IGNORECASE)
    text = html.unescape(re.sub(r"<[^>]+>", " | ", dom))
    return re.sub(r"(\s*\|\s*)+", " | ", re.sub(r"\s+", " ", text)).strip(" |")


def section(text: str, heading: str, next_heading: str) -> str:
    """What `page_text` shows between `heading` and `next_heading` (empty when either is
    missing): the value of one labelled field of a details pane."""
    start = text.find(f"| {heading} |")
    end = text.find(f"| {next_heading} |", start + 1) if start >= 0 else -1
    return text[start + len(heading) + 4 : end].strip(" |") if start >= 0 and end > 0 else ""


# Where a failing browser test copies its screenshots: pytest keeps only the last three
# sessions' tmp_path, and on a machine shared by several test sessions that is minutes.
KEPT_ROOT = Path(tempfile.gettempdir()) / "mimray-browser-artifacts"


@contextmanager
def screenshots_kept_on_failure(folder: Path) -> Iterator[None]:
    """On an assertion failure inside, copy `folder`'s screenshots to a folder of their own
    under KEPT_ROOT and name it in the failure."""
    try:
        yield
    except AssertionError as err:
        kept = KEPT_ROOT / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        kept.mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy2(png, kept / png.name)
        raise AssertionError(f"{err}\n(screenshots: {kept})") from err
