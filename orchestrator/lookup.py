"""Read-only queries over the MLflow store: runs, sweeps, checkpoints and their evaluations.

Shared by `mimray eval` (which checkpoints to evaluate), `mimray lineage` and `mimray report`.
Nothing here writes: a mistyped store path must not leave an empty database behind.

A sweep is read in a bounded number of queries, whatever its size: its trials, and the eval
runs of all of them, in one paginated search each (by the sweep's tag; on an SQL store a few
plain SELECTs, `tracking/run_rows.py`); their checkpoints in one read per 100 trials, their
loss curves in one read per 100 trials from a server or a few SELECTs from an SQL store. One
query per trial cost ~17 s at 1,000 trials on SQLite and becomes one HTTP round trip per trial
against a shared `mlflow server`. From a server the readers read through
`tracking/rest_reads.py` (`open_reader`): plain HTTP, no MLflow import, and a sweep's searches
(`prefetch_sweep`), checkpoint reads and loss-curve reads in flight at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.tracking.checkpoints import (  # noqa: F401 - part of the readers' interface
    RUN_ID_PATTERN,
    checkpoint_models_of,
    chunks,
)
from orchestrator.tracking.names import (
    KIND_TAG,
    MODEL_TYPE,
    PRETRAIN_RUN_TAG,
    RUN_KEY_TAG,
    SWEEP_TAG,
    TRIAL_INDEX_TAG,
)
from orchestrator.tracking.rest_reads import RestReader, usable
from orchestrator.tracking.run_rows import metric_points, search_tagged

# MLflow's bulk metric-history endpoint returns at most 25,000 points (and takes 100 runs).
HISTORY_POINTS_CAP = 25_000
# Sweeps this large are searched on a server in parts at once (`prefetch_sweep`).
PARTITION_FROM_TRIALS = 2000


def is_result_metric(key: str) -> bool:
    """An evaluation's final numbers (e.g. knn/top1, knn/top1_1nn, linear/best_top1), not its
    per-epoch curves (linear/val_top1, .../train_loss)."""
    return "top1" in key and "/val_" not in key


def open_store(tracking_uri: str) -> Any:
    """An MlflowClient on an existing store; ConfigError when an SQLite file is missing
    (said before MLflow is imported: a refusal answers at once)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ConfigError(
                f"no MLflow store at {tracking_uri}; run a pretrain here first, or point "
                "MLFLOW_TRACKING_URI at the store that holds the runs"
            )
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def open_reader(tracking_uri: str) -> Any:
    """What `report`, `lineage` and eval targets read through: a `RestReader` for a server
    (`rest_reads.usable`), else an MlflowClient (`open_store`)."""
    return RestReader(tracking_uri) if usable(tracking_uri) else open_store(tracking_uri)


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
    if not RUN_ID_PATTERN.fullmatch(run_id):
        return None
    if isinstance(client, RestReader):
        return client.get_run(run_id)
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def get_checkpoint_model(client: Any, model_id: str) -> Any | None:
    """The mimray checkpoint LoggedModel with this id, or None."""
    if not isinstance(client, RestReader):
        from mlflow.exceptions import MlflowException

    if not model_id.startswith("m-"):
        return None
    if isinstance(client, RestReader):
        model = client.get_logged_model(model_id)
    else:
        try:
            model = client.get_logged_model(model_id)
        except MlflowException:
            return None
    return model if model is not None and model.model_type == MODEL_TYPE else None


def checkpoint_models(client: Any, run: Any) -> list[Any]:
    """The run's checkpoints (LoggedModels), oldest epoch first."""
    return checkpoint_models_of(client, run.info.experiment_id, [run.info.run_id])[run.info.run_id]


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
    found = sweep_runs(client, parent, "trial")
    trials = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return sorted(trials, key=lambda r: int(r.data.tags.get(TRIAL_INDEX_TAG, 0)))


def eval_runs_of(client: Any, run: Any) -> list[Any]:
    """Evaluation runs of a pretrain run's checkpoints."""
    return search_all(
        client,
        [run.info.experiment_id],
        f"tags.`{KIND_TAG}` = 'eval' and tags.`{PRETRAIN_RUN_TAG}` = '{run.info.run_id}'",
    )


def sweep_eval_runs(client: Any, parent: Any) -> dict[str, list[Any]]:
    """Trial run id -> its evaluation runs, for every trial of the sweep, in one search.

    `mimray eval` copies the trial's sweep tag onto each eval run, so the sweep's tag finds
    them all; runs come in the order `eval_runs_of` gives them (MLflow's default order)."""
    found = sweep_runs(client, parent, "eval")
    by_trial: dict[str, list[Any]] = {}
    for run in found:
        by_trial.setdefault(run.data.tags.get(PRETRAIN_RUN_TAG, ""), []).append(run)
    return by_trial


def sweep_runs(client: Any, parent: Any, kind: str) -> list[Any]:
    """The sweep's runs of `kind` (trial, eval), newest first: selected straight from an SQL
    store's tables (`run_rows`), else one paginated search (from a server, the searches
    `prefetch_sweep` started, merged in MLflow's order)."""
    if isinstance(client, RestReader):
        parts = prefetch_sweep(client, parent, kind)[kind]
        found = [run for part in parts for run in part.result()]
        # MLflow's default order: newest first, then run id.
        return found if len(parts) == 1 else sorted(found, key=_newest_first)
    name = parent.data.tags.get(SWEEP_TAG, "")
    experiments = [parent.info.experiment_id]
    found = search_tagged(client, experiments, {SWEEP_TAG: name, KIND_TAG: kind})
    if found is None:
        found = search_all(client, experiments, _sweep_filter(name, kind))
    return found


def prefetch_sweep(client: Any, parent: Any, *kinds: str) -> dict[str, list[Any]]:
    """Start the searches of the sweep's runs of each of `kinds` on a server (`RestReader`), so
    they run while the caller does other reads; `sweep_runs` takes their results. Started once
    per reader, sweep and kind. Does nothing for other stores.

    A sweep of PARTITION_FROM_TRIALS trials or more is searched in 16 parts (by the first
    digit of the run id) at once: one search's pages come one after the other, ~2.5 s of server
    time per 1,000 trials at 5,000, and parts let a server's workers share them."""
    if not isinstance(client, RestReader):
        return {}
    name = parent.data.tags.get(SWEEP_TAG, "")
    experiments = [parent.info.experiment_id]
    trials = int(parent.data.params.get("sweep.trials", "0") or 0)
    parts = [""] if trials < PARTITION_FROM_TRIALS else [f"{digit:x}" for digit in range(16)]
    return {
        kind: [
            client.once(
                ("sweep_runs", parent.info.run_id, kind, part),
                search_all,
                client,
                experiments,
                _sweep_filter(name, kind)
                + (f" and attributes.run_id LIKE '{part}%'" if part else ""),
            )
            for part in parts
        ]
        for kind in kinds
    }


def _newest_first(run: Any) -> tuple[int, str]:
    return -(run.info.start_time or 0), run.info.run_id


def _sweep_filter(name: str, kind: str) -> str:
    return f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{KIND_TAG}` = '{kind}'"


def metric_histories(
    client: Any, run_ids: Sequence[str], key: str
) -> dict[str, list[tuple[int, int, float]]]:
    """Run id -> its (step, timestamp, value) points of metric `key`: selected from an SQL
    store's metrics table (`run_rows`), else one read of the server's bulk history endpoint
    per 100 runs; one read per run only where that is refused or hits its cap."""
    histories: dict[str, list[tuple[int, int, float]]] = {run_id: [] for run_id in run_ids}
    selected = metric_points(client, run_ids, key)
    for run_id, step, timestamp, value in selected or []:
        histories[run_id].append((step, timestamp, value))
    chunked = list(chunks(list(run_ids))) if selected is None else []
    if isinstance(client, RestReader):  # every chunk's read in flight at once
        reads = [client.submit(_bulk_history, client, chunk, key) for chunk in chunked]
        bulk = [read.result() for read in reads]
    else:
        bulk = [_bulk_history(client, chunk, key) for chunk in chunked]
    for chunk, points in zip(chunked, bulk, strict=True):
        if points is None:
            points = [
                (run_id, m.step, m.timestamp, m.value)
                for run_id in chunk
                for m in client.get_metric_history(run_id, key)
            ]
        for run_id, step, timestamp, value in points:
            histories[run_id].append((step, timestamp, value))
    return histories


def _bulk_history(
    client: Any, run_ids: list[str], key: str
) -> list[tuple[str, int, int, float]] | None:
    """Points of `key` for up to 100 runs in one read of a server; None when it cannot."""
    if isinstance(client, RestReader):
        try:
            points = client.metric_history_bulk(run_ids, key, HISTORY_POINTS_CAP)
        except Exception:  # noqa: BLE001 - an older server: read run by run
            return None
        return None if len(points) >= HISTORY_POINTS_CAP else points
    from mlflow.store.tracking.rest_store import RestStore

    store = client._tracking_client.store  # the bulk read is not on MlflowClient
    try:
        if isinstance(store, RestStore):
            from mlflow.utils.rest_utils import http_request, verify_rest_response

            endpoint = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
            response = http_request(
                store.get_host_creds(),
                endpoint,
                "GET",
                params={"run_id": run_ids, "metric_key": key, "max_results": HISTORY_POINTS_CAP},
            )
            rows = verify_rest_response(response, endpoint).json().get("metrics", [])
            points = [
                (r["run_id"], int(r.get("step", 0)), int(r["timestamp"]), float(r["value"]))
                for r in rows
            ]
        else:
            return None
    except Exception:  # noqa: BLE001 - an older server or another store: read run by run
        return None
    return None if len(points) >= HISTORY_POINTS_CAP else points
