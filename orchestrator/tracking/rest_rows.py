"""MLflow's REST JSON (runs, LoggedModels, experiments, metric points) in the shapes the
readers use: `run_rows`' runs and these rows, with MLflow's attribute names, so `lookup`,
`report` and `lineage` read them as they read MLflow's entities (`rest_reads.py` asks for them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.tracking.run_rows import (
    DatasetInput,
    DatasetRef,
    InputTag,
    RunData,
    RunInfo,
    RunInputs,
    RunRow,
)


@dataclass(frozen=True)
class ModelRow:
    """A LoggedModel as the readers use it."""

    model_id: str
    name: str
    experiment_id: str
    model_type: str | None
    source_run_id: str | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentRow:
    experiment_id: str
    name: str


@dataclass(frozen=True)
class MetricPoint:
    step: int
    timestamp: int
    value: float


def run_row(run: dict[str, Any]) -> RunRow:
    """A run of MLflow's REST JSON in `run_rows`' shape."""
    info, data = run["info"], run.get("data", {})
    inputs = [
        DatasetInput(
            DatasetRef(item["dataset"]["name"], item["dataset"]["digest"]),
            [InputTag(t["key"], t["value"]) for t in item.get("tags", [])],
        )
        for item in run.get("inputs", {}).get("dataset_inputs", [])
    ]
    return RunRow(
        RunInfo(
            run_id=info["run_id"],
            run_name=info.get("run_name", ""),
            status=info.get("status", ""),
            start_time=_int_or_none(info.get("start_time")),
            end_time=_int_or_none(info.get("end_time")),
            experiment_id=info["experiment_id"],
        ),
        RunData(
            tags=_key_values(data.get("tags", [])),
            params=_key_values(data.get("params", [])),
            metrics={m["key"]: float(m["value"]) for m in data.get("metrics", [])},
        ),
        RunInputs(inputs),
    )


def model_row(model: dict[str, Any]) -> ModelRow:
    info, data = model["info"], model.get("data", {})
    return ModelRow(
        model_id=info["model_id"],
        name=info.get("name", ""),
        experiment_id=info["experiment_id"],
        model_type=info.get("model_type"),
        source_run_id=info.get("source_run_id"),
        params=_key_values(data.get("params", [])),
        tags=_key_values(info.get("tags", [])),
    )


def _key_values(items: list[dict[str, str]]) -> dict[str, str]:
    return {item["key"]: item.get("value", "") for item in items}


def metric_point(m: dict[str, Any]) -> MetricPoint:
    return MetricPoint(*point_fields(m))


def point_fields(m: dict[str, Any]) -> tuple[int, int, float]:
    # float() reads the "NaN" and "Infinity" that protobuf's JSON writes for such values.
    return int(m.get("step", 0)), int(m["timestamp"]), float(m["value"])


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
