"""mimray on a real multi-node Ray cluster started on this machine, shaped like mimray's cloud
definitions: a head (where jobs' drivers run), an on-demand node that advertises `on_demand`,
and a spot node with the `trainer` resource the Train workers ask for. Token auth is on. One
cluster serves every test here (a cluster costs seconds of CPU to start).

(a) `mimray submit` ships a sweep through the Jobs API; its trials' worker groups train on the
    spot node while every trial driver lands on the on-demand node (no `driver_resources` in
    the spec), and the trials land in MLflow under the sweep's parent run. A failing job exits
    1 with its own error; `jobs stop` ends a live one.
(b) a sweep with its storage in S3 (moto) is stopped after its first trial, and a second
    submission restores it from S3, keeping the finished trial: the path a spot cluster relies
    on when the job, the head's disk or a node goes away.
"""

from __future__ import annotations

import functools
import os
import re
import time

import pytest
from broken_data import write_folder_with_empty_images
from local_ray_cluster import LocalRayCluster, cluster_sweep, run_mimray, short_temp_dir
from tiny_model import TINY_MODEL
from waiting import wait_until

from orchestrator.sweep.trial import TRIAL_NODE_TAG

pytestmark = pytest.mark.slow


mimray = functools.partial(run_mimray, timeout=540)


@pytest.fixture(scope="module")
def cluster():
    """The head (2 CPUs: jobs' drivers, and one-worker runs with no resources asked), an
    on-demand node (1 CPU) and a spot node (2 CPUs) with one `trainer`. Whole CPUs to spare on
    the nodes that train: a Ray Data read task needs one beside the fractional Train workers
    or trial process, or the data pipeline never starts."""
    with short_temp_dir() as temp_dir:
        started = LocalRayCluster(temp_dir)
        try:
            started.start_head(num_cpus=2, resources={"head": 1})
            started.add_node(num_cpus=1, resources={"on_demand": 100})
            started.add_node(num_cpus=2, resources={"trainer": 1})
            yield started
        finally:
            started.stop()


def _node_ids(cluster: LocalRayCluster, resource: str) -> set[str]:
    return {n["node_id"] for n in cluster.alive_nodes() if resource in n["resources_total"]}


def _nodes_of_new_actors(cluster: LocalRayCluster, kind: str, before: set[str]) -> set[str]:
    """Nodes of the actors of class `kind` (alive or not) that are not in `before`."""
    return {
        a["node_id"]
        for a in cluster.state("actors", class_name=kind)
        if a["actor_id"] not in before
    }


def _client_env(cluster: LocalRayCluster, tracking_uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "RAY_AUTH_TOKEN": cluster.token}
    env.pop("RAY_ADDRESS", None)
    # Only mimray's own header may carry the token: Ray's client would add one from
    # ~/.ray/auth_token by itself when auth is not explicitly disabled.
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def test_submit_runs_a_sweep_whose_drivers_stay_on_demand_and_workers_on_spot(tmp_path, cluster):
    started = time.monotonic()
    on_demand, spot = _node_ids(cluster, "on_demand"), _node_ids(cluster, "trainer")
    assert len(on_demand) == 1 and len(spot) == 1 and len(cluster.alive_nodes()) == 3
    project = tmp_path / "project"  # the folder shipped with the job
    project.mkdir()
    # One trial trains in its own process (one CPU worker), the other has a worker group of
    # two, so it keeps a driver process of its own. Every worker needs `trainer`, which only
    # the spot node has, so the trials go one at a time.
    sweep = cluster_sweep(
        "remote", {"trainer": 0.5}, [1, 2], tmp_path / "ray", knob="scaling.num_workers"
    )
    (project / "sweep.yaml").write_text(sweep)
    db = tmp_path / "mlflow.db"
    env = _client_env(cluster, f"sqlite:///{db}")
    address = ["--address", cluster.dashboard_url]

    # The token is checked: without it the Jobs API refuses, in one line.
    denied = mimray(["jobs", "list", *address], project, {**env, "RAY_AUTH_TOKEN": ""})
    assert denied.returncode == 1
    assert denied.stderr.startswith("mimray: error:") and "RAY_AUTH_TOKEN" in denied.stderr

    before = {a["actor_id"] for a in cluster.state("actors")}  # other tests' actors
    submitted = mimray(
        # The storage folder is shared by every local node, as NFS would be.
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
    assert "remote-num_workers-2_seed-0" in logs.stdout
    assert "[mimray] trial drivers reserve {on_demand: 0.01}" in logs.stdout
    status = mimray(["jobs", "status", "remote-1", *address], project, env)
    assert status.stdout.startswith("remote-1: SUCCEEDED")
    listed = mimray(["jobs", "list", *address], project, env)
    assert "remote-1" in listed.stdout and "SUCCEEDED" in listed.stdout

    # Ray's record: the trials' own processes (Tune trial actors) ran on the on-demand node
    # (the worker group's driver, though the head, where the job's driver runs, had CPUs for
    # it) and the spot node (the trial that trains in-process); the Train workers on spot.
    trial_nodes = _nodes_of_new_actors(cluster, "ImplicitFunc", before)
    assert trial_nodes == on_demand | spot, f"on-demand {on_demand}, trials on {trial_nodes}"
    workers = _nodes_of_new_actors(cluster, "RayTrainWorker", before)
    assert workers == spot, f"spot node {spot}, workers on {workers}"

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")  # the job got MLFLOW_TRACKING_URI from here
    experiment = client.get_experiment_by_name("remote")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mimray.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mimray.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == [
        "remote-num_workers-1_seed-0",
        "remote-num_workers-2_seed-0",
    ]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.params["scaling.worker_resources.trainer"] == "0.5"
        # The trial's own record of where its process ran: a worker group's driver on
        # on-demand capacity, a trial that is its own worker where workers go.
        group = run.data.params["scaling.num_workers"] == "2"
        assert run.data.tags[TRIAL_NODE_TAG] in (on_demand if group else spot), run.info.run_name

    # The same cluster for the jobs that do not succeed (they train on the head and spot).
    _a_failing_job_exits_1_with_its_error(cluster, project, env, tmp_path)
    _jobs_stop_ends_a_live_job(cluster, project, env, tmp_path)
    print(f"cluster submit e2e: {time.monotonic() - started:.0f} s")


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
        cluster_sweep("long", {"trainer": 1}, [0.75], tmp_path / "ray", epochs=200)
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


# ---------------------------------------------------------------------------------------------
# (b) A sweep in S3 restored after its job is stopped.
# ---------------------------------------------------------------------------------------------

TRIALS = 2  # the first finishes before the stop, the second is cut short


def s3_sweep(storage: str) -> str:
    # Long enough that the second trial is still running when the job is stopped.
    return cluster_sweep("survivor", {"trainer": 1}, [0.6, 0.7, 0.8][:TRIALS], storage, epochs=8)


def wait_for_log(cluster: LocalRayCluster, job: str, needle: str, timeout_s: float) -> str:
    def logs_with_needle() -> str | None:
        logs = cluster.job_logs(job)
        return logs if needle in logs else None

    return wait_until(logs_with_needle, timeout_s, f"{needle!r} in {job}'s logs", interval=1)


def test_sweep_in_s3_restores_after_its_job_is_stopped(
    tmp_path, cluster, s3_env, s3_client, bucket
):
    started = time.monotonic()
    project = tmp_path / "project"
    project.mkdir()
    (project / "sweep.yaml").write_text(s3_sweep(f"s3://{bucket}/runs"))
    env = _client_env(cluster, f"sqlite:///{tmp_path / 'mlflow.db'}")
    address = ["--address", cluster.dashboard_url]
    # The moto endpoint and its test keys travel with the job (--with-credentials).
    submit = ["submit", *address, "--with-credentials"]
    run = functools.partial(run_mimray, cwd=project, env=env, timeout=600)

    first = run([*submit, "--name", "first", "--", "sweep", "sweep.yaml"])
    assert first.returncode == 0, first.stderr[-3000:]
    wait_for_log(cluster, "first", " 1 done", timeout_s=420)
    stopped = run(["jobs", "stop", "first", *address])
    assert stopped.returncode == 0, stopped.stderr
    wait_until(lambda: cluster.job_status("first") == "STOPPED", 60, "the first job to stop")
    assert "STOPPED" in run(["jobs", "status", "first", *address]).stdout
    stored = s3_client.list_objects_v2(Bucket=bucket, Prefix="runs/survivor/")
    assert stored.get("KeyCount", 0) > 0, "nothing of the sweep is in S3"

    second = run([*submit, "--wait", "--name", "second", "--", "sweep", "sweep.yaml"])
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    restored = re.search(
        rf"restoring sweep from s3://{bucket}/runs/survivor: (\d+) of {TRIALS} trials "
        r"finished \(kept\)",
        second.stdout,
    )
    assert restored, second.stdout[-3000:]
    assert 1 <= int(restored.group(1)) < TRIALS
    # The CLI exits 1 (job FAILED) unless every trial finished.
    assert "job second: SUCCEEDED" in second.stderr
    assert "did not finish" not in second.stdout
    # The restored sweep reused its MLflow runs: one child run per trial, no duplicates.
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("survivor")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == TRIALS, [r.info.run_name for r in trials]
    assert {r.info.status for r in trials} == {"FINISHED"}
    print(f"S3 restore e2e: {time.monotonic() - started:.0f} s")
