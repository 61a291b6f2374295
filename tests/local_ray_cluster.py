"""Real multi-node Ray clusters on this machine for end-to-end tests, stopped without `ray stop`.

Every `ray start` runs in a new session, and every process it leaves behind (GCS, raylet,
dashboard, workers, job drivers, nodes that a fake autoscaler adds) stays in that process
group, so stopping signals exactly those groups: other Ray instances on the machine (other
tests, other people) are left alone. Ray picks its own ports (port 0) and the test reads the
ones it got from `ray start`'s output, so no port is found free and then lost to another
process; a temp dir per cluster keeps sessions, sockets and the address file apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml
from tiny_model import tiny_model
from waiting import wait_until

RAY = str(Path(sys.executable).parent / "ray")
# What `ray start --head` prints about where it listens (ANSI colour codes removed first).
_GCS_ADDRESS = re.compile(r"ray start --address='([^']+):(\d+)'")
_DASHBOARD_URL = re.compile(r"RAY_API_SERVER_ADDRESS='http://([^']+)'")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LocalRayCluster:
    """A head node (dashboard and Jobs API on 127.0.0.1) plus nodes added with `add_node`."""

    def __init__(self, temp_dir: Path, token_auth: bool = True, gcs_port: int = 0) -> None:
        """`gcs_port` 0 lets Ray choose; give one only where it must be known before the
        head starts (a fake autoscaler's config names it)."""
        self.temp_dir = temp_dir
        self.gcs_port = gcs_port
        self.dashboard_address = ""  # host:port, from `ray start --head`'s output
        self.token = secrets.token_hex(16)
        self.groups: list[int] = []
        # Pinned either way: `ray start --head` turns token auth on by itself when a token file
        # exists in ~/.ray, and a node started without the token cannot join.
        self.env = {
            **os.environ,
            "RAY_TMPDIR": str(temp_dir),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "token" if token_auth else "disabled",
            "RAY_AUTH_TOKEN": self.token if token_auth else "",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)

    @property
    def gcs_address(self) -> str:
        return f"{self.node_ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.dashboard_address}"

    node_ip = "127.0.0.1"

    def _ray_start(
        self, args: list[str], extra_env: dict[str, str] | None = None, temp_dir: Path | None = None
    ) -> str:
        """Run `ray start ARGS`; its output."""
        temp_dir = temp_dir or self.temp_dir
        proc = subprocess.Popen(
            [RAY, "start", f"--temp-dir={temp_dir}", "--disable-usage-stats", *args],
            env={**self.env, **(extra_env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its daemons keep this process group: see stop()
        )
        self.groups.append(proc.pid)
        output, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{output[-3000:]}")
        return _ANSI.sub("", output)

    def start_head(
        self,
        num_cpus: float,
        resources: dict[str, float] | None = None,
        node_ip: str = "127.0.0.1",
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.node_ip = node_ip
        args = [
            "--head",
            f"--node-ip-address={node_ip}",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",  # never on a public interface
            "--dashboard-port=0",
            "--dashboard-agent-listen-port=0",
            # Ray insists on a number here (1024-65535); the tests never use Ray Client, so
            # losing this port to another process would cost nothing.
            f"--ray-client-server-port={port_for_a_config()}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources or {})}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            *(extra_args or []),
        ]
        try:
            output = self._ray_start(args, extra_env)
        except RuntimeError:
            # On a loaded machine `ray start` can give up waiting for its own raylet
            # ("Failed to get node info ... Deadline Exceeded"): clear the attempt, retry once.
            self.stop()
            self.groups.clear()
            output = self._ray_start(args, extra_env)
        gcs, dashboard = _GCS_ADDRESS.search(output), _DASHBOARD_URL.search(output)
        if not (gcs and dashboard):
            raise RuntimeError(f"no GCS address or dashboard in `ray start`'s output:\n{output}")
        self.gcs_port = int(gcs.group(2))
        self.dashboard_address = dashboard.group(1)
        self.wait_for_dashboard()

    def add_node(self, num_cpus: float, resources: dict[str, float]) -> None:
        # A temp dir of its own, as on a separate machine: nodes sharing one would unpack
        # runtime environments (a job's working_dir) over each other's live copies.
        args = [
            f"--address={self.gcs_address}",
            f"--node-ip-address={self.node_ip}",
            "--dashboard-agent-listen-port=0",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}",
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]
        for attempt in range(2):
            temp_dir = self.temp_dir / f"node{len(self.groups)}"
            temp_dir.mkdir()
            try:
                self._ray_start(args, temp_dir=temp_dir)
                return
            except RuntimeError:
                # On a loaded machine the new raylet can miss `ray start`'s deadline for its
                # node info ("Deadline Exceeded"): stop what that attempt left, retry once.
                if attempt:
                    raise
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.groups[-1], signal.SIGKILL)

    def wait_for_dashboard(self, timeout_s: float = 60.0) -> None:
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/version",
            headers={"Authorization": f"Bearer {self.token}"},
        )

        def answers() -> bool:
            try:
                urllib.request.urlopen(request, timeout=2).read()
            except OSError:
                return False
            return True

        wait_until(answers, timeout_s, f"the dashboard on {self.dashboard_url}", interval=0.5)

    def state(self, kind: str, **filters: str) -> list[dict]:
        """Rows of the head's state API (`nodes`, `actors`, ...), over HTTP with the token: the
        test process's own Ray client state (auth mode, token cache) stays out of it."""
        query = "detail=1&limit=1000" + "".join(
            f"&filter_keys={key}&filter_predicates=%3D&filter_values={value}"
            for key, value in filters.items()
        )
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/v0/{kind}?{query}",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)["data"]["result"]["result"]

    def _get(self, path: str) -> dict:
        request = urllib.request.Request(
            f"{self.dashboard_url}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def job_logs(self, job_id: str) -> str:
        """A job's logs from the Jobs API over HTTP: for polls, which would cost a second of
        CPU per `mimray jobs logs` process (the CLI itself is checked once per test)."""
        return self._get(f"/api/jobs/{job_id}/logs")["logs"]

    def job_status(self, job_id: str) -> str:
        return self._get(f"/api/jobs/{job_id}")["status"]

    def alive_nodes(self) -> list[dict]:
        return self.state("nodes", state="ALIVE")

    def train_worker_nodes(self) -> set[str]:
        """Ids of the nodes that trained (alive or finished): Ray Train worker actors, or Tune
        trials (`ImplicitFunc`) that train in-process, as one-worker trials do. Use it for
        sweeps whose trials are all one kind: a multi-worker trial's driver trains nothing."""
        return {
            actor["node_id"]
            for kind in ("RayTrainWorker", "ImplicitFunc")
            for actor in self.state("actors", class_name=kind)
        }

    def stop(self) -> None:
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_group_alive(g) for g in self.groups):
            time.sleep(0.5)
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


@contextlib.contextmanager
def short_temp_dir() -> Iterator[Path]:
    """A temp folder for a cluster of its own, removed after. Short: Ray's socket paths live
    under it and must stay within 107 bytes."""
    path = Path(f"/tmp/mrc-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    path.mkdir()
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def port_for_a_config() -> int:
    """A port that nothing listens on right now, for the places where a number must be given
    before Ray starts: a fake autoscaler's `gcs_address`, Ray Client's port (no 0 allowed).
    It is released before `ray start` binds it, so another process could take it in between:
    everywhere else Ray picks its own ports."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def run_mimray(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """`python -m orchestrator ARGS` as a user runs it, against a test cluster."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cluster_sweep(
    name: str,
    worker_resources: dict[str, float],
    grid: list[float],
    storage: Path | str,
    epochs: int = 1,
    knob: str = "method.mask_ratio",
) -> str:
    """A tiny MAE sweep file over `knob`, one CPU worker per trial asking `worker_resources`,
    its storage at `storage` (a folder every local node shares, as NFS would be, or s3://)."""
    spec = {
        "name": name,
        "base": {
            "method": {"name": "mae"},
            "model": tiny_model(),
            "data": {"source": "shapes", "num_images": 64},
            "train": {"epochs": epochs, "batch_size": 32},
            "scaling": {"num_workers": 1, "worker_resources": worker_resources},
            "tracking": {"experiment": name, "system_metrics": False},
            "storage": {"path": str(storage)},
        },
        "sweep": {"grid": {knob: grid}},
    }
    return yaml.safe_dump(spec, sort_keys=False)
