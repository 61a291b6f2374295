"""Where a sweep trial's own process runs: what it reserves, and why never on spot capacity.

A trial whose run has a Ray Train worker group keeps a small driver process beside it. Ray
Train restarts a worker group lost to a preemption, but nothing restarts a lost driver: its
trial ends. mimray's cluster definitions mark on-demand nodes with the custom resource
`on_demand` (`cluster/README.md`), so on a cluster where some node advertises it, every such
driver reserves `{on_demand: 0.01}` unless the sweep's `driver_resources` names `on_demand`
itself. A one-worker CPU trial trains in its own process: that process is the worker, placed
like one, and Tune restarts it from its last checkpoint (`train.max_failures`).
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.config import RunSpec
from orchestrator.fit.ray_setup import runs_in_process

# A trial's own driver only waits on its Train workers. A whole CPU per trial deadlocks small
# machines, and Tune refuses zero, so it reserves a sliver.
TRIAL_DRIVER_CPU = 0.01
# The custom resource that marks on-demand nodes, and what a driver asks of it: the nodes
# advertise 100, so drivers never use it up.
ON_DEMAND = "on_demand"
DRIVER_ON_DEMAND = 0.01


def driver_resources_on(
    cluster_resources: Mapping[str, float], requested: Mapping[str, float]
) -> dict[str, float]:
    """A trial driver's custom resources on a cluster with `cluster_resources` (Ray's totals):
    `requested`, plus `{on_demand: 0.01}` where nodes advertise `on_demand`."""
    if cluster_resources.get(ON_DEMAND, 0) > 0 and ON_DEMAND not in requested:
        return {**requested, ON_DEMAND: DRIVER_ON_DEMAND}
    return dict(requested)


def driver_resources(requested: Mapping[str, float]) -> dict[str, float]:
    """`driver_resources_on` the cluster this process is connected to (Ray started)."""
    import ray

    return driver_resources_on(ray.cluster_resources(), requested)


def trial_resources(
    spec: RunSpec, requested: Mapping[str, float], driver: Mapping[str, float] | None = None
) -> dict[str, float]:
    """What a trial's own process reserves: a sliver beside its Train workers with `driver`'s
    custom resources (default: the sweep's `requested` driver_resources), or, when it trains
    in-process (one CPU worker), what that worker would have reserved plus `requested`."""
    if not runs_in_process(spec):
        return {**(requested if driver is None else driver), "CPU": TRIAL_DRIVER_CPU}
    resources = {**requested, **spec.scaling.worker_resources}
    resources["CPU"] = spec.scaling.cpus_per_worker
    if spec.scaling.use_gpu:
        resources["GPU"] = spec.scaling.gpus_per_worker
    return resources
