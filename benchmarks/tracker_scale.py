"""mimray's bookkeeping at the size of an ablation campaign: sweep set-up, report, lineage.

    python benchmarks/tracker_scale.py [--trials 100 1000] [--store sqlite server] [--cli]

For each store and N, lays out one sweep of N trials in a fresh store with the real sweep and
tracker code (`tests/recorded_sweep.py`: `open_sweep_runs` as `mimray sweep` does before Tune
starts, then per trial 3 epoch losses and one checkpoint LoggedModel through `MlflowReporter`,
and one kNN evaluation run as `mimray eval` records it), then times, each in a fresh process
as a user types it: `mimray report big`, `mimray lineage big`, `mimray lineage big --json`,
and in-process the checkpoints `mimray eval big` would evaluate (`resolve_checkpoints`).

Stores: `sqlite` is the embedded default (a file); `server` is a real `mlflow server` on
127.0.0.1 (`--workers 1`, MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false) over the same kind of
SQLite file, what a team shares: every query becomes an HTTP round trip. `--cli` also times
CLI start-up: `mimray --help`, `methods`, `presets` and a refused bad config.

Targets (issue 16): 1,000 trials < 5 s per command including start-up, 5,000 < 15 s; creating
1,000 trial runs < 20 s; CLI start-up and refusals < 1.5 s.

Figures measured here (2 shared cores, seconds, one run each; see the bottom of this file for
the table before and after the store reads were batched).
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
SWEEP = "big"


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free loopback port over an SQLite file in `folder`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopping it stops its worker too
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(0.3)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_cli(args: list[str], cwd: Path, expect: int = 0) -> tuple[float, float]:
    """Wall and CPU seconds of `python -m orchestrator ARGS` in a fresh process (start-up
    included). CPU time is the steadier figure on a shared, loaded machine; for a server store
    it leaves out the server's share."""
    cpu = cpu_of_children()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    wall = time.perf_counter() - started
    if done.returncode != expect:
        raise RuntimeError(
            f"mimray {' '.join(args)}: exit {done.returncode}\n{done.stderr[-2000:]}"
        )
    return wall, cpu_of_children() - cpu


def in_process(call) -> tuple[float, float, object]:
    cpu, started = time.process_time(), time.perf_counter()
    result = call()
    return time.perf_counter() - started, time.process_time() - cpu, result


def measure(store: str, trials: int, root: Path) -> dict[str, tuple[float, float]]:
    from recorded_sweep import record_sweep

    from orchestrator.tracking import Tracker

    folder = root / f"{store}-{trials}"
    folder.mkdir()
    server = None
    if store == "server":
        server, uri = start_server(folder)
    else:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        tracker = Tracker(uri, "scale")
        cpu = time.process_time()
        layout = record_sweep(tracker, folder, SWEEP, trials, varied=False)
        cpu = time.process_time() - cpu  # set-up and recording together
        figures = {
            "sweep set-up": (layout.setup_s, float("nan")),
            "record losses/ckpts/evals": (layout.record_s, float("nan")),
            "set-up + record (cpu)": (layout.setup_s + layout.record_s, cpu),
        }
        common = ["--tracking-uri", uri]
        figures["report"] = timed_cli(
            ["report", SWEEP, *common, "--out", str(folder / "r")], folder
        )
        figures["lineage"] = timed_cli(["lineage", SWEEP, *common], folder)
        figures["lineage --json"] = timed_cli(["lineage", SWEEP, *common, "--json"], folder)
        from orchestrator.evaluate import resolve_checkpoints

        wall, cpu, found = in_process(lambda: resolve_checkpoints(uri, SWEEP))
        figures["eval targets (in-process)"] = (wall, cpu)
        assert len(found) == trials, len(found)
        return figures
    finally:
        if server is not None:
            stop_server(server)


def measure_cli(root: Path) -> dict[str, tuple[float, float]]:
    bad = root / "bad.yaml"
    bad.write_text("method: {name: mae}\ntrain: {epochs: 0}\n")
    return {
        "mimray --help": timed_cli(["--help"], root),
        "mimray methods": timed_cli(["methods"], root),
        "mimray presets": timed_cli(["presets"], root),
        "refused bad config (pretrain)": timed_cli(["pretrain", str(bad)], root, expect=2),
        "refused bad config (sweep)": timed_cli(["sweep", str(bad)], root, expect=2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--store", nargs="+", default=["sqlite"], choices=["sqlite", "server"])
    parser.add_argument("--cli", action="store_true", help="also time CLI start-up")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mimray-scale-") as tmp:
        root = Path(tmp)
        if args.cli:
            print("| command | wall s | cpu s |\n|---|---|---|")
            for what, (wall, cpu) in measure_cli(root).items():
                print(f"| {what} | {wall:.2f} | {cpu:.2f} |", flush=True)
        print("| store | N | step | wall s | cpu s |\n|---|---|---|---|---|")
        for store in args.store:
            for trials in args.trials:
                figures = measure(store, trials, root)
                for what, (wall, cpu) in figures.items():
                    print(f"| {store} | {trials} | {what} | {wall:.1f} | {cpu:.1f} |", flush=True)


if __name__ == "__main__":
    main()
