"""A tracking server's runs, checkpoints and loss curves read over its REST API with plain HTTP.

Against `mlflow server` (1,000 trials, profiled: benchmarks/README.md) `report` and `lineage`
spent ~3 s waiting on the server's searches, ~1.3 s importing MLflow before the first request
and ~1 s turning JSON pages into protobuf messages and MLflow entities, one after the other.
`RestReader` asks the same endpoints `MlflowClient` asks and reads their JSON straight into the
shapes of `run_rows.py` (MLflow's attribute names: `info`, `data`, `inputs`; `model_id`,
`params`, ...), without importing MLflow, and runs independent requests at once (`submit`), so
the client's own work overlaps the server's. Reads only. It honours MLflow's client settings
for reaching a server (MLFLOW_TRACKING_TOKEN, _USERNAME/_PASSWORD, _INSECURE_TLS,
_SERVER_CERT_PATH, _CLIENT_CERT_PATH); where others are set (an auth plugin, Databricks), or the
URI is not http(s), `lookup.open_reader` uses `MlflowClient` instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from orchestrator.tracking.rest_rows import (
    ExperimentRow,
    MetricPoint,
    ModelRow,
    metric_point,
    model_row,
    point_fields,
    run_row,
)
from orchestrator.tracking.run_rows import RunRow

# Requests in flight at once: a default `mlflow server` runs 4 workers.
CONCURRENT_REQUESTS = 4
# HTTP statuses MLflow's client retries (mlflow.utils.request_utils).
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
# MLflow client settings this reader does not implement: with one of them set, MlflowClient.
UNSUPPORTED_SETTINGS = ("MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_AWS_SIGV4")


class ServerError(Exception):
    """The server refused a request (its error code and message)."""


class Page(list):
    """One page of results and the token of the next (None on the last), as MLflow's PagedList."""

    def __init__(self, items: list[Any], token: str | None) -> None:
        super().__init__(items)
        self.token = token


def usable(tracking_uri: str) -> bool:
    """Whether this reader can stand in for MlflowClient at `tracking_uri`."""
    is_http = tracking_uri.startswith(("http://", "https://"))
    return is_http and not any(os.environ.get(name) for name in UNSUPPORTED_SETTINGS)


class RestReader:
    """Read-only access to an `mlflow server` at `tracking_uri` (http or https)."""

    def __init__(self, tracking_uri: str) -> None:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.tracking_uri = tracking_uri
        self._base = tracking_uri.rstrip("/")
        self._session = requests.Session()
        # Transient failures are retried with backoff, as MLflow's client does (a busy
        # server answered one search of 32 with HTTP 500 here); every request is a read.
        retry = Retry(
            total=5,
            backoff_factor=0.5,
            status_forcelist=TRANSIENT_STATUS,
            allowed_methods=None,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(
            pool_connections=1, pool_maxsize=CONCURRENT_REQUESTS + 1, max_retries=retry
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        env = os.environ
        if env.get("MLFLOW_TRACKING_TOKEN"):
            self._session.headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
        elif env.get("MLFLOW_TRACKING_USERNAME"):
            self._session.auth = (
                env["MLFLOW_TRACKING_USERNAME"],
                env.get("MLFLOW_TRACKING_PASSWORD", ""),
            )
        if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            self._session.verify = False
        elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            self._session.verify = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        if env.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
            self._session.cert = env["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
        self._pool = ThreadPoolExecutor(CONCURRENT_REQUESTS, thread_name_prefix="mlflow-read")
        self._lock = threading.Lock()
        self._started: dict[Any, Future] = {}

    def submit(self, call: Callable[..., Any], *args: Any) -> Future:
        """Run `call(*args)` (a read of this reader) beside the caller's next requests."""
        return self._pool.submit(call, *args)

    def once(self, key: Any, call: Callable[..., Any], *args: Any) -> Future:
        """`submit(call, *args)` the first time `key` is asked for; that same read after."""
        with self._lock:
            if key not in self._started:
                self._started[key] = self.submit(call, *args)
            return self._started[key]

    # Runs

    def search_runs(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        max_results: int = 1000,
        page_token: str | None = None,
    ) -> Page:
        """One page of active runs, in MLflow's default order (newest first, then run id)."""
        body: dict[str, Any] = {
            "experiment_ids": [str(e) for e in experiment_ids],
            "filter": filter_string,
            "max_results": max_results,
            "run_view_type": "ACTIVE_ONLY",
        }
        if page_token:
            body["page_token"] = page_token
        found = self._call("POST", "runs/search", json=body)
        return Page([run_row(r) for r in found.get("runs", [])], found.get("next_page_token"))

    def get_run(self, run_id: str) -> RunRow | None:
        """The run, or None when the server has no run with this id."""
        found = self._call("GET", "runs/get", params={"run_id": run_id}, missing_ok=True)
        return run_row(found["run"]) if found else None

    def get_metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        points: list[MetricPoint] = []
        token = None
        while True:
            params = {"run_id": run_id, "metric_key": key, "max_results": 25_000}
            if token:
                params["page_token"] = token
            found = self._call("GET", "metrics/get-history", params=params)
            points += [metric_point(m) for m in found.get("metrics", [])]
            token = found.get("next_page_token")
            if not token:
                return points

    def metric_history_bulk(
        self, run_ids: Sequence[str], key: str, max_results: int
    ) -> list[tuple[str, int, int, float]]:
        """(run id, step, timestamp, value) of metric `key` of up to 100 runs, in one request."""
        found = self._call(
            "GET",
            "metrics/get-history-bulk",
            params={"run_id": list(run_ids), "metric_key": key, "max_results": max_results},
            api="ajax-api",
        )
        return [(m["run_id"], *point_fields(m)) for m in found.get("metrics", [])]

    # Experiments

    def search_experiments(self) -> list[ExperimentRow]:
        """Every active experiment."""
        found: list[ExperimentRow] = []
        token = None
        while True:
            body: dict[str, Any] = {"max_results": 1000, "view_type": "ACTIVE_ONLY"}
            if token:
                body["page_token"] = token
            page = self._call("POST", "experiments/search", json=body)
            found += [
                ExperimentRow(e["experiment_id"], e["name"]) for e in page.get("experiments", [])
            ]
            token = page.get("next_page_token")
            if not token:
                return found

    def get_experiment_by_name(self, name: str) -> ExperimentRow | None:
        found = self._call(
            "GET", "experiments/get-by-name", params={"experiment_name": name}, missing_ok=True
        )
        if not found:
            return None
        return ExperimentRow(found["experiment"]["experiment_id"], found["experiment"]["name"])

    # Checkpoints (LoggedModels)

    def search_logged_models(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        max_results: int = 1000,
        page_token: str | None = None,
    ) -> Page:
        body: dict[str, Any] = {
            "experiment_ids": [str(e) for e in experiment_ids],
            "filter": filter_string,
            "max_results": max_results,
        }
        if page_token:
            body["page_token"] = page_token
        found = self._call("POST", "logged-models/search", json=body)
        return Page([model_row(m) for m in found.get("models", [])], found.get("next_page_token"))

    def get_logged_model(self, model_id: str) -> ModelRow | None:
        found = self._call("GET", f"logged-models/{model_id}", missing_ok=True)
        return model_row(found["model"]) if found else None

    # Artifacts

    def read_artifact(self, run_id: str, path: str) -> str | None:
        """A small artifact of the run as text, served by the server; None when it cannot."""
        response = self._session.get(
            f"{self._base}/get-artifact", params={"run_uuid": run_id, "path": path}, timeout=120
        )
        return response.text if response.status_code == 200 else None

    def _call(
        self,
        method: str,
        endpoint: str,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        missing_ok: bool = False,
        api: str = "api",
    ) -> dict[str, Any] | None:
        url = f"{self._base}/{api}/2.0/mlflow/{endpoint}"
        response = self._session.request(method, url, json=json, params=params, timeout=120)
        if response.status_code == 200:
            return response.json()
        try:
            error = response.json()
        except ValueError:
            error = {"message": response.text[:300]}
        if missing_ok and error.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise ServerError(
            f"{method} {url}: HTTP {response.status_code} "
            f"{error.get('error_code', '')} {error.get('message', '')}".strip()
        )
