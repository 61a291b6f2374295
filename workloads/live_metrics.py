"""Live training metrics for Prometheus, through Ray's metrics agent (`ray.util.metrics`).

MLflow keeps the committed record of a run; these metrics are the live view a Grafana
dashboard shows while it trains (see `dashboards/`). Every Ray node exports them on its
metrics port, and Ray prefixes each name with `ray_`: `mimray_train_loss` is scraped as
`ray_mimray_train_loss`, a histogram adds `_bucket`/`_sum`/`_count`, a counter `_total`
(`EXPORTED_*` below list them as scraped).

Recording is cheap (a call into Ray's in-process recorder, ~5 µs here; the worker ships the
aggregate to its node's agent every `metrics_report_interval_ms`), so the loop records step
times per step and everything else once per epoch.

Ray 2.60 evicts a gauge from the endpoint when its process has not set it for two report
intervals, even while the process lives. An epoch lasts longer
than that, so `GaugeRefresher` sets the last value again every few seconds until it is closed.
"""

from __future__ import annotations

import threading
from typing import Any

TRAIN_TAG_KEYS = ("run", "method", "rank")
STEP_SECONDS_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
# Below the eviction age (2 x the 10 s default report interval) with room for a late export.
REFRESH_INTERVAL_S = 5.0

# Names as Prometheus scrapes them from a Ray node's metrics endpoint.
EXPORTED_TRAINING_METRICS = (
    "ray_mimray_train_step_seconds_bucket",
    "ray_mimray_train_data_wait_seconds_bucket",
    "ray_mimray_train_images_total",
    "ray_mimray_train_images_per_second",
    "ray_mimray_train_loss",
    "ray_mimray_train_data_wait_share",
    "ray_mimray_train_epoch",
)
EXPORTED_GPU_METRICS = ("ray_mimray_gpu_memory_max_allocated_bytes",)
EXPORTED_SWEEP_METRICS = ("ray_mimray_sweep_trials", "ray_mimray_sweep_trial_loss")


class GaugeRefresher:
    """Holds each gauge's last value and sets it again every `interval_s` on a daemon thread."""

    def __init__(self, interval_s: float = REFRESH_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._values: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Any, float, dict]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, gauge: Any, value: float, tags: dict[str, str] | None = None) -> None:
        gauge.set(float(value), tags=tags)
        key = (id(gauge), tuple(sorted((tags or {}).items())))
        with self._lock:
            self._values[key] = (gauge, float(value), tags or {})
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mimray-gauge-refresh", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                values = list(self._values.values())
            for gauge, value, tags in values:
                gauge.set(value, tags=tags)

    def close(self) -> None:
        """Stop refreshing: the gauges then age out of the endpoint, as a finished run should."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 1)


class TrainingMetrics:
    """One Train worker's metrics, tagged with its run name, method and rank.

    Created inside the worker: metric objects belong to the process that records them and
    must not travel pickled in the loop config.
    """

    def __init__(self, run: str, method: str, rank: int) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = {"run": run, "method": method, "rank": str(rank)}

        def gauge(name: str, description: str) -> Any:
            return Gauge(name, description, tag_keys=TRAIN_TAG_KEYS).set_default_tags(tags)

        def histogram(name: str, description: str) -> Any:
            return Histogram(
                name, description, boundaries=STEP_SECONDS_BOUNDARIES, tag_keys=TRAIN_TAG_KEYS
            ).set_default_tags(tags)

        self.step_seconds = histogram(
            "mimray_train_step_seconds", "Wall time of one optimizer step, its data wait included"
        )
        self.data_wait_seconds = histogram(
            "mimray_train_data_wait_seconds", "Time one step waited for its batch from Ray Data"
        )
        self.images = Counter(
            "mimray_train_images", "Images this worker trained on", tag_keys=TRAIN_TAG_KEYS
        ).set_default_tags(tags)
        self.images_per_second = gauge(
            "mimray_train_images_per_second", "Images/s of the last epoch, all workers together"
        )
        self.loss = gauge("mimray_train_loss", "Mean training loss of the last epoch")
        self.data_wait_share = gauge(
            "mimray_train_data_wait_share", "Share of the last epoch this worker waited for data"
        )
        self.epoch = gauge("mimray_train_epoch", "Last finished epoch")
        self.gpu_memory_max_bytes = gauge(
            "mimray_gpu_memory_max_allocated_bytes",
            "torch.cuda.max_memory_allocated of this worker (GPU workers only)",
        )
        self._refresher = GaugeRefresher()

    def record_step(self, step_seconds: float, data_wait_seconds: float, images: int) -> None:
        self.step_seconds.observe(step_seconds)
        self.data_wait_seconds.observe(data_wait_seconds)
        self.images.inc(images)

    def record_epoch(
        self,
        epoch: int,
        loss: float,
        images_per_second: float,
        data_wait_s: float,
        epoch_time_s: float,
    ) -> None:
        keep = self._refresher.set
        keep(self.epoch, epoch)
        keep(self.loss, loss)
        keep(self.images_per_second, images_per_second)
        keep(self.data_wait_share, data_wait_s / epoch_time_s if epoch_time_s > 0 else 0.0)
        import torch

        # GPU workers only: a zero from CPU workers would read as "no memory used".
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            keep(self.gpu_memory_max_bytes, torch.cuda.max_memory_allocated())

    def close(self) -> None:
        self._refresher.close()


class SweepMetrics:
    """The sweep driver's trial counts per state, and each trial's latest reported loss."""

    STATES = ("running", "pending", "errored", "finished")

    def __init__(self, sweep: str) -> None:
        from ray.util.metrics import Gauge

        self.trials = Gauge(
            "mimray_sweep_trials", "Trials of the sweep by state", tag_keys=("sweep", "state")
        ).set_default_tags({"sweep": sweep})
        self.trial_loss = Gauge(
            "mimray_sweep_trial_loss",
            "Latest epoch loss each trial reported to Tune",
            tag_keys=("sweep", "trial"),
        ).set_default_tags({"sweep": sweep})
        self._refresher = GaugeRefresher()

    def record_counts(self, counts: dict[str, int]) -> None:
        # Every state each time, so a state that drops to zero does not keep its last count.
        for state in self.STATES:
            self._refresher.set(self.trials, counts.get(state, 0), {"state": state})

    def record_trial_loss(self, trial: str, loss: float) -> None:
        self._refresher.set(self.trial_loss, loss, {"trial": trial})

    def close(self) -> None:
        self._refresher.close()
