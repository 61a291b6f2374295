"""Preparing a pretrain run before it trains: its name, storage, data check and MLflow record.

The run name is deterministic (the `--name`, or one derived from the spec's fingerprint), and
Ray Train resumes a `RunConfig(name, storage_path)` it has seen before; the MLflow run is
found again by the same name. So re-running a name continues the run: same checkpoints, same
MLflow run, never a duplicate.

The data check reaches object storage (an S3 listing), so it runs once per data set: the
caller checks before the store is touched and hands the result to `prepare_run`, and a sweep
hands its trials what its driver described (`described_data`), so a trial lists nothing
again. The run's training data is declared (an MLflow dataset input) when it is prepared: a
sweep trial prepares its run when it starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from orchestrator.config import RunSpec
from orchestrator.evaluation.data import describe_eval_data
from orchestrator.tracking import RunHandle, Tracker, default_root
from orchestrator.tracking.provenance import run_tags
from workloads.data import DatasetInfo, describe_source
from workloads.schedule import Schedule, make_schedule


class TrainableData(NamedTuple):
    """What `check_trainable` found: the training split and the step schedule it allows."""

    info: DatasetInfo
    schedule: Schedule


@dataclass(frozen=True)
class TrainingInput:
    """The training data a run declares as its MLflow dataset input."""

    name: str
    uri: str
    digest: str
    num_rows: int
    max_side: int | None = None  # pushed with `--max-side`: the stored images' bound

    @classmethod
    def of(cls, spec: RunSpec, info: DatasetInfo) -> TrainingInput:
        name = f"{spec.data.source.rstrip('/').rsplit('/', 1)[-1]}-train"
        return cls(name, spec.data.source, info.digest, info.num_rows, info.max_side)


def log_training_input(tracker: Tracker, run_id: str, data: TrainingInput) -> None:
    """Declare `data` as the run's training input; a run that holds it already keeps one."""
    tracker.log_dataset(
        run_id,
        name=data.name,
        uri=data.uri,
        digest=data.digest,
        num_rows=data.num_rows,
        context="training",
        profile={"max_side": data.max_side} if data.max_side else None,
    )


@dataclass(frozen=True)
class PreparedRun:
    """A run whose MLflow record exists: everything needed to fit it, in plain picklable data.

    `input_at_start`: the training input still to declare when the run starts training (a
    sweep trial's); None when it was declared as the run was prepared."""

    name: str
    spec: RunSpec
    schedule: Schedule
    num_rows: int
    storage_path: str
    tracking_uri: str
    run_id: str
    resumed: bool
    previous_status: str | None = None
    input_at_start: TrainingInput | None = None

    @property
    def run_path(self) -> str:
        return f"{self.storage_path}/{self.name}"


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


def check_trainable(
    spec: RunSpec, described: Mapping[str, DatasetInfo] | None = None
) -> TrainableData:
    """The training data and step schedule, or a ValueError: reaches object storage, so a
    missing bucket, bad credentials or a batch larger than the data fail here, in seconds,
    before anything is recorded. A data set in `described` (`described_data`, by
    `data_identity`) is not listed again."""
    info = (described or {}).get(data_identity(spec)) or describe_training_data(spec)
    return TrainableData(info, make_schedule(spec.train.model_dump(), info.num_rows))


def described_data(specs: Iterable[RunSpec]) -> dict[str, DatasetInfo]:
    """Each distinct training data set of `specs`, described once (by `data_identity`): a
    grid over method knobs reads one listing, not one per trial."""
    described: dict[str, DatasetInfo] = {}
    for spec in specs:
        key = data_identity(spec)
        if key not in described:
            described[key] = describe_training_data(spec)
    return described


def describe_training_data(spec: RunSpec) -> DatasetInfo:
    """The training split, after checking that chained evaluations' labelled data is readable."""
    info = describe_source(
        spec.data.source,
        split="train",
        num_images=spec.data.num_images,
        seed=spec.data.seed,
        columns=spec.data.columns(),
    )
    for evaluation in spec.eval:  # labelled data of chained evaluations must be readable too
        describe_eval_data(evaluation, spec.model_dump(mode="json"))
    return info


def data_identity(spec: RunSpec) -> str:
    """Everything `describe_training_data` reads from a spec: equal keys, equal answers."""
    dumped = spec.model_dump(mode="json")
    return json.dumps([dumped["data"], dumped["eval"], dumped["model"]], sort_keys=True)


def prepare_run(
    spec: RunSpec,
    name: str,
    tracker: Tracker,
    checked: TrainableData,
    extra_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    input_at_start: bool = False,
    storage_path: str | None = None,
) -> PreparedRun:
    """Find or create the run's MLflow record for data `check_trainable` already checked (no
    Ray, no second listing). `input_at_start`: leave the training input for the run's start
    (`PreparedRun.input_at_start`) instead of declaring it now. `storage_path`: the
    resolved Ray storage, when the caller resolved it already."""
    # Given by a sweep's driver: a trial's process runs in Tune's trial folder, where the
    # default (a path under the working folder) would point elsewhere.
    storage_path = storage_path or resolve_storage_path(spec)
    handle: RunHandle = tracker.open_run(
        key=name,
        params=spec.flat_params(),
        tags={**run_tags(spec, f"{storage_path}/{name}"), **(extra_tags or {})},
        run_name=name,
        parent_run_id=parent_run_id,
    )
    data = TrainingInput.of(spec, checked.info)
    if not input_at_start:
        log_training_input(tracker, handle.run_id, data)
    if handle.resumed and handle.previous_fingerprint not in (None, spec.fingerprint()):
        print(
            f"[mimray] note: run {name!r} was started with a different config "
            f"(fingerprint {handle.previous_fingerprint}); continuing it with this one"
        )
    return PreparedRun(
        name=name,
        spec=spec,
        schedule=checked.schedule,
        num_rows=checked.info.num_rows,
        storage_path=storage_path,
        tracking_uri=tracker.tracking_uri,
        run_id=handle.run_id,
        resumed=handle.resumed,
        previous_status=handle.previous_status,
        input_at_start=data if input_at_start else None,
    )
