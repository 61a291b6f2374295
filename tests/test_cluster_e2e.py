"""mimray on real multi-node Ray clusters started on this machine.

(a) `mimray submit` ships a sweep to a two-node cluster through the Jobs API (token auth on),
    and the trials land in MLflow under the sweep's parent run.
(b) a fake-multinode autoscaling cluster (cluster/local-fake.yaml's shape) adds a node of the
    type a sweep's workers ask for (`scaling.worker_resources`), runs the trial there, and
    removes the node once it is idle.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import pytest
import yaml
from broken_data import write_folder_with_empty_images
from local_ray_cluster import LocalRayCluster, port_for_a_config, run_mimray
from tiny_model import TINY_MODEL, tiny_model
from waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def tiny_sweep(
    name: str, worker_resources: dict[str, float], grid: list[float], storage: Path
) -> str:
    spec = {
        "name": name,
        "base": {
            "method": {"name": "mae"},
            "model": tiny_model(),
            "data": {"source": "shapes", "num_images": 64},
            "train": {"epochs": 1, "batch_size": 32},
            "scaling": {"num_workers": 1, "worker_resources": worker_resources},
            "tracking": {"experiment": name, "system_metrics": False},
            # Shared by every node, as s3:// is on a real cluster.
            "storage": {"path": str(storage)},
        },
        "sweep": {"grid": {"method.mask_ratio": grid}},
    }
    return yaml.safe_dump(spec, sort_keys=False)


mimray = functools.partial(run_mimray, timeout=540)


def _client_env(cluster: LocalRayCluster, tracking_uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "RAY_AUTH_TOKEN": cluster.token}
    env.pop("RAY_ADDRESS", None)
    # Only mimray's own header may carry the token: Ray's client would add one from
    # ~/.ray/auth_token by itself when auth is not explicitly disabled.
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def test_submit_runs_a_sweep_on_a_two_node_cluster(tmp_path, cluster_temp_dir):
    started = time.monotonic()
    cluster = LocalRayCluster(cluster_temp_dir)
    try:
        # Whole CPUs to spare on each node: a Ray Data read task needs one beside the
        # fractional Train worker / trial driver, or the data pipeline never starts.
        cluster.start_head(num_cpus=2, resources={"head": 1})
        cluster.add_node(num_cpus=2, resources={"trainer": 1})
        project = tmp_path / "project"  # the folder shipped with the job
        project.mkdir()
        (project / "sweep.yaml").write_text(
            tiny_sweep("remote", {"trainer": 1}, [0.6, 0.75], tmp_path / "ray")
        )
        db = tmp_path / "mlflow.db"
        env = _client_env(cluster, f"sqlite:///{db}")
        address = ["--address", cluster.dashboard_url]

        # The token is checked: without it the Jobs API refuses, in one line.
        denied = mimray(["jobs", "list", *address], project, {**env, "RAY_AUTH_TOKEN": ""})
        assert denied.returncode == 1
        assert denied.stderr.startswith("mimray: error:") and "RAY_AUTH_TOKEN" in denied.stderr

        submitted = mimray(
            # The storage folder is shared by both local nodes, as NFS would be.
            ["submit", *address, "--wait", "--shared-storage", "--name", "remote-1", "--"]
            + ["sweep", "sweep.yaml"],
            project,
            env,
        )
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert submitted.stdout.splitlines()[0] == "remote-1"
        assert "job remote-1: SUCCEEDED" in submitted.stderr

        logs = mimray(["jobs", "logs", "remote-1", *address], project, env)
        assert logs.returncode == 0, logs.stderr
        assert "[mimray] sweep 'remote': 2 trials" in logs.stdout
        assert "remote-mask_ratio-0.6_seed-0" in logs.stdout
        status = mimray(["jobs", "status", "remote-1", *address], project, env)
        assert status.stdout.startswith("remote-1: SUCCEEDED")
        listed = mimray(["jobs", "list", *address], project, env)
        assert "remote-1" in listed.stdout and "SUCCEEDED" in listed.stdout

        # Train workers needed `trainer`, which only the second node has.
        head = [n for n in cluster.alive_nodes() if n["is_head_node"]][0]
        assert cluster.train_worker_nodes() and head["node_id"] not in cluster.train_worker_nodes()

        # The same cluster for the jobs that do not succeed (they train on the head too).
        _a_failing_job_exits_1_with_its_error(cluster, project, env, tmp_path)
        _jobs_stop_ends_a_live_job(cluster, project, env, tmp_path)
    finally:
        cluster.stop()

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")  # the job got MLFLOW_TRACKING_URI from here
    experiment = client.get_experiment_by_name("remote")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mimray.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mimray.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == [
        "remote-mask_ratio-0.6_seed-0",
        "remote-mask_ratio-0.75_seed-0",
    ]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params["scaling.worker_resources.trainer"] == "1.0"
    print(f"two-node submit e2e: {time.monotonic() - started:.0f} s")


def _a_failing_job_exits_1_with_its_error(cluster, project, env, tmp_path) -> None:
    """`submit --wait` of a job that fails on the cluster: exit 1, and the job's own error is
    the last error line the user sees. The data passes every check before training (the
    files exist) and fails in the worker: 8 of 64 images are empty."""
    write_folder_with_empty_images(tmp_path / "broken", count=64, empty=8)
    command = ["pretrain", "demo", "--name", "broken", *[f"--set={s}" for s in TINY_MODEL]]
    command += [f"--set=data.source={tmp_path / 'broken'}", "--set=train.batch_size=32"]
    command += [f"--set=storage.path={tmp_path / 'ray'}", "--set=scaling.num_workers=1"]
    address = ["--address", cluster.dashboard_url]
    failed = mimray(
        ["submit", *address, "--wait", "--shared-storage", "--name", "broken", "--", *command],
        project,
        env,
    )
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "job broken: FAILED" in failed.stderr
    errors = [line for line in failed.stdout.splitlines() if "mimray: error:" in line]
    assert errors, failed.stdout[-3000:]
    assert "8 of 64 images (12.5%)" in errors[-1] and "data.max_skipped_share" in errors[-1]
    status = mimray(["jobs", "status", "broken", *address], project, env)
    assert status.returncode == 1 and status.stdout.startswith("broken: FAILED")


def _jobs_stop_ends_a_live_job(cluster, project, env, tmp_path) -> None:
    """`jobs stop` of a sweep that is training: the job ends STOPPED and its trial's process
    (the Tune trial actor that trains in-process on the `trainer` node) is gone."""
    (project / "long.yaml").write_text(
        tiny_sweep("long", {"trainer": 1}, [0.75], tmp_path / "ray").replace(
            "epochs: 1", "epochs: 200"
        )
    )
    address = ["--address", cluster.dashboard_url]
    started = mimray(
        ["submit", *address, "--shared-storage", "--name", "long", "--", "sweep", "long.yaml"],
        project,
        env,
    )
    assert started.returncode == 0, started.stderr[-3000:]

    def running() -> bool:
        return "[mimray] trials: 1 running" in cluster.job_logs("long")

    wait_until(running, 240, "the long sweep's trial to start", interval=1)
    assert cluster.state("actors", class_name="ImplicitFunc", state="ALIVE")
    stopped = mimray(["jobs", "stop", "long", *address], project, env)
    assert stopped.returncode == 0 and stopped.stdout.startswith("long: stopping"), stopped.stdout
    wait_until(lambda: cluster.job_status("long") == "STOPPED", 60, "the long job to be STOPPED")
    status = mimray(["jobs", "status", "long", *address], project, env)
    assert status.stdout.startswith("long: STOPPED"), status.stdout
    wait_until(
        lambda: not cluster.state("actors", class_name="ImplicitFunc", state="ALIVE"),
        60,
        "the stopped job's trial actor to exit",
        interval=1,
    )


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
        (tmp_path / "sweep.yaml").write_text(
            tiny_sweep("fake", {"fake_gpu": 1}, [0.75], tmp_path / "ray")
        )
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
