"""The labelled data an evaluation reads: which splits, checked before anything runs.

`data.split: val` fits on the train split and scores on val. `data.split: selection` never
reads val: it fits on the first 80% of the train split and scores on its last 20%
(`workloads.data.selection_fit_rows`), so settings can be chosen through mimray while val
stays for the numbers reports show.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from orchestrator.config import ConfigError, EvalSpec
from workloads.data import (
    FIND_COLUMNS,
    Columns,
    DatasetInfo,
    build_dataset,
    describe_source,
    holds_one_split,
    selection_fit_rows,
)


@dataclass(frozen=True)
class EvalData:
    """The labelled splits an evaluation reads, described before anything runs.

    `train` is what the protocol fits on and `val` what it scores on. For the selection split
    both are parts of `selection_of` (the whole train split), named `train[:N]` and
    `train[N:]`: such a part is read with `eval_datasets`, never alone."""

    train: DatasetInfo
    val: DatasetInfo
    img_size: int
    columns: Columns = FIND_COLUMNS
    selection_of: DatasetInfo | None = None


def describe_eval_data(spec: EvalSpec, pretrain_spec: dict[str, Any]) -> EvalData:
    source = spec.data.source or pretrain_spec["data"]["source"]
    val_source = spec.data.val_source or source
    if spec.data.split == "selection":
        return _describe_selection(spec, source, pretrain_spec)
    if holds_one_split(source) and not spec.data.val_source:
        raise ConfigError(
            f"data.val_source: required when evaluating on stored data ({source}): pushed "
            "data holds one split per prefix; push the val split and name it here"
        )
    columns = pretrain_columns(pretrain_spec)
    train = _describe(spec, source, "train", spec.data.train_images, columns)
    val = _describe(spec, val_source, "val", spec.data.val_images, columns)
    _check_finetune_batch(spec, train)
    return EvalData(train, val, pretrain_spec["model"]["img_size"], columns)


def _describe_selection(spec: EvalSpec, source: str, pretrain_spec: dict[str, Any]) -> EvalData:
    """The selection split: the train split's first rows to fit, its last rows to score."""
    columns = pretrain_columns(pretrain_spec)
    whole = _describe(spec, source, "train", spec.data.train_images, columns)
    fit_rows = selection_fit_rows(whole.num_rows)
    if not 0 < fit_rows < whole.num_rows:
        raise ConfigError(
            f"data.split: selection needs a train split of at least 3 images to cut into a "
            f"fitting and a scoring part, got {whole.num_rows}; allowed: val"
        )
    fit, score = (
        replace(whole, num_rows=rows, split=f"train[{part}]", digest=f"{whole.digest}[{part}]")
        for rows, part in ((fit_rows, f":{fit_rows}"), (whole.num_rows - fit_rows, f"{fit_rows}:"))
    )
    _check_finetune_batch(spec, fit)
    return EvalData(fit, score, pretrain_spec["model"]["img_size"], columns, selection_of=whole)


def _describe(
    spec: EvalSpec, source: str, split: str, num_images: int | None, columns: Columns
) -> DatasetInfo:
    """One split of a labelled source; what is wrong with it as a one-line config error."""
    try:
        return describe_source(
            source, split=split, num_images=num_images, seed=spec.data.seed, columns=columns
        )
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None


def _check_finetune_batch(spec: EvalSpec, train: DatasetInfo) -> None:
    if spec.protocol == "finetune":
        usable = round(train.num_rows * spec.finetune.label_fraction)
        if usable < spec.finetune.batch_size:
            raise ConfigError(
                f"finetune.batch_size: {spec.finetune.batch_size} exceeds the {usable} labelled "
                "training images; allowed: at most that many"
            )


def eval_datasets(data: EvalData, seed: int) -> dict[str, Any]:
    """The Ray Datasets to fit on (`train`) and score on (`val`), in stored order.

    For the selection split, the train split is read once and cut at its fitting rows
    (`Dataset.split_at_indices`, which materialises it in Ray's object store: the selection
    split is for choosing settings on data of a size that fits there or spills to disk)."""
    if data.selection_of is None:
        return {
            "train": labelled_dataset(data.train, data.img_size, seed, data.columns),
            "val": labelled_dataset(data.val, data.img_size, seed, data.columns),
        }
    whole = labelled_dataset(data.selection_of, data.img_size, seed, data.columns)
    fit, score = whole.split_at_indices([data.train.num_rows])
    for part in (fit, score):  # their later `limit` and reads keep the order too
        part.context.execution_options.preserve_order = True
    return {"train": fit, "val": score}


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
