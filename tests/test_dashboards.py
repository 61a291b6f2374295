"""The Grafana dashboards and Prometheus/Grafana provisioning files, checked offline.

Whether the metrics they query are really exported is checked against a live run in
`test_observability_e2e.py`, which reuses `queried_metrics` from here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from workloads.live_metrics import (
    EXPORTED_GPU_METRICS,
    EXPORTED_SWEEP_METRICS,
    EXPORTED_TRAINING_METRICS,
)

ROOT = Path(__file__).resolve().parent.parent / "dashboards"
DASHBOARDS = [ROOT / name for name in ("sweep-overview.json", "training.json", "data-ingest.json")]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Identifiers that name metrics: Ray's (`ray_...`, ours included as `ray_mimray_...`) or a bare
# `mimray...` one (which would be a mistake: Ray exports ours with the `ray_` prefix).
METRIC = re.compile(r"(?<![\w\"'])(ray_\w+|mimray\w*)")
# Label matchers and grouping clauses hold label names and values, not metric names:
# neither `{state="running"}` nor `by (ray_train_run_name)` counts.
MATCHERS = re.compile(r"\{[^}]*\}")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return [p for p in found if p.get("type") != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and the template variables' queries."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(GROUPING.sub("", MATCHERS.sub("", expr))))


def queried_metrics(path: Path) -> set[str]:
    return set().union(*(metric_names(e) for e in expressions(load(path))))


def test_metric_names_are_parsed_from_promql():
    expr = (
        "histogram_quantile(0.95, sum by (run, le) (rate(ray_mimray_train_step_seconds_bucket"
        '{run=~"$run", state="ray_not_a_metric"}[$__rate_interval]))) / on() ray_node_mem_total'
    )
    assert metric_names(expr) == {"ray_mimray_train_step_seconds_bucket", "ray_node_mem_total"}
    assert metric_names("label_values(ray_mimray_train_epoch, run)") == {"ray_mimray_train_epoch"}
    grouped = "sum by (ray_train_run_name, ray_train_controller_state) (ray_train_controller_state)"
    assert metric_names(grouped) == {"ray_train_controller_state"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_uses_the_templated_datasource_and_every_panel_queries(path):
    dashboard = load(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert dashboard["uid"].startswith("mimray-")
    assert panels(dashboard), "no panels"
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no query"
        for target in targets:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert metric_names(target["expr"]), f"{panel['title']!r} queries no metric"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_only_names_that_exist_once_ray_exported_them(path):
    names = queried_metrics(path)
    assert not {n for n in names if n.startswith("mimray")}, "Ray exports ours as ray_mimray_*"
    ours = {n for n in names if n.startswith("ray_mimray_")}
    exported = {*EXPORTED_TRAINING_METRICS, *EXPORTED_GPU_METRICS, *EXPORTED_SWEEP_METRICS}
    # Histograms are queried through their _sum/_count series as well as _bucket.
    exported |= {
        n.removesuffix("_bucket") + suffix
        for n in exported
        if n.endswith("_bucket")
        for suffix in ("_sum", "_count")
    }
    assert ours <= exported, sorted(ours - exported)


def test_dashboards_cover_what_each_one_is_for():
    by_name = {path.stem: queried_metrics(path) for path in DASHBOARDS}
    assert {"ray_mimray_sweep_trials", "ray_mimray_sweep_trial_loss"} <= by_name["sweep-overview"]
    assert {
        "ray_mimray_train_images_per_second",
        "ray_mimray_train_step_seconds_bucket",
        "ray_mimray_train_data_wait_share",
        "ray_mimray_gpu_memory_max_allocated_bytes",
        "ray_node_cpu_utilization",
        "ray_node_gpus_utilization",
    } <= by_name["training"]
    assert {"ray_mimray_train_data_wait_seconds_bucket", "ray_data_output_bytes"} <= by_name[
        "data-ingest"
    ]


def test_prometheus_scrapes_ray_service_discovery():
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ray"]
    files = [f for sd in job["file_sd_configs"] for f in sd["files"]]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]


def test_grafana_provisioning_points_at_these_dashboards_and_prometheus():
    datasources = yaml.safe_load((ROOT / "provisioning" / "datasources.yaml").read_text())
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["url"].startswith("http")
    providers = yaml.safe_load((ROOT / "provisioning" / "dashboards.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"], provider


# Every Ray cluster start is a new session (Ray's `SessionName` label); one Prometheus keeps
# the series of earlier clusters, so each selector filters on the picked session.
SESSION_MATCHER = 'SessionName=~"$session"'
SELECTOR = re.compile(r"(?<![\w\"'])(ray_\w+)(\{[^}]*\})?")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, its label matchers) for every metric selector in EXPR."""
    skipped = [m.span() for m in MATCHERS.finditer(expr)] + [
        m.span() for m in GROUPING.finditer(expr)
    ]
    return [
        (m.group(1), m.group(2) or "")
        for m in SELECTOR.finditer(expr)
        if not any(start <= m.start() < end for start, end in skipped)
    ]


def test_selectors_are_found_outside_matchers_and_groupings():
    expr = (
        'sum by (ray_train_run_name) (rate(ray_a{run=~"$run", x="ray_b"}[5m])) / ray_c'
        ' + label_values(ray_d{SessionName=~"$session"}, run)'
    )
    assert selectors(expr) == [
        ("ray_a", '{run=~"$run", x="ray_b"}'),
        ("ray_c", ""),
        ("ray_d", '{SessionName=~"$session"}'),
    ]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_is_filtered_by_the_picked_ray_session(path):
    dashboard = load(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    session = variables["session"]
    query = session["query"]["query"] if isinstance(session["query"], dict) else session["query"]
    assert re.fullmatch(r"label_values\(ray_\w+, SessionName\)", query)
    assert session["includeAll"] and session["datasource"] == DATASOURCE
    names = list(variables)
    assert names.index("session") < min(
        names.index(n) for n in names if n not in ("datasource", "session")
    ), "run/sweep choices depend on the session, so it comes first"
    for expr in expressions(dashboard):
        if expr == query:
            continue
        found = selectors(expr)
        assert found, expr
        for metric, matchers in found:
            assert SESSION_MATCHER in matchers, f"{metric} in {expr!r}"
