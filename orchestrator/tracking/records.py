"""What the readers (`report`, `lineage`, eval targets) get back from a store: mimray's own
records of runs and checkpoints, whichever implementation of `reader.RunReader` read them.

Every reader builds these same plain values, so two readers of one store can be compared for
equality, and nothing downstream depends on MLflow's entity classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# A metric point as the readers use it: (step, timestamp in ms, value).
MetricPoint = tuple[int, int, float]
DATA_CONTEXT_TAG = "mlflow.data.context"  # the input tag that says what a data set was for


@dataclass(frozen=True, order=True)
class DatasetUse:
    """A data set a run declared as an input, and what for (its context: training, eval-val)."""

    name: str
    digest: str
    context: str


@dataclass(frozen=True)
class TrackedRun:
    """One run: its identity and state, tags, params, latest metric values and data inputs."""

    run_id: str
    name: str
    experiment_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    start_time: int | None
    end_time: int | None
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    datasets: tuple[DatasetUse, ...] = ()  # sorted: stores keep no order of inputs


@dataclass(frozen=True)
class TrackedModel:
    """One LoggedModel (a mimray checkpoint when `model_type` is `names.MODEL_TYPE`)."""

    model_id: str
    name: str
    experiment_id: str
    model_type: str | None
    source_run_id: str | None
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


def dataset_uses(inputs: list[tuple[str, str, Mapping[str, str]]]) -> tuple[DatasetUse, ...]:
    """(name, digest, input tags) of a run's data inputs as sorted `DatasetUse`s."""
    return tuple(
        sorted(
            DatasetUse(name, digest, tags.get(DATA_CONTEXT_TAG, ""))
            for name, digest, tags in inputs
        )
    )
