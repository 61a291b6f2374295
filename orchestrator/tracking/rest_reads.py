"""A tracking server read over its REST API with plain HTTP (`RestReader`, a `RunReader`).

Against `mlflow server` at 1,000 trials `MlflowClient` waits on one search page after another,
has no bulk metric history (one request per trial), and imports MLflow before the first request.
`RestReader` asks the same endpoints (plus the bulk metric-history endpoint the server's UI
uses), reads their JSON straight into mimray's records and keeps several requests in flight.
Where `server_http.usable` says plain HTTP cannot reach the server (an auth plugin, SigV4), the
readers use `ClientReader`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from orchestrator.tracking.reader import PAGE, RUN_ID_PATTERN, chunks, source_run_filter, tag_filter
from orchestrator.tracking.records import MetricPoint, TrackedModel, TrackedRun, dataset_uses
from orchestrator.tracking.server_http import server_session, usable

__all__ = ["RestReader", "ServerError", "model_record", "run_record", "usable"]

CONCURRENT_REQUESTS = 4  # a default `mlflow server` runs 4 workers
HISTORY_POINTS_CAP = 25_000  # the bulk history endpoint's cap (it takes 100 runs)
# Searches of this many runs or more are made in 16 parts at once (by the run id's first
# digit): one search's pages come one after the other, parts let the server's workers share.
PARTITION_FROM = 500


class ServerError(Exception):
    """The server refused a request (its error code and message)."""


class RestReader:
    """Read-only access to an `mlflow server` at `tracking_uri` (http or https)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._base = tracking_uri.rstrip("/")
        self._session = server_session(CONCURRENT_REQUESTS + 1)
        self._pool = ThreadPoolExecutor(CONCURRENT_REQUESTS, thread_name_prefix="mlflow-read")
        self._lock = threading.Lock()
        self._started: dict[Any, Future] = {}

    def _once(self, key: Any, call: Callable[..., Any], *args: Any) -> Future:
        """`call(*args)` in the background the first time `key` is asked for; that read after."""
        with self._lock:
            if key not in self._started:
                self._started[key] = self._pool.submit(call, *args)
            return self._started[key]

    def _all(self, call: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        """`call(item)` for every item, all in flight at once; results in order."""
        return [read.result() for read in [self._pool.submit(call, item) for item in items]]

    def experiments(self) -> dict[str, str]:
        found = self._pages(
            "POST", "experiments/search", {"view_type": "ACTIVE_ONLY"}, "experiments"
        )
        return {e["experiment_id"]: e["name"] for e in found}

    def experiment_id(self, name: str) -> str | None:
        found = self._call(
            "GET", "experiments/get-by-name", params={"experiment_name": name}, missing_ok=True
        )
        return found["experiment"]["experiment_id"] if found else None

    def search(self, experiment_ids: Sequence[str], filter_string: str) -> list[TrackedRun]:
        body = {
            "experiment_ids": [str(e) for e in experiment_ids],
            "filter": filter_string,
            "run_view_type": "ACTIVE_ONLY",
        }
        return [run_record(r) for r in self._pages("POST", "runs/search", body, "runs")]

    def prefetch(
        self, experiment_ids: Sequence[str], tags: Mapping[str, str], expected: int = 0
    ) -> None:
        self._tagged_parts(experiment_ids, tags, expected)

    def tagged(
        self, experiment_ids: Sequence[str], tags: Mapping[str, str], expected: int = 0
    ) -> list[TrackedRun]:
        parts = self._tagged_parts(experiment_ids, tags, expected)
        found = [run for part in parts for run in part.result()]
        # MLflow's default order: newest first, then run id.
        return (
            found
            if len(parts) == 1
            else sorted(found, key=lambda r: (-(r.start_time or 0), r.run_id))
        )

    def _tagged_parts(
        self, experiment_ids: Sequence[str], tags: Mapping[str, str], expected: int
    ) -> list[Future]:
        where = tag_filter(tags)
        parts = [""] if expected < PARTITION_FROM else [f"{digit:x}" for digit in range(16)]
        key = (tuple(experiment_ids), where, len(parts))
        return [
            self._once(
                (key, part),
                self.search,
                experiment_ids,
                where + (f" and attributes.run_id LIKE '{part}%'" if part else ""),
            )
            for part in parts
        ]

    def run(self, run_id: str) -> TrackedRun | None:
        if not RUN_ID_PATTERN.fullmatch(run_id):
            return None
        found = self._call("GET", "runs/get", params={"run_id": run_id}, missing_ok=True)
        return run_record(found["run"]) if found else None

    def model(self, model_id: str) -> TrackedModel | None:
        if not model_id.startswith("m-"):
            return None
        found = self._call("GET", f"logged-models/{model_id}", missing_ok=True)
        return model_record(found["model"]) if found else None

    def models_of(self, experiment_id: str, run_ids: Sequence[str]) -> list[TrackedModel]:
        def search(chunk: list[str]) -> list[dict[str, Any]]:
            where = source_run_filter(chunk)
            body = {"experiment_ids": [experiment_id], "filter": where}
            return self._pages("POST", "logged-models/search", body, "models") if where else []

        return [
            model_record(m) for found in self._all(search, list(chunks(run_ids))) for m in found
        ]

    def metric_histories(self, run_ids: Sequence[str], key: str) -> dict[str, list[MetricPoint]]:
        """One read of the bulk endpoint per 100 runs, all at once; one read per run only where
        the server refuses it or its answer hits the cap."""
        histories: dict[str, list[MetricPoint]] = {run_id: [] for run_id in run_ids}
        chunked = list(chunks(run_ids))
        for chunk, points in zip(chunked, self._all(self._bulk_history(key), chunked), strict=True):
            if points is None:
                points = [(run_id, *p) for run_id in chunk for p in self._history(run_id, key)]
            for run_id, step, timestamp, value in points:
                histories[run_id].append((step, timestamp, value))
        for points in histories.values():
            points.sort()
        return histories

    def _bulk_history(self, key: str) -> Callable[[list[str]], list | None]:
        def read(chunk: list[str]) -> list[tuple[str, int, int, float]] | None:
            params = {"run_id": chunk, "metric_key": key, "max_results": HISTORY_POINTS_CAP}
            try:
                found = self._call("GET", "metrics/get-history-bulk", params=params, api="ajax-api")
            except ServerError:
                return None  # a server without the endpoint: run by run
            rows = found.get("metrics", [])
            if len(rows) >= HISTORY_POINTS_CAP:
                return None
            return [(m["run_id"], *_point(m)) for m in rows]

        return read

    def _history(self, run_id: str, key: str) -> list[MetricPoint]:
        params = {"run_id": run_id, "metric_key": key, "max_results": HISTORY_POINTS_CAP}
        return [_point(m) for m in self._pages("GET", "metrics/get-history", params, "metrics")]

    def text_artifact(self, run_id: str, path: str) -> str | None:
        response = self._session.get(
            f"{self._base}/get-artifact", params={"run_uuid": run_id, "path": path}, timeout=120
        )
        if response.status_code == 200:
            return response.text
        # A server that does not serve artifacts (they live in S3, say): MLflow's client
        # downloads them from where the run says they are.
        from orchestrator.tracking.reader import ClientReader

        return ClientReader(self.tracking_uri).text_artifact(run_id, path)

    def _pages(
        self, method: str, endpoint: str, request: dict[str, Any], field: str
    ) -> list[dict[str, Any]]:
        """Every item of `field` over all pages of a search (POST: a body; GET: parameters)."""
        items: list[dict[str, Any]] = []
        token = None
        while True:
            ask = {**request, "max_results": request.get("max_results", PAGE)}
            if token:
                ask["page_token"] = token
            where = {"json": ask} if method == "POST" else {"params": ask}
            found = self._call(method, endpoint, **where)
            items += found.get(field, [])
            token = found.get("next_page_token")
            if not token:
                return items

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


def run_record(run: dict[str, Any]) -> TrackedRun:
    """A run of MLflow's REST JSON as mimray's record."""
    info, data = run["info"], run.get("data", {})
    inputs = run.get("inputs", {}).get("dataset_inputs", [])
    return TrackedRun(
        run_id=info["run_id"],
        name=info.get("run_name", ""),
        experiment_id=info["experiment_id"],
        status=info.get("status", ""),
        start_time=int(info["start_time"]) if "start_time" in info else None,
        end_time=int(info["end_time"]) if "end_time" in info else None,
        tags=_key_values(data.get("tags", [])),
        params=_key_values(data.get("params", [])),
        # float() reads the "NaN" and "Infinity" that protobuf's JSON writes for such values.
        metrics={m["key"]: float(m["value"]) for m in data.get("metrics", [])},
        datasets=dataset_uses(
            [
                (i["dataset"]["name"], i["dataset"]["digest"], _key_values(i.get("tags", [])))
                for i in inputs
            ]
        ),
    )


def model_record(model: dict[str, Any]) -> TrackedModel:
    info, data = model["info"], model.get("data", {})
    return TrackedModel(
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


def _point(m: dict[str, Any]) -> MetricPoint:
    return int(m.get("step", 0)), int(m["timestamp"]), float(m["value"])
