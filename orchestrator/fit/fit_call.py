"""`fit(trainer)`: run a trainer's `.fit()` and leave the process's Ctrl-C handler as it was.

Ray Train's `TorchTrainer.fit()` (2.60), called from the main thread, installs a SIGINT handler
that aborts the run's controller actor, and leaves it installed after the run: the handler's
closure keeps the finished run's controller (and the data actors it holds) alive until the
process exits or the next run's `fit` replaces it. In a process that runs several fits
(`mimray pretrain` with chained evaluations, a notebook, the test suite) the old controller was
torn down only while the next run's actors started. Restoring the previous handler after the
run drops the closure, so the controller ends with its run, and Ctrl-C after the run is the
caller's again. Only the standard library's `signal` is used.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def fit(trainer: Any) -> Any:
    """`trainer.fit()`, with the SIGINT handler that was there before put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()  # signal handlers belong to the main thread; Ray sets none here
    previous = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
