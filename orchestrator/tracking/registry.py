"""The model registry: a chosen checkpoint registered as a model version with an alias, and
`models:/NAME@ALIAS` read back to the checkpoint it points at, through `MlflowClient`.

A version's source is its checkpoint's LoggedModel (`models:/<model id>`, as
`mlflow.register_model` records one): the weights stay where Ray stored them, and the version,
the alias and the LoggedModel all lead to the same checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import ConfigError

REGISTRY_PREFIX = "models:/"
# MLflow's rules: an alias is letters, digits, `_` and `-`, at most 255 characters, and neither
# `latest` nor a version alias (`v3`); a model name has no `/` or `:`.
ALIAS_PATTERN = re.compile(r"[\w\-]{1,255}")
RESERVED_ALIAS = re.compile(r"latest|[vV]\d+", re.IGNORECASE)
PROMOTED_METRIC_TAG = "mimray.promoted_by"  # on the version: the metric and value that chose it
RUN_ID = re.compile(r"[0-9a-f]{32}")
RUNS_PER_SEARCH = 100  # MLflow's bulk reads take at most 100 ids


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    alias: str
    model_id: str
    new: bool  # False: the checkpoint already had a version of this model, now aliased


def default_alias(metric: str) -> str:
    """`best-knn` for knn/top1 (an evaluation's top-1 names its protocol), else `best-` and the
    metric with other characters as dashes (checkpoint/loss -> best-checkpoint-loss)."""
    protocol, _, rest = metric.partition("/")
    base = protocol if rest == "top1" else metric
    return "best-" + re.sub(r"[^\w\-]+", "-", base).strip("-")


def check_alias(alias: str) -> str:
    if not ALIAS_PATTERN.fullmatch(alias) or RESERVED_ALIAS.fullmatch(alias):
        raise ConfigError(
            f"--alias {alias!r}: allowed: 1-255 letters, digits, '_' or '-', not 'latest' or "
            "a version alias like 'v3'"
        )
    return alias


def check_model_name(name: str) -> str:
    if not name.strip() or "/" in name or ":" in name:
        raise ConfigError(f"--name {name!r}: a registered model name is non-empty, no '/' or ':'")
    return name


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    rest = uri.removeprefix(REGISTRY_PREFIX)
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if name and alias and "/" not in name:
            return name, alias, None
    else:
        name, _, version = rest.rpartition("/")
        if name and version.isdigit() and "/" not in name:
            return name, None, version
    raise ConfigError(
        f"target {uri}: allowed registered-model forms are models:/NAME@ALIAS and "
        "models:/NAME/VERSION"
    )


def registered_model_id(tracking_uri: str, uri: str) -> str:
    """The LoggedModel id the version `models:/NAME@ALIAS` (or `/VERSION`) points at."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    client = MlflowClient(tracking_uri)
    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias is not None
            else client.get_model_version(name, version)
        )
    except MlflowException:
        raise ConfigError(
            f"target {uri}: no such registered model version in {tracking_uri}; "
            "`mimray promote` registers one"
        ) from None
    model_id = _version_model_id(found)
    if not model_id:
        raise ConfigError(f"target {uri}: version {found.version} names no LoggedModel")
    return model_id


def _version_model_id(version: Any) -> str | None:
    """The LoggedModel a version was registered from: its `model_id`, which MLflow's SQL
    registry does not keep, else its source `models:/<model id>`."""
    if version.model_id:
        return version.model_id
    source = version.source or ""
    rest = source.removeprefix(REGISTRY_PREFIX)
    return rest if source.startswith(REGISTRY_PREFIX) and rest.startswith("m-") else None


def checkpoint_metrics(
    tracking_uri: str, experiment_id: str, run_ids: Sequence[str]
) -> dict[str, dict[str, float]]:
    """LoggedModel id -> its metrics, for the models of these runs (evaluations log their
    results on the model). A metric logged more than once keeps its latest value, as reports
    do. One search per 100 runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    latest: dict[str, dict[str, tuple[int, float]]] = {}
    ids = [run_id for run_id in run_ids if RUN_ID.fullmatch(run_id)]  # quoted in a filter
    for start in range(0, len(ids), RUNS_PER_SEARCH):
        quoted = ", ".join(f"'{run_id}'" for run_id in ids[start : start + RUNS_PER_SEARCH])
        token = None
        while True:
            page = client.search_logged_models(
                experiment_ids=[experiment_id],
                filter_string=f"source_run_id IN ({quoted})",
                max_results=1000,
                page_token=token,
            )
            for model in page:
                values = latest.setdefault(model.model_id, {})
                for metric in model.metrics or []:
                    seen = values.get(metric.key)
                    if seen is None or metric.timestamp >= seen[0]:
                        values[metric.key] = (metric.timestamp, metric.value)
            token = page.token
            if not token:
                break
    return {
        model_id: {key: value for key, (_, value) in values.items()}
        for model_id, values in latest.items()
    }


def register_checkpoint(
    tracking_uri: str,
    name: str,
    model_id: str,
    run_id: str,
    alias: str,
    tags: dict[str, str],
) -> RegisteredVersion:
    """Register checkpoint `model_id` as a version of model `name` and point `alias` at it.

    Promoting the same checkpoint again moves the alias to its existing version instead of
    adding a copy; another checkpoint gets a new version and takes the alias over."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    # MLflow's SQL registry looks the source LoggedModel up through the global tracking URI,
    # not the client's (a TODO in its store): both must name this store.
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    escaped = name.replace("'", "\\'")
    existing = [
        version
        for version in client.search_model_versions(f"name = '{escaped}'")
        if _version_model_id(version) == model_id
    ]
    if existing:
        version = max(existing, key=lambda v: int(v.version))
    else:
        version = client.create_model_version(
            name, source=f"{REGISTRY_PREFIX}{model_id}", run_id=run_id, model_id=model_id, tags=tags
        )
    client.set_registered_model_alias(name, alias, version.version)
    return RegisteredVersion(name, str(version.version), alias, model_id, new=not existing)
