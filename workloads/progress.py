"""Progress inside an epoch, from rank 0: a long epoch must not look like a hang.

On a terminal it is a rich progress bar; otherwise (a Ray worker's output forwarded to the
driver, a log file, CI) one `[mimray]` line every `MIMRAY_PROGRESS_EVERY_S` seconds (10 by
default): step/steps, loss, images/s and the epoch's ETA.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

PROGRESS_EVERY_ENV = "MIMRAY_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 10.0


def progress_every_s() -> float:
    try:
        return float(os.environ.get(PROGRESS_EVERY_ENV, DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S


def progress_line(
    epoch: int, epochs: int, step: int, steps: int, loss: float, rate: float, eta_s: float
) -> str:
    return (
        f"epoch {epoch}/{epochs}  step {step}/{steps}  loss {loss:.4f}  {rate:.0f} img/s  "
        f"ETA {eta_s:.0f}s"
    )


class EpochProgress:
    """Rank 0's view of one epoch; `update` after every optimizer step, `close` at its end."""

    def __init__(
        self,
        epoch: int,
        epochs: int,
        steps: int,
        enabled: bool = True,
        every_s: float | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.enabled = enabled
        self.every_s = progress_every_s() if every_s is None else every_s
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.started = self.last_line = time.perf_counter()
        self.images = 0
        self._bar: Any = None
        self._task: Any = None

    def update(self, step: int, loss: float, images: int) -> str | None:
        """Record step `step` of the epoch (1-based); returns the line printed, if any."""
        if not self.enabled:
            return None
        self.images += images
        now = time.perf_counter()
        elapsed = max(now - self.started, 1e-9)
        rate = self.images / elapsed
        eta_s = elapsed / step * (self.steps - step)
        if self.interactive:
            self._show_bar(step, loss, rate)
            return None
        if now - self.last_line < self.every_s or step >= self.steps:
            return None  # the epoch's own line follows the last step
        self.last_line = now
        line = progress_line(self.epoch, self.epochs, step, self.steps, loss, rate, eta_s)
        sys.stdout.write(f"[mimray] {line}\n")
        sys.stdout.flush()
        return line

    def _show_bar(self, step: int, loss: float, rate: float) -> None:
        if self._bar is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[mimray] epoch {task.fields[epoch]}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}  loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[rate]:.0f} img/s"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "epoch", total=self.steps, epoch=f"{self.epoch}/{self.epochs}", loss=loss, rate=0
            )
        self._bar.update(self._task, completed=step, loss=loss, rate=rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
