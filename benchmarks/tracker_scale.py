"""mimray's bookkeeping at the size of an ablation campaign: sweep set-up, report, lineage.

    python benchmarks/tracker_scale.py [--trials 100 1000] [--store sqlite server] [--cli]
        [--server-workers 1 4]

For each N, lays out one sweep of N trials in a fresh SQLite store with the real sweep and
tracker code (`tests/recorded_sweep.py`: the parent run and every trial's run as the trials
open them when they start, `open_sweep_runs`, timed as "trial runs opened"; then per trial its
training data set, 3 epoch losses and one checkpoint LoggedModel through `MlflowReporter`, and
one kNN evaluation run as `mimray eval` records it), then times, each in a fresh process as a
user types it: `mimray report big`, `mimray lineage big`,
`mimray lineage big --json`, and in-process the checkpoints `mimray eval big` would evaluate
(`resolve_checkpoints`). "sweep set-up" is what `mimray sweep` does before Tune starts: the
parent run listing the N planned trials (`open_sweep_parent`); each trial opens its own run as
it starts, so "trial runs opened" is spread over the sweep, not waited for up front.

Stores: `sqlite` is the embedded default (a file); `server` is a real `mlflow server` on
127.0.0.1 (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false, its port the kernel's pick for port 0,
waited for on /health), what a team shares: every query becomes an HTTP round trip.
`--server-workers` (default 4, `mlflow server`'s own default; 1 is the leanest) is its worker
processes; each count is a store of its own in the table. `server/4w, files` serves that same
SQLite file, whose runs keep their artifacts in a folder MLflow's client writes; `server/4w`
serves a second sweep of N trials recorded through the server itself (8 trials at a time),
whose artifacts the server proxies (`mlflow-artifacts:`, its default), as a team's would be.
Against each the same reads are timed, then the set-up of another sweep of N trials through
the server and the opening of its N trial runs.
`--cli` also times CLI start-up: `mimray --help`, `methods`, `presets` and refusals of bad
configs. Every row says the 1-minute load average when it was measured: the machine is shared.

Targets (issues 16, 26): 1,000 trials < 5 s per command including start-up, 5,000 < 15 s;
sweep set-up of 1,000 trials < 20 s; CLI start-up and refusals < 1.5 s.

Figures measured here, before and after issue 16: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
SWEEP = "big"


def start_server(folder: Path, db: Path, workers: int = 1) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free loopback port (the kernel's pick for port 0) over the SQLite
    file `db`; returns once it answers /health."""
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
            f"sqlite:///{db}",
            "--artifacts-destination",
            str(folder / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
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
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(0.3)
    # /health answers once one worker is up; the others are still importing MLflow, and
    # timings taken meanwhile share the CPUs with them. Wait until the server is idle.
    wait_until_idle(server.pid, deadline)
    return server, url


def wait_until_idle(group: int, deadline: float) -> None:
    """Until the processes of process group `group` use under 5% of a CPU over a second."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> float:
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it ended meanwhile
            if int(fields[2]) == group:  # pgrp; then utime and stime at 11 and 12
                total += int(fields[11]) + int(fields[12])
        return total / tick

    before = cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds()
        if now - before < 0.05:
            return
        before = now


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


def row(wall: float, cpu: float) -> tuple[float, float, float]:
    return wall, cpu, os.getloadavg()[0]


def time_reads(uri: str, cwd: Path) -> dict[str, tuple[float, float, float]]:
    """`report`, `lineage`, `lineage --json` as fresh CLI processes; eval targets in-process."""
    from orchestrator.evaluation.checkpoints import resolve_checkpoints

    common = ["--tracking-uri", uri]
    figures = {
        "report": row(*timed_cli(["report", SWEEP, *common, "--out", str(cwd / "r")], cwd)),
        "lineage": row(*timed_cli(["lineage", SWEEP, *common], cwd)),
        "lineage --json": row(*timed_cli(["lineage", SWEEP, *common, "--json"], cwd)),
    }
    wall, cpu, found = in_process(lambda: resolve_checkpoints(uri, SWEEP))
    figures["eval targets (in-process)"] = row(wall, cpu)
    return figures


def time_setup(
    uri: str, folder: Path, name: str, trials: int, open_runs: bool = True
) -> dict[str, tuple]:
    """A fresh sweep of `trials` trials: its set-up (`open_sweep_parent`, what `mimray sweep`
    does before Tune starts), then with `open_runs` the opening of every trial's run as each
    trial does when it starts (`open_sweep_runs`, 8 at a time; their data sets are not in this
    figure)."""
    from recorded_sweep import load_trials

    from orchestrator.sweep.runner import open_sweep_parent, open_sweep_runs
    from orchestrator.tracking import Tracker

    tracker = Tracker(uri, "scale")
    spec, planned = load_trials(folder, name, "scale", trials)
    figures = {}
    try:
        wall, cpu, _ = in_process(lambda: open_sweep_parent(spec, planned, tracker, name))
        figures["sweep set-up"] = row(wall, cpu)
        if open_runs:
            wall, cpu, _ = in_process(lambda: open_sweep_runs(spec, planned, tracker, name))
            figures["trial runs opened"] = row(wall, cpu)
    except Exception as err:  # noqa: BLE001 - a failed set-up is a finding: keep the rows
        print(f"sweep set-up of {trials} through {uri} failed: {err!r}", file=sys.stderr)
    return figures


def measure(
    stores: list[str], trials: int, root: Path, server_workers: list[int]
) -> dict[tuple[str, str], tuple]:
    """Lay out a sweep of `trials` trials in an SQLite store (timing its set-up), time the
    reads against it, then against `mlflow server` serving the same file (with each count of
    `server_workers`), and time the set-up of another sweep of the same size through it."""
    from recorded_sweep import record_sweep

    from orchestrator.tracking import Tracker

    folder = root / f"n{trials}"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = Tracker(uri, "scale")
    with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints a link per finished run
        layout = record_sweep(tracker, folder, SWEEP, trials, varied=False)
    figures: dict[tuple[str, str], tuple] = {}
    if "sqlite" in stores:
        load = os.getloadavg()[0]
        figures[("sqlite", "trial runs opened")] = (layout.setup_s, float("nan"), load)
        # Its trial runs were timed in the layout above.
        for what, figure in time_setup(uri, folder, "fresh", trials, open_runs=False).items():
            figures[("sqlite", what)] = figure
        for what, figure in time_reads(uri, folder).items():
            figures[("sqlite", what)] = figure
    counts = server_workers if "server" in stores else []
    for workers in counts:  # every count reads the same store: set-ups come after
        with served(folder, workers) as url:
            for what, figure in time_reads(url, folder).items():
                figures[(f"server/{workers}w, files", what)] = figure
    for workers in counts:
        # A sweep recorded through the server, as a team's trials record theirs: its runs'
        # artifacts are the server's to keep (proxied, `mlflow-artifacts:`), which the store
        # above, written straight into the file, cannot have.
        proxied = root / f"n{trials}-{workers}w"
        proxied.mkdir()
        with served(proxied, workers) as url:
            with contextlib.redirect_stdout(io.StringIO()):
                record_sweep(Tracker(url, "scale"), proxied, SWEEP, trials, False, threads=8)
            for what, figure in time_reads(url, proxied).items():
                figures[(f"server/{workers}w", what)] = figure
    for workers in counts:
        with served(folder, workers) as url:
            for what, figure in time_setup(url, folder, f"big{workers}w", trials).items():
                figures[(f"server/{workers}w", what)] = figure
    return figures


@contextlib.contextmanager
def served(folder: Path, workers: int) -> Iterator[str]:
    server, url = start_server(folder, folder / "mlflow.db", workers)
    try:
        yield url
    finally:
        stop_server(server)


def measure_cli(root: Path) -> dict[str, tuple[float, float, float]]:
    configs = {
        "unknown method": "method: {name: nosuch}\n",
        "bad knob": "method: {name: emae, k: 3}\n",
        "bad grid": "name: g\nbase: {method: {name: emae}}\nsweep: {grid: {method.k: [3, 4]}}\n",
    }
    for name, text in configs.items():
        (root / f"{name.replace(' ', '-')}.yaml").write_text(text)
    return {
        "mimray --help": row(*timed_cli(["--help"], root)),
        "mimray methods": row(*timed_cli(["methods"], root)),
        "mimray presets": row(*timed_cli(["presets"], root)),
        "refused: pretrain, unknown method": row(
            *timed_cli(["pretrain", "unknown-method.yaml"], root, expect=2)
        ),
        "refused: pretrain, bad knob": row(*timed_cli(["pretrain", "bad-knob.yaml"], root, 2)),
        "refused: sweep, bad grid": row(*timed_cli(["sweep", "bad-grid.yaml"], root, expect=2)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--store", nargs="+", default=["sqlite"], choices=["sqlite", "server"])
    parser.add_argument("--cli", action="store_true", help="also time CLI start-up")
    parser.add_argument("--server-workers", type=int, nargs="+", default=[4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mimray-scale-") as tmp:
        root = Path(tmp)
        if args.cli:
            print("| command | wall s | cpu s | load avg |\n|---|---|---|---|")
            for what, (wall, cpu, load) in measure_cli(root).items():
                print(f"| {what} | {wall:.2f} | {cpu:.2f} | {load:.1f} |", flush=True)
        print("| N | command | store | wall s | cpu s | load avg |\n|---|---|---|---|---|---|")
        for trials in args.trials:
            figures = measure(args.store, trials, root, args.server_workers)
            for (store, what), (wall, cpu, load) in sorted(figures.items(), key=_order):
                print(
                    f"| {trials} | {what} | {store} | {wall:.1f} | {cpu:.1f} | {load:.1f} |",
                    flush=True,
                )


def _order(item: tuple) -> tuple:
    (store, what), _ = item
    steps = ["sweep set-up", "trial runs opened", "report", "lineage", "lineage --json"]
    steps.append("eval targets (in-process)")
    return steps.index(what), store


if __name__ == "__main__":
    main()
