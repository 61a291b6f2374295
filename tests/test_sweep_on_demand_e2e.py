"""Trial drivers never on spot: on a real multi-node Ray cluster whose on-demand node
advertises `on_demand` (as mimray's cluster definitions mark them) and whose other nodes are
spot capacity, a sweep whose trials have Ray Train worker groups puts every trial driver on the
on-demand node, with no `driver_resources` in the spec. The trial records the node its process
ran on (the `mimray.trial_node` tag of its run), and Ray's state API says the same."""

from __future__ import annotations

import os
import time

import pytest
import yaml
from local_ray_cluster import LocalRayCluster, port_for_a_config, run_mimray
from tiny_model import tiny_model

from orchestrator.sweep.trial import TRIAL_NODE_TAG


def _sweep(storage: str) -> str:
    base = {
        "method": {"name": "mae"},
        "model": tiny_model(),
        "data": {"source": "shapes", "num_images": 64},
        "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
        # Two workers: a worker group, so each trial keeps a driver process of its own.
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        "tracking": {"experiment": "placed", "system_metrics": False},
        "storage": {"path": storage},
    }
    sweep = {"grid": {"method.mask_ratio": [0.6, 0.75]}}
    return yaml.safe_dump({"name": "placed", "base": base, "sweep": sweep}, sort_keys=False)


@pytest.mark.slow
def test_trial_drivers_land_on_the_on_demand_node(tmp_path, cluster_temp_dir):
    started = time.monotonic()
    cluster = LocalRayCluster(cluster_temp_dir, token_auth=False, gcs_port=port_for_a_config())
    try:
        # The head schedules nothing; one small on-demand node; a larger spot node, where a
        # driver placed by CPU alone could go.
        cluster.start_head(num_cpus=0)
        cluster.add_node(num_cpus=1, resources={"on_demand": 100})
        cluster.add_node(num_cpus=3, resources={})
        nodes = cluster.alive_nodes()
        on_demand = {
            n["node_id"] for n in nodes if n.get("resources_total", {}).get("on_demand", 0) > 0
        }
        assert len(on_demand) == 1 and len(nodes) == 3

        (tmp_path / "placed.yaml").write_text(_sweep(str(tmp_path / "ray")))
        db = tmp_path / "mlflow.db"
        env = {
            **os.environ,
            "RAY_ADDRESS": cluster.gcs_address,
            "RAY_AUTH_MODE": "disabled",
            "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        }
        swept = run_mimray(["sweep", "placed.yaml"], tmp_path, env, timeout=540)
        assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
        # Ray's record: every trial's process (the Tune trial actor) ran on the on-demand node.
        drivers = {a["node_id"] for a in cluster.state("actors", class_name="ImplicitFunc")}
        assert drivers == on_demand, f"on-demand node {on_demand}, drivers on {drivers}"
        assert "[mimray] trial drivers reserve {on_demand: 0.01}" in swept.stdout
    finally:
        cluster.stop()

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("placed")
    trials = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("mimray.kind") == "trial"
    ]
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "FINISHED"
        # The trial's own record of where its process ran.
        assert run.data.tags[TRIAL_NODE_TAG] in on_demand
    print(f"on-demand placement e2e: {time.monotonic() - started:.0f} s")
