"""Read-only queries over the MLflow store: runs, sweeps, checkpoints and their evaluations.

Shared by `mimray eval` (which checkpoints to evaluate), `mimray lineage` and `mimray report`.
Nothing here writes: a mistyped store path must not leave an empty database behind.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.spec import ConfigError
from orchestrator.tracking import (
    KIND_TAG,
    MODEL_TYPE,
    PRETRAIN_RUN_TAG,
    RUN_KEY_TAG,
    SWEEP_TAG,
    TRIAL_INDEX_TAG,
)

RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def is_result_metric(key: str) -> bool:
    """An evaluation's final numbers (e.g. knn/top1, knn/top1_1nn, linear/best_top1), not its
    per-epoch curves (linear/val_top1, .../train_loss)."""
    return "top1" in key and "/val_" not in key


def open_store(tracking_uri: str) -> Any:
    """An MlflowClient on an existing store; ConfigError when an SQLite file is missing."""
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ConfigError(
                f"no MLflow store at {tracking_uri}; run a pretrain here first, or point "
                "MLFLOW_TRACKING_URI at the store that holds the runs"
            )
    return MlflowClient(tracking_uri)


def search_all(client: Any, experiment_ids: Sequence[str], filter_string: str) -> list[Any]:
    """Every run matching `filter_string` (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            list(experiment_ids), filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def all_experiment_ids(client: Any) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def get_run(client: Any, run_id: str) -> Any | None:
    """The run with this id, or None (also for strings that are not run ids)."""
    from mlflow.exceptions import MlflowException

    if not RUN_ID_PATTERN.fullmatch(run_id):
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def get_checkpoint_model(client: Any, model_id: str) -> Any | None:
    """The mimray checkpoint LoggedModel with this id, or None."""
    from mlflow.exceptions import MlflowException

    if not model_id.startswith("m-"):
        return None
    try:
        model = client.get_logged_model(model_id)
    except MlflowException:
        return None
    return model if model.model_type == MODEL_TYPE else None


def checkpoint_models(client: Any, run: Any) -> list[Any]:
    """The run's checkpoints (LoggedModels), oldest epoch first."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    mine = [m for m in models if m.model_type == MODEL_TYPE]
    return sorted(mine, key=lambda m: int(m.params.get("epoch", 0)))


def find_named_run(client: Any, name: str) -> Any | None:
    """A pretrain run (or trial) by its mimray name, in any experiment."""
    found = search_all(client, all_experiment_ids(client), f"tags.`{RUN_KEY_TAG}` = '{name}'")
    return found[0] if found else None


def find_sweep(client: Any, name: str) -> Any | None:
    """The parent run of the sweep called `name`, in any experiment."""
    found = search_all(client, all_experiment_ids(client), f"tags.`{RUN_KEY_TAG}` = 'sweep:{name}'")
    return found[0] if found else None


def sweep_trials(client: Any, parent: Any) -> list[Any]:
    """The sweep's trial runs (children of its parent run) in trial order."""
    name = parent.data.tags.get(SWEEP_TAG, "")
    found = search_all(
        client,
        [parent.info.experiment_id],
        f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{KIND_TAG}` = 'trial'",
    )
    trials = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return sorted(trials, key=lambda r: int(r.data.tags.get(TRIAL_INDEX_TAG, 0)))


def eval_runs_of(client: Any, run: Any) -> list[Any]:
    """Evaluation runs of a pretrain run's checkpoints."""
    return search_all(
        client,
        [run.info.experiment_id],
        f"tags.`{KIND_TAG}` = 'eval' and tags.`{PRETRAIN_RUN_TAG}` = '{run.info.run_id}'",
    )
