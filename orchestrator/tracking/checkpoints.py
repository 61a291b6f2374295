"""The checkpoints (LoggedModels) of runs: what `Tracker` and the readers in `lookup.py` both
use, so a checkpoint is found one way."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.tracking.names import MODEL_TYPE
from orchestrator.tracking.reader import RunReader
from orchestrator.tracking.records import TrackedModel


def checkpoint_models_of(
    reader: RunReader, experiment_id: str, run_ids: Sequence[str]
) -> dict[str, list[TrackedModel]]:
    """Run id -> its mimray checkpoints, oldest epoch first (one search per 100 runs)."""
    by_run: dict[str, list[TrackedModel]] = {run_id: [] for run_id in run_ids}
    for model in reader.models_of(experiment_id, list(run_ids)):
        if model.model_type == MODEL_TYPE and model.source_run_id in by_run:
            by_run[model.source_run_id].append(model)
    for models in by_run.values():
        models.sort(key=lambda m: int(m.params.get("epoch", 0)))
    return by_run
