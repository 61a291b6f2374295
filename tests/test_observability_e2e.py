"""One tiny pretrain on real Ray and MLflow serves two checks (a Train fit costs ~20 s here):

- every metric the Grafana dashboards query is exported on Ray's Prometheus endpoint;
- a Train worker SIGKILLed after the first checkpoint: the worker group restarts from that
  checkpoint, finishes, and MLflow holds each epoch and each step exactly once.

Run with `-s` to see the measured restore time.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TINY_MODEL
from test_dashboards import DASHBOARDS, queried_metrics
from waiting import wait_until

from orchestrator.config import Trial, load_spec
from orchestrator.pretrain.launch import run_pretrain
from orchestrator.sweep.runner import SweepProgress
from orchestrator.tracking import RUN_KEY_TAG, Tracker, resolve_tracking_uri

pytestmark = pytest.mark.slow

EPOCHS = 5
IMAGES, BATCH = 512, 32
RUN = [
    *TINY_MODEL,
    f"data.num_images={IMAGES}",
    f"train.batch_size={BATCH}",
    f"train.epochs={EPOCHS}",
    "train.warmup_epochs=0.5",
    "train.checkpoint_every=1",
    "train.max_failures=2",
    "scaling.num_workers=2",
    "tracking.experiment=observability",
    "tracking.system_metrics=false",
]
NAME = "observed"
# Exported only by nodes with GPUs (Ray's GPU stats) or by GPU workers (ours).
GPU_ONLY = {
    "ray_node_gpus_utilization",
    "ray_node_gpus_available",
    "ray_node_gram_used",
    "ray_node_gram_available",
    "ray_mimray_gpu_memory_max_allocated_bytes",
}
TRAIN_WORKER_CLASS = "RayTrainWorker"  # Ray Train V2's worker actor


class Scraper(threading.Thread):
    """Scrapes every live node's metrics endpoint until stopped; keeps every name seen.

    Gauges leave the endpoint ~20 s after their last update, so one scrape at the end would
    miss metrics of workers that have exited: collect over the whole run instead.
    """

    def __init__(self, ray, interval_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.ray, self.interval_s = ray, interval_s
        self.names: set[str] = set()
        self.stop = threading.Event()

    def scrape(self) -> None:
        for node in self.ray.nodes():
            if not node["Alive"]:
                continue
            url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            self.names |= {
                line.split("{")[0].split(" ")[0]
                for line in text.splitlines()
                if line and not line.startswith("#")
            }

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.scrape()
            except OSError:  # an agent restarting or busy: the next scrape will tell
                continue


def train_worker_pids(ray) -> set[int]:
    from ray.util.state import list_actors

    actors = list_actors(
        # This session's Ray by address: other Ray instances on the machine make it ambiguous.
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", TRAIN_WORKER_CLASS), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )
    return {a.pid for a in actors if a.pid}


def holds_file(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open: rank 0 keeps the SQLite MLflow store open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def registered_checkpoints(run_path: Path) -> list[str]:
    """Checkpoints Ray Train's controller has registered (what a restart restores from).

    Read from the controller's snapshot in the run's storage folder: a checkpoint folder
    exists as soon as a worker saved it, but is registered only when the controller has
    polled every worker's report.
    """
    snapshot = run_path / "checkpoint_manager_snapshot.json"
    if not snapshot.is_file():
        return []
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (ValueError, KeyError):  # caught mid-write
        return []
    return [r["checkpoint_dir_name"] for r in results]


def committed_epochs(tracker: Tracker) -> list[int]:
    run = tracker.find_run(NAME)
    if run is None:
        return []
    return [step for step, _ in tracker.metric_history(run.info.run_id, "epoch/loss")]


def test_metrics_exported_and_worker_loss_recovers_without_duplicate_epochs(ray_session, workdir):
    from ray.tune.experiment import Trial as TuneTrial

    started = time.monotonic()
    spec = load_spec("demo", RUN)
    # The sweep gauges come from the Tune driver's callback: drive it here, in this driver,
    # with real Tune trial objects, instead of paying for a second fit.
    trials = [Trial(index=i, name=f"trial-{i}", values={}, spec=spec) for i in (0, 1)]
    progress = SweepProgress(trials, "observability-sweep")
    tune_trial = TuneTrial("run_trial", config={"trial": 0}, stub=True)
    tracker = Tracker(resolve_tracking_uri(), "observability")
    store = (workdir / "mimray-runs" / "mlflow.db").resolve()
    run_path = workdir / "mimray-runs" / "ray" / NAME

    scraper = Scraper(ray_session)
    scraper.start()
    try:
        progress.on_trial_start(0, [], tune_trial)
        progress.on_trial_result(0, [], tune_trial, {"loss": 0.5})
        with ThreadPoolExecutor(1) as pool:
            fit = pool.submit(run_pretrain, spec, NAME)
            # Kill once Ray registered the epoch-1 checkpoint, so the restart restores it.
            wait_until(
                lambda: "checkpoint_epoch_0001" in registered_checkpoints(run_path) or fit.done(),
                300,
                "the epoch-1 checkpoint",
                interval=0.1,  # the window before the run ends is short
            )
            assert not fit.done(), "the run finished before a worker could be killed"
            workers = wait_until(lambda: train_worker_pids(ray_session), 30, "train workers")
            assert len(workers) == 2, workers
            # Rank 0 writes MLflow; kill the other one, so the survivor meets the lost peer
            # mid-epoch with a partial epoch's metrics in hand.
            victim = ([pid for pid in workers if not holds_file(pid, store)] or sorted(workers))[0]
            epochs_at_kill = int(registered_checkpoints(run_path)[-1].rsplit("_", 1)[1])
            first_checkpoint = (run_path / "checkpoint_epoch_0001" / "checkpoint.pt").stat()
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            restarted = wait_until(
                lambda: (train_worker_pids(ray_session) - workers) or fit.done(),
                180,
                "a restarted worker group",
            )
            assert restarted is not True, "the run ended without restarting its workers"
            group_restarted = time.monotonic()
            wait_until(
                lambda: max(committed_epochs(tracker), default=0) > epochs_at_kill or fit.done(),
                180,
                "the first epoch after the restart",
            )
            next_epoch = time.monotonic()
            result = fit.result(timeout=300)
        finished = time.monotonic()
        scraper.scrape()  # once more: the sweep gauges are still refreshed by this process
    finally:
        scraper.stop.set()
        scraper.join()
        progress.on_experiment_end([])

    print(
        f"\n[observability] worker pid {victim} SIGKILLed after epoch {epochs_at_kill}: "
        f"new worker group alive after {group_restarted - killed:.1f}s, next epoch committed "
        f"after {next_epoch - killed:.1f}s, run finished {finished - killed:.1f}s after the "
        f"kill; test wall time {finished - started:.1f}s"
    )

    # (b) recovery: finished, from the checkpoint, each epoch and step recorded exactly once.
    assert result.epochs_done == EPOCHS
    run = tracker.client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[RUN_KEY_TAG] == NAME
    epochs = [step for step, _ in tracker.metric_history(result.run_id, "epoch/loss")]
    assert epochs == list(range(1, EPOCHS + 1))
    steps_per_epoch = IMAGES // BATCH
    steps = [step for step, _ in tracker.metric_history(result.run_id, "train/loss")]
    assert steps == list(range(1, EPOCHS * steps_per_epoch + 1))
    checkpoints = [m.params["epoch"] for m in tracker.checkpoint_models(result.run_id)]
    assert checkpoints == [str(e) for e in range(1, EPOCHS + 1)]
    # Restored, not restarted from scratch: nothing rewrote the epoch-1 checkpoint.
    again = (run_path / "checkpoint_epoch_0001" / "checkpoint.pt").stat()
    assert again.st_mtime_ns == first_checkpoint.st_mtime_ns
    assert victim not in train_worker_pids(ray_session)

    # (a) every metric the dashboards query is exported (GPU ones only where there are GPUs).
    has_gpu = ray_session.cluster_resources().get("GPU", 0) > 0
    wanted = set().union(*(queried_metrics(path) for path in DASHBOARDS))
    expected = wanted if has_gpu else wanted - GPU_ONLY
    missing = sorted(expected - scraper.names)
    assert not missing, f"queried by the dashboards but not exported: {missing}"
    ours = sorted(n for n in scraper.names if n.startswith("ray_mimray_"))
    print(f"[observability] exported mimray metrics: {ours}")
    print(
        f"[observability] exported Ray metrics the dashboards query: {sorted(expected - set(ours))}"
    )
