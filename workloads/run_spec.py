"""What a worker is handed: the run spec's sections as typed data, and the pretrain loop's config.

The orchestrator validates a spec once (`orchestrator/config/run.py`, the one place its
defaults live) and hands workers its JSON dump, so a worker never re-invents a default with
`.get(key, default)`: every key below is always present. These are TypedDicts rather than the
orchestrator's classes because the data plane never imports the control plane (and a plain
dump pickles across Ray versions); `tests/test_worker_spec.py` keeps them equal, key for key,
to the sections the orchestrator dumps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from workloads.run_reporter import Reporter
    from workloads.schedule import Schedule


class ModelSection(TypedDict):
    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_num_heads: int


class DataSection(TypedDict):
    source: str
    num_images: int | None
    seed: int
    shuffle: Literal["buffer", "full", "none"]
    shuffle_buffer: int
    crop_scale: list[float] | None
    hflip: bool
    image_column: str | None
    label_column: str | None
    max_skipped_share: float


class TrainSection(TypedDict):
    epochs: int
    batch_size: int
    blr: float
    min_lr: float
    warmup_epochs: float
    weight_decay: float
    seed: int
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    checkpoint_every: int
    keep_checkpoints: int | None
    max_failures: int
    compile: bool


class ScalingSection(TypedDict):
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float
    worker_resources: dict[str, float]


class TrackingSection(TypedDict):
    experiment: str
    uri: str | None
    system_metrics: bool
    system_metrics_interval_s: float


class StorageSection(TypedDict):
    path: str | None


class RunSpecDump(TypedDict):
    """A resolved run spec as workers receive it. `method` holds the method's own knobs (each
    method card validates them: `get_method(name).knobs`); `eval` the chained evaluations."""

    method: dict[str, Any]
    model: ModelSection
    data: DataSection
    train: TrainSection
    scaling: ScalingSection
    tracking: TrackingSection
    storage: StorageSection
    eval: list[dict[str, Any]]


class KnnMonitorSettings(TypedDict):
    """kNN computed inside the loop every `every` epochs (the first chained kNN evaluation
    with `every: N`), reported with the epoch's metrics so schedulers see it."""

    every: int
    k: int
    temperature: float
    batch_size: int
    pool: str
    num_classes: int


class PretrainLoopConfig(TypedDict):
    """`train_loop_config` of a pretrain run: what `workloads.pretrain.pretrain` reads."""

    spec: RunSpecDump
    schedule: Schedule
    # Rank 0's run recorder (MLflow in production); None records nothing.
    reporter: Reporter | None
    # `storage.path/run name`: where the run's checkpoints live, as the reporter names them.
    run_path: str
    knn_monitor: KnnMonitorSettings | None
    # Seconds between progress lines, read on the driver: workers on a cluster do not see its
    # environment.
    progress_every_s: float
    # Upload checkpoints in the background (object storage, worker groups).
    async_checkpoint_upload: bool
    # A pyarrow filesystem the driver opened for the storage (`RunConfig.storage_filesystem`),
    # or None: Ray Train resolves `run_path` itself.
    storage_filesystem: Any


class KnnSection(TypedDict):
    k: int
    temperature: float
    batch_size: int


class LinearSection(TypedDict):
    epochs: int
    batch_size: int
    blr: float
    weight_decay: float
    warmup_epochs: float


class FinetuneSection(TypedDict):
    epochs: int
    batch_size: int
    blr: float
    layer_decay: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    label_fraction: float
    hflip: bool


class EvalSpecDump(TypedDict):
    """A resolved eval spec as evaluation workers receive it. `data` and `scaling` decide
    which datasets and workers the orchestrator builds; the loop does not read them."""

    protocol: Literal["knn", "linear", "finetune"]
    pool: Literal["mean", "cls"]
    seed: int
    every: int | None
    baseline: bool
    data: dict[str, Any]
    knn: KnnSection
    linear: LinearSection
    finetune: FinetuneSection
    scaling: dict[str, Any]


class EvalLoopConfig(TypedDict):
    """`train_loop_config` of an evaluation: what `workloads.evaluation.loop.evaluate` reads."""

    eval: EvalSpecDump
    # The pretrain run's model section: the encoder to build.
    model: ModelSection
    # The checkpoint to evaluate; None evaluates the untrained encoder.
    checkpoint_uri: str | None
    num_classes: int
    # Fine-tuning steps per epoch over every worker (the labelled rows the run uses).
    steps_per_epoch: int
    reporter: Reporter | None
