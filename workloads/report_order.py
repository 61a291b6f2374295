"""Reporter calls one at a time and in the loop's order, while checkpoint records arrive from
Ray Train's upload thread (background upload, `workloads/session.py`).

With background upload, rank 0 records a checkpoint (MLflow) in the upload thread once its
files are stored, while the training thread goes on logging metrics. MLflow's reporter is not
thread-safe, and a committing reporter must see the same sequence of calls as with
synchronous upload, so every call goes through a `ReportOrder`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any


class Reserved:
    """A checkpoint's place in a `ReportOrder`: its record, once the upload has run."""

    def __init__(self) -> None:
        self.call: Callable[[], Any] | None = None


class ReportOrder:
    """Runs calls one at a time and in the order they were made, from whichever thread.

    A checkpoint's record is reserved at its report and filled in by the upload thread; calls
    made after the reservation wait until the record has run. So the reporter sees the same
    sequence of calls as with synchronous upload: the metrics logged before a checkpoint's
    report, the checkpoint, then what followed (a committing reporter commits exactly what the
    checkpoint covers). Only the time of a record moves. Each call runs in the thread that
    finds it ready first, never two at once: the training thread does not wait while the upload
    thread writes a record, and a waiting call is stamped (`time.time()`) when it runs.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: deque[Reserved] = deque()
        self._running = False

    def reserve(self) -> Reserved:
        place = Reserved()
        with self._changed:
            self._waiting.append(place)
        return place

    def fill(self, place: Reserved, call: Callable[[], Any]) -> None:
        with self._changed:
            place.call = call
        self._run_ready()

    def submit(self, call: Callable[[], Any]) -> None:
        place = Reserved()
        place.call = call
        with self._changed:
            self._waiting.append(place)
        self._run_ready()

    def _run_ready(self) -> None:
        with self._changed:
            if self._running:
                return  # the running thread takes what is ready, this call included
            self._running = True
        try:
            while True:
                with self._changed:
                    # Checked and given up under one lock: a place filled meanwhile is seen.
                    if not self._waiting or self._waiting[0].call is None:
                        self._running = False
                        self._changed.notify_all()
                        return
                    call = self._waiting.popleft().call
                call()
        except BaseException:
            with self._changed:
                self._running = False
                self._changed.notify_all()
            raise

    def wait_until_done(self) -> None:
        """Until every reserved record and every call behind it has run (a failed upload fails
        the run, and Ray Train ends this worker)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._waiting and not self._running)


class InReportOrder:
    """A `workloads.run_reporter.Reporter` whose calls go through a `ReportOrder`."""

    def __init__(self, reporter: Any, order: ReportOrder) -> None:
        self._reporter, self._order = reporter, order

    def start(self) -> None:
        self._reporter.start()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        metrics = dict(metrics)
        self._order.submit(lambda: self._reporter.log_metrics(metrics, step))

    def log_event(self, metrics: Mapping[str, float], step: int) -> None:
        metrics = dict(metrics)
        self._order.submit(lambda: self._reporter.log_event(metrics, step))

    def log_checkpoint(
        self, uri: str, epoch: int, step: int, metrics: Mapping[str, float]
    ) -> str | None:
        # Called by a checkpoint's record, which the order already runs in its report's place.
        return self._reporter.log_checkpoint(uri, epoch, step, metrics)

    def close(self) -> None:
        # After `finish()` nothing waits; after a failure what waits behind an unrecorded
        # checkpoint belongs to no checkpoint, and a committing reporter drops it anyway.
        self._reporter.close()
