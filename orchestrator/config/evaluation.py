"""The eval spec: how one pretrain checkpoint is evaluated downstream.

One protocol per spec (`knn`, `linear` or `finetune`), each with its own section of settings
and defaults sized for small CPU runs. `mimray eval --set linear.epochs=50` edits it; a run or
sweep spec lists eval specs under `eval:` to chain them after pretraining.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator.config.base import Section

PROTOCOLS: tuple[str, ...] = ("knn", "linear", "finetune")


class EvalDataSpec(Section):
    source: str | None = Field(
        None, description="labelled data (default: the pretrain run's source)"
    )
    val_source: str | None = Field(
        None, description="val split; required for stored data (one split per prefix)"
    )
    train_images: int | None = Field(None, ge=1, description="train-split images (None: all)")
    val_images: int | None = Field(None, ge=1, description="val-split images (None: all)")
    seed: int = Field(0, description="generation seed of built-in data")
    split: Literal["val", "selection"] = Field(
        "val",
        description="val: fit on train, score on val (what reports are for); selection: fit "
        "on the first 80% of train, score on its last 20%, val never read (for choosing "
        "settings)",
    )

    @model_validator(mode="after")
    def _selection_reads_no_val(self) -> EvalDataSpec:
        # The selection split scores on train's tail: a val setting would be silently unused.
        if self.split == "selection":
            for key in ("val_source", "val_images"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key}: not read with split selection (it scores on the last 20% of "
                        "train); allowed: leave it out, or split val"
                    )
        return self


class KnnSpec(Section):
    k: int = Field(20, ge=1, description="neighbours voting (1-NN is always reported too)")
    temperature: float = Field(0.07, gt=0, description="votes weighted by exp(cos / T)")
    batch_size: int = Field(256, ge=1, description="images per feature-extraction batch")


class LinearSpec(Section):
    """MAE's linear probe: LARS on BatchNorm(affine=False) + Linear, MAE's defaults except the
    batch (sized for CPU runs). blr 0.1 is MAE's ImageNet value, where an epoch is thousands
    of steps; a dataset of a few thousand images makes a few steps per epoch, so LARS (whose
    steps are ~lr * 0.001 of each weight's norm) needs a larger blr there: presets for small
    data set theirs, chosen on a selection split (docs/mae-vs-random-report.md)."""

    epochs: int = Field(90, ge=1)
    batch_size: int = Field(256, ge=2)
    blr: float = Field(0.1, gt=0, description="LARS lr = blr * batch_size / 256")
    weight_decay: float = Field(0.0, ge=0, description="on the weight matrix only (MAE: 0)")
    warmup_epochs: float = Field(10.0, ge=0)


class FinetuneSpec(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch over all workers")
    blr: float = Field(1e-3, gt=0, description="AdamW lr = blr * batch_size / 256")
    layer_decay: float = Field(0.75, gt=0, le=1, description="lr scale per layer from the top")
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    label_fraction: float = Field(1.0, gt=0, le=1, description="share of train labels used")
    hflip: bool = Field(True, description="random horizontal flips, seeded by the spec's seed")


class EvalScalingSpec(Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)


class EvalSpec(Section):
    protocol: Literal["knn", "linear", "finetune"]
    pool: Literal["mean", "cls"] = Field("mean", description="mean of patch tokens, or cls")
    seed: int = Field(0, description="every random draw: head initialisation, data order, flips")
    every: int | None = Field(
        None, ge=1, description="chained: also evaluate every N epochs (default: final only)"
    )
    baseline: bool = Field(
        False,
        description="chained: also evaluate the untrained encoder of the run (same spec and "
        "seed; recorded as its epoch-0 checkpoint)",
    )
    data: EvalDataSpec = Field(default_factory=EvalDataSpec)
    knn: KnnSpec = Field(default_factory=KnnSpec)
    linear: LinearSpec = Field(default_factory=LinearSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    scaling: EvalScalingSpec = Field(default_factory=EvalScalingSpec)

    def settings(self) -> dict[str, Any]:
        """What decides the result: the protocol, its own section, pooling, data and seed.

        Scaling, `every` and `baseline` are left out (they change how or which checkpoints,
        not what), and so are the other protocols' sections.
        """
        tree = self.model_dump(mode="json")
        return {
            "protocol": self.protocol,
            "pool": self.pool,
            "seed": self.seed,
            "data": tree["data"],
            self.protocol: tree[self.protocol],
        }

    def fingerprint(self) -> str:
        settings = self.settings()
        # The default split is left out so that evaluations recorded before the key existed
        # (all on val) keep their fingerprints and are found again, not rerun.
        if settings["data"]["split"] == "val":
            settings["data"] = {k: v for k, v in settings["data"].items() if k != "split"}
        canonical = json.dumps(settings, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]
