"""A fake-multinode autoscaling cluster (cluster/local-fake.yaml's shape) adds a node of the type
a sweep's workers ask for (`scaling.worker_resources`), runs the trial there, and removes the
node once it is idle: the autoscaler that `ray start --autoscaling-config` really runs."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import pytest
import yaml
from local_ray_cluster import LocalRayCluster, cluster_sweep, port_for_a_config, run_mimray
from waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
mimray = functools.partial(run_mimray, timeout=540)


def fake_cluster_config(gcs_address: str) -> dict:
    """cluster/local-fake.yaml on this test's own GCS port, idle nodes removed after 10 s."""
    config = yaml.safe_load((REPO / "cluster" / "local-fake.yaml").read_text())
    config["provider"]["gcs_address"] = gcs_address
    config["idle_timeout_minutes"] = 10 / 60
    config["max_workers"] = 1
    config["available_node_types"]["fake_gpu_node"]["max_workers"] = 1
    return config


def test_autoscaler_adds_the_node_type_a_sweep_needs_and_removes_it_when_idle(
    tmp_path, cluster_temp_dir
):
    started = time.monotonic()
    # The fake provider's config names the GCS address, so its port is chosen before the start.
    cluster = LocalRayCluster(cluster_temp_dir, token_auth=False, gcs_port=port_for_a_config())
    # The fake provider starts nodes on the machine's address, so the head uses it too.
    import ray._private.services as services

    node_ip = services.get_node_ip_address()
    config = tmp_path / "local-fake.yaml"
    config.write_text(yaml.safe_dump(fake_cluster_config(f"{node_ip}:{cluster.gcs_port}")))
    try:
        cluster.start_head(
            num_cpus=2,
            resources={"head": 1},
            node_ip=node_ip,
            extra_args=[f"--autoscaling-config={config}"],
            extra_env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"},
        )
        assert [n["resources_total"].get("fake_gpu") for n in cluster.alive_nodes()] == [None]
        sweep = cluster_sweep("fake", {"fake_gpu": 1}, [0.75], tmp_path / "ray")
        (tmp_path / "sweep.yaml").write_text(sweep)
        env = {**os.environ, "RAY_ADDRESS": cluster.gcs_address, "RAY_AUTH_MODE": "disabled"}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
        swept = mimray(["sweep", "sweep.yaml"], tmp_path, env)
        assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
        assert "FINISHED" in swept.stdout

        # The Train worker ran on a node the autoscaler added, of the type with `fake_gpu`.
        nodes = {n["node_id"]: n for n in cluster.state("nodes")}
        (worker_node,) = cluster.train_worker_nodes()
        assert not nodes[worker_node]["is_head_node"]
        assert nodes[worker_node]["resources_total"]["fake_gpu"] == 1

        # ... and removes it once it has been idle for the timeout.
        wait_until(
            lambda: not any("fake_gpu" in n["resources_total"] for n in cluster.alive_nodes()),
            90,
            "the autoscaler to remove the idle fake GPU node",
            interval=1,
        )
        assert nodes_dead(cluster, worker_node)
    finally:
        cluster.stop()
    print(f"fake autoscaling e2e: {time.monotonic() - started:.0f} s")


def nodes_dead(cluster: LocalRayCluster, node_id: str) -> bool:
    return {n["node_id"]: n["state"] for n in cluster.state("nodes")}[node_id] == "DEAD"
