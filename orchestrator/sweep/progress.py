"""A sweep's progress on the console (one line per change) and as Prometheus gauges."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from ray.tune import Callback

from orchestrator.config import Trial
from orchestrator.fit.ray_setup import session_logs_dir
from workloads.live_metrics import SweepMetrics


def ray_log_dir() -> str:
    return session_logs_dir() or "the Ray cluster's session logs"


class SweepProgress(Callback):
    """One line per change of the sweep's state, instead of Tune's and Ray's log flood; the
    same counts, and each trial's latest loss, as Prometheus gauges (`SweepMetrics`)."""

    def __init__(self, trials: list[Trial], sweep: str | None = None) -> None:
        self.names = {t.index: t.name for t in trials}
        self.total = len(trials)
        self.sweep = sweep or "sweep"
        self.state: dict[str, str] = {}
        self.best: tuple[float, str] | None = None
        self._metrics: SweepMetrics | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment; live metric handles and their
        # refresh thread belong to this process, so a restored sweep opens its own.
        return {**self.__dict__, "_metrics": None}

    def _live(self) -> SweepMetrics:
        # getattr: a sweep pickled by an older mimray restores without these attributes.
        if getattr(self, "_metrics", None) is None:
            self._metrics = SweepMetrics(getattr(self, "sweep", "sweep"))
        return self._metrics

    def _line(self) -> None:
        counts = Counter(self.state.values())
        pending = self.total - sum(counts.values())
        best = f"; best loss {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(
            f"[mimray] trials: {counts['running']} running, {pending} pending, "
            f"{counts['done']} done, {counts['errored']} errored{best}",
            flush=True,
        )
        self._live().record_counts(
            {
                "running": counts["running"],
                "pending": pending,
                "errored": counts["errored"],
                "finished": counts["done"],
            }
        )

    def _name(self, trial: Any) -> str:
        return self.names.get(trial.config.get("trial"), str(trial))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state[self._name(trial)] = "running"
        self._line()

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        loss = result.get("loss")
        if loss is not None and (self.best is None or loss < self.best[0]):
            self.best = (loss, self._name(trial))
        if loss is not None:
            self._live().record_trial_loss(self._name(trial), float(loss))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state[self._name(trial)] = "done"
        self._line()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.state[self._name(trial)] = "errored"
        self._line()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # The last counts stay in Prometheus' history; the endpoint drops them once unrefreshed.
        if getattr(self, "_metrics", None) is not None:
            self._metrics.close()


# Tune pickles this callback into a sweep's saved state by module name. Sweeps
# saved before the sweep modules became a package name it by this module's old name, and
# must still restore.
sys.modules.setdefault("orchestrator.sweep_progress", sys.modules[__name__])
