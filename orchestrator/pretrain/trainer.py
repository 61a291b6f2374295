"""The Ray Train V2 trainer of one pretrain run: its workers, data streams and run config.

A sweep trial builds the same trainer as `mimray pretrain`. One CPU worker trains in the
calling process (`fit/in_process.py`'s in-process session); more workers, or a GPU, get a Ray Train
worker group. Both run the same loop (`workloads/pretrain.py`) and both fit with `.fit()`.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import RunSpec
from orchestrator.evaluation.data import describe_eval_data, eval_datasets
from orchestrator.fit.in_process import InProcessTrainer
from orchestrator.fit.ray_setup import data_config, runs_in_process, worker_scaling
from workloads.data import build_dataset
from workloads.data.stream import PRETRAINING_COLUMNS, order_seed, pretraining_view
from workloads.methods import train_img_size
from workloads.pretrain import pretrain, train_loop_per_worker
from workloads.progress import progress_every_s
from workloads.run_spec import KnnMonitorSettings, PretrainLoopConfig
from workloads.schedule import Schedule


def is_remote(storage_path: str, storage_filesystem: Any = None) -> bool:
    """Whether Ray storage is an object store (`s3://`, `gs://`, or a pyarrow filesystem other
    than the local one) rather than a folder."""
    if storage_filesystem is not None:
        return storage_filesystem.type_name != "local"
    return "://" in storage_path and not storage_path.startswith("file://")


def build_trainer(
    spec: RunSpec,
    name: str,
    storage_path: str,
    schedule: Schedule,
    reporter: Any,
    callbacks: list[Any] | None = None,
    storage_filesystem: Any = None,
) -> Any:
    """The trainer of one pretrain run (a sweep trial builds the same): in this process for one
    CPU worker, else a Ray Train V2 `TorchTrainer`; either is run with `.fit()`.

    `storage_filesystem` (worker groups only): a pyarrow filesystem the caller opened for the
    storage, passed to Ray Train as `RunConfig.storage_filesystem` (then `storage_path` is a
    path on it, without a URI scheme), for storage whose endpoint or keys the Ray nodes do not
    have in their environment."""
    from ray.data import DataContext
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchTrainer

    # The epoch lines from rank 0 are the progress output; Ray Data's per-operator bars
    # and Ray Train's per-report INFO lines would bury them.
    DataContext.get_current().enable_progress_bars = False

    monitor, monitor_datasets = knn_monitor(spec)
    run_path = f"{storage_path}/{name}"
    config = PretrainLoopConfig(
        knn_monitor=monitor,
        spec=spec.model_dump(mode="json"),
        schedule=schedule,
        reporter=reporter,
        run_path=run_path,
        # Read here: the workers of a running cluster do not see this process' environment.
        progress_every_s=progress_every_s(),
        # Object storage: a worker group uploads in Ray Train's background thread while the
        # next steps train, and rank 0 records each checkpoint in MLflow from that thread as
        # soon as its files are stored, before Ray Train can resume from it
        # (workloads/session.py). A folder is written in step, and so are the checkpoints of
        # one-worker runs in this process (their own store, fit/in_process.py).
        async_checkpoint_upload=is_remote(storage_path, storage_filesystem),
        storage_filesystem=storage_filesystem,
    )
    datasets = {"train": training_stream(spec), **monitor_datasets}
    if runs_in_process(spec):
        if storage_filesystem is not None:
            raise ValueError("storage_filesystem is for worker groups; this run trains in process")
        return InProcessTrainer(
            loop=pretrain,
            train_loop_config=config,
            datasets=datasets,
            name=name,
            run_path=run_path,
            keep=spec.train.keep_checkpoints,
            max_failures=spec.train.max_failures,
            cpus=spec.scaling.cpus_per_worker,
            train_loop_per_worker=train_loop_per_worker,
        )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=worker_scaling(spec, spec.scaling.worker_resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.train.keep_checkpoints),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or None,
        ),
        datasets=datasets,
        dataset_config=data_config(spec.scaling),
    )


def knn_monitor(spec: RunSpec) -> tuple[KnnMonitorSettings | None, dict[str, Any]]:
    """Loop settings and labelled datasets for kNN during training: the first chained kNN
    evaluation with `every: N` is also computed in the loop every N epochs and reported with
    the epoch's metrics, so sweep schedulers (ASHA on `knn/top1`) see it."""
    evaluation = spec.knn_monitor()
    if evaluation is None:
        return None, {}
    data = describe_eval_data(evaluation, spec.model_dump(mode="json"))
    settings = KnnMonitorSettings(
        every=evaluation.every,
        k=evaluation.knn.k,
        temperature=evaluation.knn.temperature,
        batch_size=evaluation.knn.batch_size,
        pool=evaluation.pool,
        num_classes=data.train.num_classes,
    )
    datasets = {f"knn_{k}": v for k, v in eval_datasets(data, evaluation.data.seed).items()}
    return settings, datasets


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
        keep=PRETRAINING_COLUMNS,
    )
    return pretraining_view(dataset, spec.data.shuffle, spec.train.seed)
