"""The checkpoints (LoggedModels) of runs, one search per 100 runs: what `Tracker` and the
readers in `lookup.py` both use, so a checkpoint is found one way."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from orchestrator.tracking.names import MODEL_TYPE

RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
# MLflow's bulk reads take at most 100 runs; `IN (...)` filters are kept to the same 100 ids.
IDS_PER_QUERY = 100


def checkpoint_models_of(
    client: Any, experiment_id: str, run_ids: Sequence[str]
) -> dict[str, list[Any]]:
    """Run id -> its mimray checkpoints, oldest epoch first, one search per 100 runs (all in
    flight at once when `client` can run reads side by side: `rest_reads.RestReader.submit`)."""
    by_run: dict[str, list[Any]] = {run_id: [] for run_id in run_ids}
    chunked = list(chunks(list(run_ids)))
    submit = getattr(client, "submit", None)
    if submit is not None:
        reads = [submit(_models_of, client, experiment_id, chunk) for chunk in chunked]
        found = [model for read in reads for model in read.result()]
    else:
        found = [m for chunk in chunked for m in _models_of(client, experiment_id, chunk)]
    for model in found:
        if model.model_type == MODEL_TYPE and model.source_run_id in by_run:
            by_run[model.source_run_id].append(model)
    for models in by_run.values():
        models.sort(key=lambda m: int(m.params.get("epoch", 0)))
    return by_run


def _models_of(client: Any, experiment_id: str, run_ids: list[str]) -> list[Any]:
    """Every LoggedModel of up to 100 runs (all pages of one search)."""
    quoted = ", ".join(f"'{run_id}'" for run_id in run_ids if RUN_ID_PATTERN.fullmatch(run_id))
    models: list[Any] = []
    token = None
    while quoted:
        page = client.search_logged_models(
            experiment_ids=[experiment_id],
            filter_string=f"source_run_id IN ({quoted})",
            max_results=1000,
            page_token=token,
        )
        models.extend(page)
        token = page.token
        if not token:
            break
    return models


def chunks(items: Sequence[str], size: int = IDS_PER_QUERY) -> Iterator[list[str]]:
    """`items` in lists of at most `size`, for queries that take a bounded list of ids."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
