"""Connecting to Ray and sizing what a run asks of it: shared by pretrain runs and evaluations.

`ensure_ray` joins a cluster (`--address`/RAY_ADDRESS) or starts local Ray; `scaling_config`
and `data_config` turn a spec's scaling section into Ray Train's worker and Ray Data budgets.
Ray is imported inside each function, so that importing this module stays cheap for commands
that never start Ray (start-up speed, not an import circle).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from orchestrator import console_log, ray_internals
from orchestrator.config import EvalSpec, RunSpec

# This driver's Ray session folder, from what `ray.init` returned (public: RayContext).
_session_dir: str | None = None


def ensure_ray(address: str | None = None, log_to_driver: bool = True) -> None:
    """Connect to `address`/RAY_ADDRESS when given, else start local Ray on this machine.

    `log_to_driver=False` keeps workers' output in Ray's session logs instead of the console.
    """
    import ray

    global _session_dir
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address, log_to_driver=log_to_driver)
        ray_internals.pin_data_coordinator_here()
    else:
        context = ray.init(
            include_dashboard=True,
            # Under the CLI's console policy Ray's driver logs are already routed to a file.
            configure_logging=not console_log.is_active(),
            logging_level="WARNING",
            log_to_driver=log_to_driver,
        )
    _session_dir = context.address_info.get("session_dir")
    log_path = console_log.attach_session_log(session_logs_dir())
    if log_path:
        print(f"[mimray] Ray, Tune, Ray Data and MLflow logs: {log_path}", flush=True)


def session_logs_dir() -> str | None:
    """This driver's Ray session log folder, or None (not started here, or a client
    connection, which has no local session folder)."""
    return f"{_session_dir}/logs" if _session_dir else None


def scaling_config(scaling: Any, extra_resources: Mapping[str, float] | None = None) -> Any:
    """Ray Train's ScalingConfig from a spec's scaling section (num_workers, use_gpu,
    cpus_per_worker, gpus_per_worker), plus custom resources per worker."""
    from ray.train import ScalingConfig

    resources = {**(extra_resources or {}), "CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return ScalingConfig(
        num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
    )


def data_config(scaling: Any) -> Any:
    """Ray Data's CPUs beside the Train workers: the cluster's CPUs minus what the workers
    reserve, set from the cluster (not a hand-tuned fraction).

    The stream runs without Ray Data's per-operator budgets (`workloads/data/decode_stage.py`):
    its decode tasks, one CPU each, take the CPUs Ray's scheduler has free beside the workers'
    placement groups, and this limit is what Ray Data reports and asks an autoscaling cluster
    for. With less than one CPU left no decode task is ever scheduled and the run hangs: that
    is refused here in one line. When the workers do not fit the cluster yet (an autoscaling
    cluster adds nodes for them), nothing can be judged and Ray's default stands.
    """
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import DataConfig

    free = data_cpus(scaling)
    if free is None:
        return DataConfig()
    return DataConfig(
        execution_options={"train": ExecutionOptions(resource_limits=ExecutionResources(cpu=free))}
    )


def data_cpus(scaling: Any) -> float | None:
    """The cluster's CPUs minus the workers' reservation; None when the workers do not fit
    yet; ValueError (one line) when less than one CPU would be left for Ray Data."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    reserved = scaling.num_workers * scaling.cpus_per_worker
    free = total - reserved
    if free < 0:
        return None
    if free < 1:
        raise ValueError(
            f"scaling: {scaling.num_workers} workers x cpus_per_worker "
            f"{scaling.cpus_per_worker:g} reserve {reserved:g} of the cluster's {total:g} "
            f"CPUs, leaving {free:g} for Ray Data, which needs at least 1 to decode images; "
            f"allowed: num_workers x cpus_per_worker <= {total - 1:g}"
        )
    return free


def runs_in_process(spec: RunSpec | EvalSpec) -> bool:
    """One CPU worker trains (or evaluates) in the calling process (`in_process.py`): no worker
    group to start. Several workers keep Ray Train's TorchTrainer, and so does a GPU worker:
    the CLI's own process holds no GPU from Ray, so it could not pick its device."""
    return spec.scaling.num_workers == 1 and not spec.scaling.use_gpu


def worker_scaling(
    spec: RunSpec | EvalSpec, extra_resources: Mapping[str, float] | None = None
) -> Any:
    """The worker group's ScalingConfig, with `extra_resources` per worker."""
    return scaling_config(spec.scaling, extra_resources)
