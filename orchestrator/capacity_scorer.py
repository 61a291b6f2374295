"""Spot → on-demand fallback for Ray's cluster-launcher autoscaler.

Ray's autoscaler records every failed node launch (e.g. EC2's `InsufficientInstanceCapacity`
for a spot type) in a `NodeAvailabilitySummary` that it hands to its utilization scorer, but
the default scorer ignores it: the autoscaler keeps asking for the same spot type and trials
stay pending. This scorer declines node types whose last launch failed, so the scheduler
picks the next type that fits the same demand: the on-demand twin that advertises the same
`gpu_1x` / `gpu_8x` resource (cluster/aws.yaml, cluster/gcp.yaml).

The head's autoscaler loads it by name when started with
`RAY_AUTOSCALER_UTILIZATION_SCORER=orchestrator.capacity_scorer.skip_unavailable_node_types`
(head_start_ray_commands). A failed type is skipped until Ray drops the record: after a
successful launch of that type, or after AUTOSCALER_NODE_AVAILABILITY_MAX_STALENESS_S
(30 minutes by default), when spot is tried again.
"""

from __future__ import annotations

from typing import Any

from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer

SCORER_ENV = "RAY_AUTOSCALER_UTILIZATION_SCORER"
SCORER_PATH = "orchestrator.capacity_scorer.skip_unavailable_node_types"


def skip_unavailable_node_types(
    node_resources: dict[str, float],
    resources: list[dict[str, float]],
    node_type: str,
    *,
    node_availability_summary: Any,
) -> Any:
    """Ray's default score, or None (do not launch) for a type whose last launch failed."""
    record = node_availability_summary.node_availabilities.get(node_type)
    if record is not None and not record.is_available:
        return None
    return _default_utilization_scorer(
        node_resources, resources, node_type, node_availability_summary=node_availability_summary
    )
