"""The KubeRay pods' preStop hook (orchestrator/cluster/pod_drain.py), run as Kubernetes runs it,
against a real two-node Ray cluster: it finds its pod's Ray node by IP, drains it with the
preemption reason and a deadline (what Ray Train's preemption watcher reads), waits while Ray
actors still run there, and returns as soon as they leave."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from local_ray_cluster import LocalRayCluster

from orchestrator.cluster.pod_drain import drain_command

ROOT = Path(__file__).resolve().parent.parent

WORKER_IP = "127.0.0.2"  # loopback too, so the pod's node has an IP of its own

# A driver that keeps one actor on the worker node (Ray Train workers in a real pod).
HOLDER = textwrap.dedent(
    """
    import sys, time, ray
    ray.init(address=sys.argv[1], log_to_driver=False)

    @ray.remote(num_cpus=0, resources={"gpu_1x": 1})
    class Worker:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    worker = Worker.remote()
    print(ray.get(worker.node.remote()), flush=True)
    time.sleep(600)
    """
)

# What Ray Train's PreemptionWatcher reads (ray.train.v2 preemption.py, Ray 2.60): the GCS's
# draining nodes, node id -> deadline in ms. Private, read here only to observe the engine.
DRAINING = textwrap.dedent(
    """
    import json, sys, time, ray
    ray.init(address=sys.argv[1], log_to_driver=False)
    deadline = time.monotonic() + 60
    while not ray._private.state.state.get_draining_nodes() and time.monotonic() < deadline:
        time.sleep(0.5)
    print(json.dumps(ray._private.state.state.get_draining_nodes()))
    """
)


def pre_stop_command() -> list[str]:
    """The worker pods' preStop command, as raycluster.yaml gives it."""
    cluster = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    group = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-1x")
    command = group["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]
    return [sys.executable if c == "python" else c for c in command["command"]]


def with_grace(command: list[str], seconds: int) -> list[str]:
    at = command.index("--grace-seconds") + 1
    return [*command[:at], str(seconds), *command[at + 1 :]]


@pytest.mark.slow
def test_pre_stop_drains_the_pods_node_as_a_preemption_and_waits_for_its_actors(
    cluster_temp_dir,
):
    cluster = LocalRayCluster(cluster_temp_dir, token_auth=False)
    holder = None
    try:
        cluster.start_head(num_cpus=1)
        node_dir = cluster_temp_dir / "pod"
        node_dir.mkdir()
        cluster._ray_start(  # a second "pod": a Ray node at an IP of its own
            [
                f"--address={cluster.gcs_address}",
                f"--node-ip-address={WORKER_IP}",
                "--num-cpus=1",
                '--resources={"gpu_1x": 1}',
                "--min-worker-port=0",
                "--max-worker-port=0",
            ],
            temp_dir=node_dir,
        )
        env = {**cluster.env, "RAY_ADDRESS": cluster.gcs_address, "PYTHONPATH": str(ROOT)}
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, cluster.gcs_address],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        worker_node = holder.stdout.readline().strip()
        assert worker_node, "the actor did not start on the worker node"

        grace = 60
        started = time.monotonic()
        hook = subprocess.Popen(
            with_grace(pre_stop_command(), grace),
            env={**env, "MIMRAY_NODE_IP": WORKER_IP},
            cwd=ROOT,
        )

        out = subprocess.run(
            [sys.executable, "-c", DRAINING, cluster.gcs_address],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        drained = yaml.safe_load(out.stdout.strip().splitlines()[-1])
        assert set(drained) == {worker_node}  # the pod's own node, not the head
        deadline_s = drained[worker_node] / 1000 - time.time()
        assert 0 < deadline_s <= grace  # the notice Ray Train's workers will read
        time.sleep(3)
        assert hook.poll() is None, "returned while a Ray actor still ran on the node"

        holder.kill()  # the worker group leaves the node (Ray Train restarts it elsewhere)
        holder.wait()
        assert hook.wait(timeout=40) == 0
        assert time.monotonic() - started < grace - 5, "waited out the grace period"
    finally:
        if holder and holder.poll() is None:
            holder.kill()
        cluster.stop()


def test_the_drain_is_a_preemption_with_the_pods_notice():
    command = drain_command("10.0.0.1:6379", "abc", 110)
    assert command[:2] == ["ray", "drain-node"]
    assert command[command.index("--reason") + 1] == "DRAIN_NODE_REASON_PREEMPTION"
    assert command[command.index("--deadline-remaining-seconds") + 1] == "110"
    assert os.path.basename(pre_stop_command()[0]).startswith("python")
