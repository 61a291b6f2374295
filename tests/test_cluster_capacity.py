"""What Ray's own autoscaler scheduler does with cluster/aws.yaml and gcp.yaml, offline.

`ResourceDemandScheduler.get_nodes_to_launch` is the function the launcher's autoscaler calls
every update; here it plans for a cloud with no instances yet (`NoInstancesYet` answers the
two provider questions it asks), so the tests see which node types Ray would launch and how
many at once. `get_bin_pack_residual` is Ray's bin-packing: what does not fit on a node.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.node_provider_availability_tracker import (
    NodeAvailabilityRecord,
    NodeAvailabilitySummary,
    UnavailableNodeInformation,
)
from ray.autoscaler._private.resource_demand_scheduler import (
    ResourceDemandScheduler,
    get_bin_pack_residual,
)

from orchestrator.capacity_scorer import SCORER_ENV, SCORER_PATH
from orchestrator.config.run import ScalingSpec

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
CONFIGS = ["aws.yaml", "gcp.yaml"]
# What the README tells a run to ask per worker / per trial driver.
PIN_ON_DEMAND = {"on_demand": 0.01}
DRIVER = {"CPU": 0.01, "on_demand": 0.01}


class NoInstancesYet:
    """A cloud account where the cluster has no worker instances yet."""

    def non_terminated_nodes(self, tag_filters: dict) -> list:
        return []

    def node_tags(self, node_id: str) -> dict:
        return {}


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def type_named(config: dict, size: str, spot: bool) -> str:
    """The node type of a GPU size (gpu_1x / gpu_8x), spot or on-demand, in either naming."""
    (name,) = [
        k
        for k, v in config["available_node_types"].items()
        if v["resources"].get(size) and ("on_demand" not in v["resources"]) == spot
    ]
    return name


def plan(config: dict, demands: list[dict], unavailable: tuple[str, ...] = ()) -> dict[str, int]:
    """Worker nodes Ray's scheduler launches now for DEMANDS (the head is already up)."""
    types = copy.deepcopy(config["available_node_types"])
    types[config["head_node_type"]]["max_workers"] = 0
    scheduler = ResourceDemandScheduler(
        NoInstancesYet(),
        types,
        config["max_workers"],
        config["head_node_type"],
        config["upscaling_speed"],
    )
    summary = NodeAvailabilitySummary(
        {
            name: NodeAvailabilityRecord(
                node_type=name,
                is_available=False,
                last_checked_timestamp=0,
                unavailable_node_information=UnavailableNodeInformation(
                    category="InsufficientInstanceCapacity", description="no spot capacity"
                ),
            )
            for name in unavailable
        }
    )
    to_launch, _ = scheduler.get_nodes_to_launch([], {}, demands, {}, [], {}, [], summary)
    to_launch.pop(config["head_node_type"], None)
    return to_launch


def worker(size: str, pinned: bool = False) -> dict[str, float]:
    """One Train worker of a GPU run as mimray asks for it (scaling.* defaults)."""
    scaling = ScalingSpec()
    bundle = {"CPU": scaling.cpus_per_worker, "GPU": scaling.gpus_per_worker, size: 1}
    return {**bundle, **(PIN_ON_DEMAND if pinned else {})}


@pytest.fixture
def capacity_scorer(monkeypatch):
    monkeypatch.setenv(SCORER_ENV, SCORER_PATH)  # as head_start_ray_commands sets it


@pytest.mark.parametrize("name", CONFIGS)
def test_first_wave_of_eight_gpu_trials_launches_at_once(name):
    config = load(name)
    spot = type_named(config, "gpu_1x", spot=True)
    assert plan(config, [worker("gpu_1x")] * 8) == {spot: 8}
    # The defect this guards: Ray's default upscaling_speed starts 5 and makes 3 wait.
    assert plan({**config, "upscaling_speed": 1.0}, [worker("gpu_1x")] * 8) == {spot: 5}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("size", ["gpu_1x", "gpu_8x"])
def test_spot_first_then_the_on_demand_twin_when_spot_cannot_launch(name, size, capacity_scorer):
    config = load(name)
    spot, on_demand = type_named(config, size, True), type_named(config, size, False)
    assert plan(config, [worker(size)]) == {spot: 1}
    assert plan(config, [worker(size)], unavailable=(spot,)) == {on_demand: 1}
    # A pinned run never goes to spot, capacity or not.
    assert plan(config, [worker(size, pinned=True)]) == {on_demand: 1}


@pytest.mark.parametrize("name", CONFIGS)
def test_without_the_scorer_ray_keeps_asking_for_spot(name, monkeypatch):
    monkeypatch.delenv(SCORER_ENV, raising=False)
    config = load(name)
    spot = type_named(config, "gpu_1x", spot=True)
    # Ray's default scorer ignores the failed launches it records: no fallback.
    assert plan(config, [worker("gpu_1x")], unavailable=(spot,)) == {spot: 1}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("size", ["gpu_1x", "gpu_8x"])
@pytest.mark.parametrize("pinned", [False, True])
def test_resources_add_up_for_a_full_node_of_workers(name, size, pinned):
    config = load(name)
    node = config["available_node_types"][type_named(config, size, spot=not pinned)]
    gpus = int(node["resources"]["GPU"])
    workers = [worker(size, pinned)] * gpus
    # Every GPU of the node takes one worker, and one worker more does not fit.
    assert get_bin_pack_residual([node["resources"]], workers)[0] == []
    assert get_bin_pack_residual([node["resources"]], [*workers, worker(size)])[0]
    # CPU left beside the workers for Ray Data (its budget excludes what workers reserve).
    assert node["resources"]["CPU"] - gpus * ScalingSpec().cpus_per_worker >= 1


@pytest.mark.parametrize("name", CONFIGS)
def test_trial_drivers_fit_on_on_demand_nodes_only(name):
    config = load(name)
    for type_name, node_type in config["available_node_types"].items():
        unfit = get_bin_pack_residual([node_type["resources"]], [DRIVER])[0]
        assert bool(unfit) == ("on_demand" not in node_type["resources"]), type_name
    # And eight pinned workers plus their drivers fit the on-demand marker of one 8-GPU node.
    on_demand = config["available_node_types"][type_named(config, "gpu_8x", spot=False)]
    demands = [worker("gpu_8x", pinned=True)] * 8 + [DRIVER] * 8
    assert not get_bin_pack_residual([on_demand["resources"]], demands)[0]
