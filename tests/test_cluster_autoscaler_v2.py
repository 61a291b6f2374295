"""What the autoscaler that `ray up` starts (v2, since Ray 2.50) launches for mimray's demands on
cluster/aws.yaml and gcp.yaml: its own scheduler (`ray.autoscaler.v2.scheduler`) fed the
config as its monitor reads it (`AutoscalingConfig`), offline, for a cloud with no workers yet.

It is also why the launcher clusters promise no spot -> on-demand fallback: told that a spot
type's launches fail (availability 0), v2 still asks for the spot type.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
from ray.autoscaler.v2.utils import ResourceRequestUtil
from ray.core.generated.autoscaler_pb2 import ResourceRequestByCount

from orchestrator.config.run import ScalingSpec

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
CONFIGS = ["aws.yaml", "gcp.yaml"]
DRIVER = {"CPU": 0.01, "on_demand": 0.01}  # a trial driver on a cluster with the marker


def autoscaling_config(name: str) -> AutoscalingConfig:
    raw = yaml.safe_load((CLUSTER / name).read_text())
    return AutoscalingConfig(prepare_config(raw), skip_content_hash=True)


def type_of(node_types: dict, size: str, spot: bool) -> str:
    """The worker type of a GPU size, spot (no on_demand marker) or on-demand."""
    (name,) = [
        k
        for k, v in node_types.items()
        if v["resources"].get(size) and ("on_demand" not in v["resources"]) == spot
    ]
    return name


def launches(
    config: AutoscalingConfig,
    demands: list[tuple[dict[str, float], int]],
    failing: tuple[str, ...] = (),
) -> dict[str, int]:
    """Nodes v2 asks to launch for `demands` ((bundle, count) pairs), the types in `failing`
    scored as v2 scores a type whose launches fail (availability 0)."""
    scores = dict.fromkeys(failing, 0.0)
    request = SchedulingRequest(
        disable_launch_config_check=True,
        node_type_configs=config.get_node_type_configs(),
        max_num_nodes=config.get_max_num_nodes(),
        resource_requests=[
            ResourceRequestByCount(request=ResourceRequestUtil.make(bundle), count=count)
            for bundle, count in demands
        ],
        cloud_resource_availabilities=scores,
        recoverable_resource_availabilities=scores,
    )
    planned: dict[str, int] = {}
    for launch in ResourceDemandScheduler().schedule(request).to_launch:
        planned[launch.instance_type] = planned.get(launch.instance_type, 0) + launch.count
    return planned


def worker(size: str, pinned: bool = False) -> dict[str, float]:
    """One Train worker of a GPU run as mimray asks for it (scaling.* defaults)."""
    scaling = ScalingSpec()
    bundle = {"CPU": scaling.cpus_per_worker, "GPU": scaling.gpus_per_worker, size: 1}
    return {**bundle, **({"on_demand": 0.01} if pinned else {})}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_wave_of_gpu_workers_goes_to_spot(name):
    config = autoscaling_config(name)
    raw = config.get_config("available_node_types")
    assert launches(config, [(worker("gpu_1x"), 8)]) == {type_of(raw, "gpu_1x", spot=True): 8}
    # Eight 8x workers fill one 8-GPU node.
    assert launches(config, [(worker("gpu_8x"), 8)]) == {type_of(raw, "gpu_8x", spot=True): 1}


@pytest.mark.parametrize("name", CONFIGS)
def test_no_fallback_v2_keeps_asking_for_a_failing_spot_type(name):
    config = autoscaling_config(name)
    spot = type_of(config.get_config("available_node_types"), "gpu_1x", spot=True)
    assert launches(config, [(worker("gpu_1x"), 8)], failing=(spot,)) == {spot: 8}


@pytest.mark.parametrize("name", CONFIGS)
def test_trial_drivers_start_a_small_on_demand_node_not_a_gpu_or_spot_one(name):
    config = autoscaling_config(name)
    planned = launches(config, [(DRIVER, 8)])
    ((node_type, count),) = planned.items()
    resources = config.get_config("available_node_types")[node_type]["resources"]
    assert count == 1 and "on_demand" in resources and not resources.get("GPU"), planned


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("size", ["gpu_1x", "gpu_8x"])
def test_pinned_workers_go_to_the_on_demand_type(name, size):
    config = autoscaling_config(name)
    on_demand = type_of(config.get_config("available_node_types"), size, spot=False)
    assert set(launches(config, [(worker(size, pinned=True), 2)])) == {on_demand}
