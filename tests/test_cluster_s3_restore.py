"""Checkpoints that survive the job: a sweep submitted to a two-node cluster with its storage in
S3 (moto) is stopped after its first trial, and a second submission restores it from S3,
keeping the finished trial. This is the path a spot cluster relies on when the job, the
head's disk or a node goes away (slow: a real local Ray cluster, a real S3 API).
"""

from __future__ import annotations

import functools
import os
import re
import time

import pytest
import yaml
from local_ray_cluster import LocalRayCluster, run_mimray
from tiny_model import tiny_model
from waiting import wait_until

pytestmark = pytest.mark.slow
TRIALS = 2  # the first finishes before the stop, the second is cut short


def sweep_spec(storage: str) -> str:
    return yaml.safe_dump(
        {
            "name": "survivor",
            "base": {
                "method": {"name": "mae"},
                "model": tiny_model(),
                "data": {"source": "shapes", "num_images": 64},
                # Long enough that the second trial is still running when the job is stopped.
                "train": {"epochs": 8, "batch_size": 32},
                "scaling": {"num_workers": 1, "worker_resources": {"trainer": 1}},
                "tracking": {"experiment": "survivor", "system_metrics": False},
                "storage": {"path": storage},
            },
            "sweep": {"grid": {"method.mask_ratio": [0.6, 0.7, 0.8][:TRIALS]}},
        },
        sort_keys=False,
    )


mimray = functools.partial(run_mimray, timeout=600)


def wait_for_log(cluster: LocalRayCluster, job: str, needle: str, timeout_s: float) -> str:
    def logs_with_needle() -> str | None:
        logs = cluster.job_logs(job)
        return logs if needle in logs else None

    return wait_until(logs_with_needle, timeout_s, f"{needle!r} in {job}'s logs", interval=1)


def test_sweep_in_s3_restores_after_its_job_is_stopped(
    tmp_path, cluster_temp_dir, s3_env, s3_client, bucket
):
    started = time.monotonic()
    cluster = LocalRayCluster(cluster_temp_dir, token_auth=False)
    try:
        cluster.start_head(num_cpus=2, resources={"head": 1})
        cluster.add_node(num_cpus=2, resources={"trainer": 1})
        project = tmp_path / "project"
        project.mkdir()
        (project / "sweep.yaml").write_text(sweep_spec(f"s3://{bucket}/runs"))
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
        env.pop("RAY_ADDRESS", None)
        env["RAY_AUTH_MODE"] = "disabled"
        address = ["--address", cluster.dashboard_url]
        # The moto endpoint and its test keys travel with the job (--with-credentials).
        submit = ["submit", *address, "--with-credentials"]

        first = mimray([*submit, "--name", "first", "--", "sweep", "sweep.yaml"], project, env)
        assert first.returncode == 0, first.stderr[-3000:]
        wait_for_log(cluster, "first", " 1 done", timeout_s=420)
        stopped = mimray(["jobs", "stop", "first", *address], project, env)
        assert stopped.returncode == 0, stopped.stderr
        wait_until(lambda: cluster.job_status("first") == "STOPPED", 60, "the first job to stop")
        assert "STOPPED" in mimray(["jobs", "status", "first", *address], project, env).stdout
        stored = s3_client.list_objects_v2(Bucket=bucket, Prefix="runs/survivor/")
        assert stored.get("KeyCount", 0) > 0, "nothing of the sweep is in S3"

        second = mimray(
            [*submit, "--wait", "--name", "second", "--", "sweep", "sweep.yaml"], project, env
        )
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
        import mlflow

        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        runs = mlflow.search_runs(experiment_names=["survivor"], output_format="list")
        trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(trials) == TRIALS, [r.info.run_name for r in trials]
        assert {r.info.status for r in trials} == {"FINISHED"}
    finally:
        cluster.stop()
    print(f"S3 restore e2e: {time.monotonic() - started:.0f} s")
