"""The run spec: one pretrain run's sections (method, model, data, train, scaling, ...)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import (
    Field,
    SerializeAsAny,
    field_validator,
    model_validator,
)

from orchestrator.config.base import Section, check_storage_path
from orchestrator.config.evaluation import EvalSpec
from workloads.data import Augmentation, Columns, validate_source
from workloads.methods import MethodKnobs, method_card, method_names  # cards only: no torch


class ModelSpec(Section):
    img_size: int = Field(32, ge=8, description="input resolution (square)")
    patch_size: int = Field(4, ge=1)
    in_chans: Literal[3] = 3
    embed_dim: int = Field(192, ge=8)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(3, ge=1)
    decoder_dim: int = Field(128, ge=8)
    decoder_depth: int = Field(2, ge=1)
    decoder_num_heads: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _shapes_fit(self) -> ModelSpec:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"patch_size: {self.patch_size} does not divide img_size {self.img_size}; "
                "allowed: a divisor of model.img_size"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"num_heads: {self.num_heads} does not divide embed_dim {self.embed_dim}"
            )
        if self.decoder_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_num_heads: {self.decoder_num_heads} does not divide "
                f"decoder_dim {self.decoder_dim}"
            )
        return self

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


class DataSpec(Section):
    source: str = Field(
        "shapes", description="built-in name, image folder, Parquet or s3://bucket/prefix"
    )
    num_images: int | None = Field(None, ge=1, description="rows used (None: all / default)")
    seed: int = Field(0, description="generation seed of built-in data (not the training seed)")
    shuffle: Literal["buffer", "full", "none"] = Field(
        "buffer",
        description="row order every epoch: buffer (file/block order + a local shuffle "
        "buffer), full (random_shuffle; small data), none (stored order)",
    )
    shuffle_buffer: int = Field(1024, ge=1, description="rows in each worker's shuffle buffer")
    crop_scale: tuple[float, float] | None = Field(
        (0.2, 1.0), description="RandomResizedCrop area range (MAE: 0.2-1); null: no crop"
    )
    hflip: bool = Field(True, description="random horizontal flip")
    image_column: str | None = Field(None, description="Parquet image column (None: find it)")
    label_column: str | None = Field(None, description="Parquet label column (None: label)")
    max_skipped_share: float = Field(
        0.01, ge=0, le=1, description="fail when more undecodable images than this share"
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        validate_source(source)
        return source

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_range(cls, scale: tuple[float, float] | None) -> tuple[float, float] | None:
        if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(
                f"crop_scale: {list(scale)}; allowed: [low, high] with 0 < low <= high <= 1"
            )
        return scale

    def augmentation(self) -> Augmentation:
        """MAE's pretraining augmentation as this spec sets it."""
        return Augmentation(crop_scale=self.crop_scale, hflip=self.hflip)

    def columns(self) -> Columns:
        return Columns(image=self.image_column, label=self.label_column)


class TrainSpec(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1, description="global batch over all workers")
    blr: float = Field(1.5e-4, gt=0, description="base lr; lr = blr * batch_size / 256")
    min_lr: float = Field(0.0, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on GPU, fp32 on CPU"
    )
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    keep_checkpoints: int | None = Field(None, ge=1, description="None keeps all")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from last checkpoint")
    compile: bool = Field(False, description="torch.compile the model in every worker")


class ScalingSpec(Section):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    # Ray Data's budget excludes what Train workers reserve: whole CPUs per worker on a
    # small machine leave the data pipeline nothing, and it stalls. Fractions keep it fed.
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    # Custom resources each Train worker also reserves, e.g. {gpu_8x: 1} to pin a sweep to one
    # node type of a cluster: the autoscaler starts nodes that advertise them.
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="extra custom resources per worker"
    )

    @field_validator("worker_resources")
    @classmethod
    def _custom_resources_only(cls, resources: dict[str, float]) -> dict[str, float]:
        return check_custom_resources(
            resources, instead="set CPU/GPU with cpus_per_worker, use_gpu, gpus_per_worker"
        )


# Ray's own resources: a custom-resource map must not reserve them behind their keys' backs.
BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def check_custom_resources(resources: dict[str, float], instead: str) -> dict[str, float]:
    """Custom resource amounts: positive, and none of Ray's built-in resources."""
    for name, amount in resources.items():
        if name in BUILTIN_RESOURCES:
            raise ValueError(f"{name}: is not a custom resource; {instead}")
        if amount <= 0:
            raise ValueError(f"{name}: must be greater than 0 (got {amount!r})")
    return resources


class TrackingSpec(Section):
    experiment: str = Field("mimray", min_length=1)
    uri: str | None = Field(None, description="MLflow tracking URI (else env, else SQLite)")
    system_metrics: bool = True
    system_metrics_interval_s: float = Field(10.0, gt=0, description="CPU/GPU/memory sampling")


class StorageSpec(Section):
    path: str | None = Field(
        None, description="Ray storage (local or s3://); default ./mimray-runs"
    )

    @field_validator("path")
    @classmethod
    def _supported_scheme(cls, path: str | None) -> str | None:
        return None if path is None else check_storage_path(path)


def _validate_method(raw: Any) -> MethodKnobs:
    if isinstance(raw, MethodKnobs):
        return raw
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise ValueError("expected a mapping with a `name` key")
    name = raw.get("name", "mae")
    try:
        method = method_card(name)
    except KeyError:
        allowed = ", ".join(method_names())
        raise ValueError(f"name: unknown method {name!r}; allowed: {allowed}") from None
    return method.knobs.model_validate({**raw, "name": name})


class RunSpec(Section):
    method: SerializeAsAny[MethodKnobs] = Field(default_factory=lambda: _validate_method({}))
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    # Evaluations chained after pretraining; they do not change what is trained.
    eval: list[EvalSpec] = Field(default_factory=list)

    @field_validator("method", mode="before")
    @classmethod
    def _known_method(cls, raw: Any) -> MethodKnobs:
        return _validate_method(raw)

    @model_validator(mode="after")
    def _batch_splits_over_workers(self) -> RunSpec:
        if self.train.batch_size % self.scaling.num_workers:
            raise ValueError(
                f"train.batch_size: {self.train.batch_size} does not split evenly over "
                f"{self.scaling.num_workers} workers; allowed: a multiple of scaling.num_workers"
            )
        return self

    @model_validator(mode="after")
    def _method_fits_model(self) -> RunSpec:
        check = method_card(self.method.name).check
        if check is not None:
            try:
                check(self.model.model_dump(), self.method)
            except ValueError as err:
                raise ValueError(f"method.{err}") from None
        return self

    def knn_monitor(self) -> EvalSpec | None:
        """The chained kNN evaluation that also runs inside the training loop (`every: N`)."""
        return next((e for e in self.eval if e.protocol == "knn" and e.every), None)

    def fingerprint(self) -> str:
        """Hash of the resolved spec: equal specs train equal runs."""
        tree = self.model_dump(mode="json")
        # The empty default is left out so that runs made before the key existed keep their
        # fingerprints, and so their default names.
        if not tree["scaling"]["worker_resources"]:
            del tree["scaling"]["worker_resources"]
        if not tree["train"]["compile"]:
            del tree["train"]["compile"]
        del tree["eval"]  # chained evaluations do not change the pretrain run
        canonical = json.dumps(tree, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def flat_params(self) -> dict[str, str]:
        """Dotted keys -> values, as MLflow params and Tune search-space keys."""
        tree = self.model_dump(mode="json")
        if self.eval:
            tree["eval"] = ",".join(e.protocol for e in self.eval)  # eval runs keep the rest
        else:
            del tree["eval"]
        return dict(flatten(tree))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{dotted}.")
        else:
            yield dotted, value
