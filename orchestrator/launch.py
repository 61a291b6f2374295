"""Launching pretrain runs: a validated spec becomes a Ray Train V2 `TorchTrainer` and a run.

The run name is deterministic (the `--name`, or one derived from the spec's fingerprint), and
Ray Train resumes a `RunConfig(name, storage_path)` it has seen before; the MLflow run is
found again by the same name. So re-running a name continues the run: same checkpoints, same
MLflow run, never a duplicate.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import __version__, console_log
from orchestrator.evaluation.data import describe_eval_data, labelled_dataset
from orchestrator.local_fit import fit_in_process
from orchestrator.config import RunSpec, check_name
from orchestrator.tracking import (
    FINGERPRINT_TAG,
    RunHandle,
    Tracker,
    default_root,
    resolve_tracking_uri,
)
from workloads.data import DatasetInfo, build_dataset, describe_source
from workloads.data.stream import order_seed, pretraining_view
from workloads.methods import train_img_size
from workloads.pretrain import Schedule, make_schedule, train_loop_per_worker
from workloads.progress import progress_every_s


@dataclass(frozen=True)
class PretrainResult:
    name: str
    run_id: str
    tracking_uri: str
    run_path: str
    resumed: bool
    epochs_done: int
    final_loss: float | None
    images_per_s: float | None
    checkpoint_uri: str | None


def default_run_name(spec: RunSpec) -> str:
    # The source's last segment may hold spaces or a query: keep only name-safe characters.
    source = re.sub(r"[^A-Za-z0-9._-]", "", spec.data.source.rstrip("/").split("/")[-1])
    return f"{spec.method.name}-{source.lstrip('.')[:40] or 'data'}-{spec.fingerprint()[:8]}"


def resolve_storage_path(spec: RunSpec) -> str:
    """Ray storage for checkpoints: the spec's path (local or s3://) or ./mimray-runs/ray."""
    path = spec.storage.path
    if path is None:
        return str(default_root() / "ray")
    if "://" in path:
        return path.rstrip("/")
    return str(Path(path).resolve())


def ensure_ray(address: str | None = None, log_to_driver: bool = True) -> None:
    """Connect to `address`/RAY_ADDRESS when given, else start local Ray on this machine.

    `log_to_driver=False` keeps workers' output in Ray's session logs instead of the console.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        pin_data_coordinator_here()
    else:
        ray.init(
            include_dashboard=True,
            # Under the CLI's console policy Ray's driver logs are already routed to a file.
            configure_logging=not console_log.is_active(),
            logging_level="WARNING",
            log_to_driver=log_to_driver,
        )
    log_path = console_log.attach_session_log(session_logs_dir())
    if log_path:
        print(f"[mimray] Ray, Tune, Ray Data and MLflow logs: {log_path}", flush=True)


def pin_data_coordinator_here() -> None:
    """Create Ray Data's autoscaling coordinator on this driver's node, before any trial runs.

    It is a detached actor (it outlives every job) that Ray 2.60 creates on the node of the
    first process to run a dataset. A one-worker trial trains, and so reads its data, inside
    its Tune actor, often on a GPU node the autoscaler added: created there, the coordinator
    keeps that node busy forever and the autoscaler never removes it (seen on the fake
    multi-node cluster). Created here first, it lives on the driver's node (the head for
    `mimray submit`). Private Ray API: a Ray without it has nothing to pin.
    """
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    get_or_create_autoscaling_coordinator()


def session_logs_dir() -> str | None:
    """This driver's Ray session log folder, or None (a client connection has none here)."""
    try:
        from ray._private.worker import _global_node

        return _global_node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - no local node behind this connection
        return None


def git_commit() -> str | None:
    """The commit of the mimray source in use, when it is a git checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_tags(spec: RunSpec, run_path: str) -> dict[str, str]:
    tags = {
        FINGERPRINT_TAG: spec.fingerprint(),
        "mimray.version": __version__,
        "mimray.ray_run_path": run_path,
        "mimray.method": spec.method.name,
    }
    commit = git_commit()
    if commit:
        tags["mimray.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


def runs_in_process(spec: RunSpec) -> bool:
    """One CPU worker trains in the calling process (Ray Train's local mode, `local_fit.py`):
    no worker group to start. Several workers keep Ray Train's TorchTrainer, and so does a GPU
    worker: the CLI's own process holds no GPU from Ray, so it could not pick its device."""
    return spec.scaling.num_workers == 1 and not spec.scaling.use_gpu


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


def data_config(spec: RunSpec) -> Any:
    """Ray Data's CPUs beside the Train workers: the cluster's CPUs minus what the workers
    reserve, set from the cluster (not a hand-tuned fraction).

    Ray 2.60 hands Ray Data whatever Train leaves, in whole CPUs per execution: with less than
    one CPU left, decoding never starts and the run hangs (`backpressured:tasks(ResourceBudget)`).
    That is refused here in one line. When the workers do not fit the cluster yet (an
    autoscaling cluster adds nodes for them), nothing can be judged and Ray's default stands.
    """
    import ray
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import DataConfig

    total = ray.cluster_resources().get("CPU", 0.0)
    reserved = spec.scaling.num_workers * spec.scaling.cpus_per_worker
    free = total - reserved
    if free < 0:
        return DataConfig()
    if free < 1:
        raise ValueError(
            f"scaling: {spec.scaling.num_workers} workers x cpus_per_worker "
            f"{spec.scaling.cpus_per_worker:g} reserve {reserved:g} of the cluster's {total:g} "
            f"CPUs, leaving {free:g} for Ray Data, which needs at least 1 to decode images; "
            f"allowed: num_workers x cpus_per_worker <= {total - 1:g}"
        )
    return DataConfig(
        execution_options={"train": ExecutionOptions(resource_limits=ExecutionResources(cpu=free))}
    )


def build_trainer(
    spec: RunSpec,
    name: str,
    storage_path: str,
    schedule: Schedule,
    reporter: Any,
    callbacks: list[Any] | None = None,
) -> Any:
    """The Ray Train V2 trainer for one pretrain run (a sweep trial builds the same)."""
    from ray.data import DataContext
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # The epoch lines from rank 0 are the progress output; Ray Data's per-operator bars
    # and Ray Train's per-report INFO lines would bury them.
    DataContext.get_current().enable_progress_bars = False

    monitor, monitor_datasets = knn_monitor(spec)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "knn_monitor": monitor,
            "spec": spec.model_dump(mode="json"),
            "schedule": schedule,
            "reporter": reporter,
            "run_path": f"{storage_path}/{name}",
            # Read here: the workers of a running cluster do not see this process' environment.
            "progress_every_s": progress_every_s(),
        },
        scaling_config=ScalingConfig(num_workers=0)  # Ray Train's local mode: in-process
        if runs_in_process(spec)
        else scaling_config(spec.scaling, spec.scaling.worker_resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.train.keep_checkpoints),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or None,
        ),
        datasets={"train": training_stream(spec), **monitor_datasets},
        # In-process runs reserve nothing beside Ray Data; worker groups do.
        dataset_config=None if runs_in_process(spec) else data_config(spec),
    )


@dataclass(frozen=True)
class PreparedRun:
    """A run whose MLflow record exists: everything needed to fit it, in plain picklable data."""

    name: str
    spec: RunSpec
    schedule: Schedule
    num_rows: int
    storage_path: str
    tracking_uri: str
    run_id: str
    resumed: bool
    previous_status: str | None = None

    @property
    def run_path(self) -> str:
        return f"{self.storage_path}/{self.name}"


def check_trainable(spec: RunSpec) -> tuple[DatasetInfo, Schedule]:
    """The training data and step schedule, or a ValueError: reaches object storage, so a
    missing bucket, bad credentials or a batch larger than the data fail here, in seconds,
    before anything is recorded."""
    info = describe_source(
        spec.data.source,
        split="train",
        num_images=spec.data.num_images,
        seed=spec.data.seed,
        columns=spec.data.columns(),
    )
    for evaluation in spec.eval:  # labelled data of chained evaluations must be readable too
        describe_eval_data(evaluation, spec.model_dump(mode="json"))
    return info, make_schedule(spec.train.model_dump(), info.num_rows)


def knn_monitor(spec: RunSpec) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Loop settings and labelled datasets for kNN during training: the first chained kNN
    evaluation with `every: N` is also computed in the loop every N epochs and reported with
    the epoch's metrics, so sweep schedulers (ASHA on `knn/top1`) see it."""
    evaluation = spec.knn_monitor()
    if evaluation is None:
        return None, {}
    data = describe_eval_data(evaluation, spec.model_dump(mode="json"))
    settings = {
        "every": evaluation.every,
        "k": evaluation.knn.k,
        "temperature": evaluation.knn.temperature,
        "batch_size": evaluation.knn.batch_size,
        "pool": evaluation.pool,
        "num_classes": data.train.num_classes,
    }
    datasets = {
        "knn_train": labelled_dataset(
            data.train, data.img_size, evaluation.data.seed, data.columns
        ),
        "knn_val": labelled_dataset(data.val, data.img_size, evaluation.data.seed, data.columns),
    }
    return settings, datasets


def prepare_run(
    spec: RunSpec,
    name: str,
    tracker: Tracker,
    extra_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> PreparedRun:
    """Validate the data/batch fit and find or create the run's MLflow record (no Ray)."""
    info, schedule = check_trainable(spec)
    storage_path = resolve_storage_path(spec)
    handle: RunHandle = tracker.open_run(
        key=name,
        params=spec.flat_params(),
        tags={**run_tags(spec, f"{storage_path}/{name}"), **(extra_tags or {})},
        run_name=name,
        parent_run_id=parent_run_id,
    )
    tracker.log_dataset(
        handle.run_id,
        name=f"{spec.data.source.rstrip('/').rsplit('/', 1)[-1]}-train",
        uri=spec.data.source,
        digest=info.digest,
        num_rows=info.num_rows,
        context="training",
    )
    if handle.resumed and handle.previous_fingerprint not in (None, spec.fingerprint()):
        print(
            f"[mimray] note: run {name!r} was started with a different config "
            f"(fingerprint {handle.previous_fingerprint}); continuing it with this one"
        )
    return PreparedRun(
        name=name,
        spec=spec,
        schedule=schedule,
        num_rows=info.num_rows,
        storage_path=storage_path,
        tracking_uri=tracker.tracking_uri,
        run_id=handle.run_id,
        resumed=handle.resumed,
        previous_status=handle.previous_status,
    )


def execute_run(
    run: PreparedRun, address: str | None = None, callbacks: list[Any] | None = None
) -> PretrainResult:
    """Fit a prepared run to its last epoch (or report it finished) and close its MLflow run."""
    spec = run.spec
    tracker = Tracker(run.tracking_uri, spec.tracking.experiment)
    if run.resumed:
        done = _already_complete(tracker, run)
        if done is not None:
            return done
    ensure_ray(address)
    reporter = tracker.reporter(
        run.run_id,
        system_metrics=spec.tracking.system_metrics,
        system_metrics_interval_s=spec.tracking.system_metrics_interval_s,
        commit_on_checkpoint=True,  # a worker-group restart must not log an epoch twice
    )
    trainer = build_trainer(spec, run.name, run.storage_path, run.schedule, reporter, callbacks)
    console_log.gate_library_handlers()  # Ray Train and Ray Data added theirs on import
    tracker.mark_running(run.run_id)
    try:
        if runs_in_process(spec):
            result = fit_in_process(
                trainer,
                run.run_path,
                keep=spec.train.keep_checkpoints,
                max_failures=spec.train.max_failures,
                cpus=spec.scaling.cpus_per_worker,
            )
        else:
            result = trainer.fit()
    except SystemExit:
        # Tune stops an in-process trial (ASHA) by exiting its thread at a report: the epochs
        # it reported are checkpointed, and the sweep counts the trial as complete.
        tracker.finish_run(run.run_id)
        raise
    except BaseException as err:
        # Ctrl-C is not a failure of the run: it can be resumed by re-running the name.
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        tracker.finish_run(run.run_id, status=status)
        raise
    tracker.finish_run(run.run_id)
    metrics = result.metrics or {}
    checkpoint = result.checkpoint
    return PretrainResult(
        name=run.name,
        run_id=run.run_id,
        tracking_uri=run.tracking_uri,
        run_path=run.run_path,
        resumed=run.resumed,
        epochs_done=int(metrics.get("epoch", 0)),
        final_loss=metrics.get("loss"),
        images_per_s=metrics.get("images_per_s"),
        checkpoint_uri=f"{run.run_path}/{Path(checkpoint.path).name}" if checkpoint else None,
    )


def training_stream(spec: RunSpec) -> Any:
    """The pretraining data as the workers consume it: MAE's crop and flip while decoding,
    file/block order reshuffled every epoch (plus the workers' shuffle buffer, see
    `workloads/data/stream.py`), and only the image and its decodable flag."""
    dataset = build_dataset(
        spec.data.source,
        # Latent MIM's gap grid crops its cells from a larger image, at native resolution.
        img_size=train_img_size(spec.model_dump(mode="json")),
        split="train",
        num_images=spec.data.num_images,
        seed=spec.data.seed,
        augmentation=spec.data.augmentation(),
        order_seed=order_seed(spec.data.shuffle, spec.train.seed),
        columns=spec.data.columns(),
    )
    return pretraining_view(dataset, spec.data.shuffle, spec.train.seed)


def _already_complete(tracker: Tracker, run: PreparedRun) -> PretrainResult | None:
    """The recorded result when the run already has its final checkpoint: no Ray start-up."""
    models = tracker.checkpoint_models(run.run_id)
    if not models or int(models[-1].params["epoch"]) < run.spec.train.epochs:
        return None
    last = models[-1]
    tracker.finish_run(run.run_id)
    losses = tracker.metric_history(run.run_id, "epoch/loss")
    speeds = tracker.metric_history(run.run_id, "epoch/images_per_s")
    print(f"[mimray] run {run.name!r} already finished {last.params['epoch']} epochs")
    return PretrainResult(
        name=run.name,
        run_id=run.run_id,
        tracking_uri=run.tracking_uri,
        run_path=run.run_path,
        resumed=True,
        epochs_done=int(last.params["epoch"]),
        final_loss=losses[-1][1] if losses else None,
        images_per_s=speeds[-1][1] if speeds else None,
        checkpoint_uri=last.params["checkpoint_uri"],
    )


def run_pretrain(
    spec: RunSpec, name: str | None = None, address: str | None = None
) -> PretrainResult:
    """Train (or resume) the run `name` to `spec.train.epochs`, recorded in MLflow."""
    name = check_name(name) if name else default_run_name(spec)  # a name becomes a folder
    check_trainable(spec)  # fail on unreadable data before the store is touched
    tracker = Tracker(resolve_tracking_uri(spec.tracking.uri), spec.tracking.experiment)
    run = prepare_run(spec, name, tracker)
    print(
        f"[mimray] {'resuming' if run.resumed else 'starting'} run {name!r}: "
        f"{spec.method.name} on {spec.data.source} ({run.num_rows} images), "
        f"{spec.train.epochs} epochs x {run.schedule.steps_per_epoch} steps, "
        f"{spec.scaling.num_workers} workers; MLflow run {run.run_id}",
        flush=True,
    )
    result = execute_run(run, address)
    evaluate_after(run, result.epochs_done, address)
    return result


def evaluate_after(run: PreparedRun, epochs_done: int, address: str | None = None) -> None:
    """Run the spec's chained `eval:` list on the run's checkpoints (done ones are reused)."""
    from orchestrator.evaluation.runs import run_chained_evaluations  # it imports this module

    run_chained_evaluations(run.run_id, run.spec.eval, epochs_done, run.tracking_uri, address)
