"""The labelled data an evaluation reads: which splits, checked before anything runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.config import ConfigError, EvalSpec
from workloads.data import (
    FIND_COLUMNS,
    Columns,
    DatasetInfo,
    build_dataset,
    describe_source,
    holds_one_split,
)


@dataclass(frozen=True)
class EvalData:
    """The labelled splits an evaluation reads, described before anything runs."""

    train: DatasetInfo
    val: DatasetInfo
    img_size: int
    columns: Columns = FIND_COLUMNS


def describe_eval_data(spec: EvalSpec, pretrain_spec: dict[str, Any]) -> EvalData:
    source = spec.data.source or pretrain_spec["data"]["source"]
    val_source = spec.data.val_source or source
    if holds_one_split(source) and not spec.data.val_source:
        raise ConfigError(
            f"data.val_source: required when evaluating on stored data ({source}): pushed "
            "data holds one split per prefix; push the val split and name it here"
        )
    columns = pretrain_columns(pretrain_spec)
    try:
        train = describe_source(
            source,
            split="train",
            num_images=spec.data.train_images,
            seed=spec.data.seed,
            columns=columns,
        )
        val = describe_source(
            val_source,
            split="val",
            num_images=spec.data.val_images,
            seed=spec.data.seed,
            columns=columns,
        )
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None
    if spec.protocol == "finetune":
        usable = round(train.num_rows * spec.finetune.label_fraction)
        if usable < spec.finetune.batch_size:
            raise ConfigError(
                f"finetune.batch_size: {spec.finetune.batch_size} exceeds the {usable} labelled "
                "training images; allowed: at most that many"
            )
    return EvalData(train, val, pretrain_spec["model"]["img_size"], columns)


def pretrain_columns(pretrain_spec: dict[str, Any]) -> Columns:
    """The Parquet column names the pretrain run read its data with (older runs: none)."""
    data = pretrain_spec["data"]
    return Columns(image=data.get("image_column"), label=data.get("label_column"))


def labelled_dataset(
    info: DatasetInfo, img_size: int, seed: int, columns: Columns = FIND_COLUMNS
) -> Any:
    """The split as image, label and ok columns, never augmented, in stored order.

    Stored order is kept even with several read or decode tasks in flight (Ray Data's
    `preserve_order`): which images a `limit` keeps, the probe's feature order and the
    fine-tune shuffle's input then repeat from run to run (a one-worker evaluation gives the
    same numbers twice; a worker group's split among workers is Ray Data's, not repeatable).
    """
    dataset = build_dataset(
        info.source,
        img_size=img_size,
        split=info.split,
        num_images=info.num_rows,
        seed=seed,
        columns=columns,
        keep=("image", "label", "ok"),
    )
    dataset.context.execution_options.preserve_order = True  # this stream's own context
    return dataset
