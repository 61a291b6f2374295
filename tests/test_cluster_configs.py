"""cluster/: launcher YAML passes Ray's own schema, KubeRay manifests say what they must, and
nothing under cluster/ looks like a credential. Offline and fast: no cloud, no cluster."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
CLOUD_CONFIGS = ["aws.yaml", "gcp.yaml"]
SECURITY_PORTS = {"6379", "8265", "10001"}


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def checked(config: dict) -> dict:
    """Ray's own check, as `ray up` does it: defaults filled in, then the schema."""
    if config["provider"]["type"] == "fake_multinode":
        # prepare_config reads an example YAML the wheel does not ship; the fake config
        # carries every launcher key itself, so the schema applies as is.
        validate_config(config)
        return config
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", [*CLOUD_CONFIGS, "local-fake.yaml"])
def test_launcher_config_passes_rays_validation(name):
    config = checked(load(name))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers and all(t["min_workers"] == 0 for t in workers.values())
    assert all(t["max_workers"] >= 1 for t in workers.values())
    assert head["resources"]["head"] == 1
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("name", [*CLOUD_CONFIGS, "local-fake.yaml"])
@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("available_node_types", "<worker>", "min_workers"), "zero"),
        (("available_node_types", "<worker>", "resources", "GPU"), "eight"),
        (("idle_timeout_minutes",), -1),
        (("provider",), {"region": "nowhere"}),  # no provider type
    ],
)
def test_broken_variant_is_rejected(name, path, value):
    config = load(name)
    worker = next(k for k in config["available_node_types"] if k != config["head_node_type"])
    node = config
    keys = [worker if key == "<worker>" else key for key in path]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    with pytest.raises(Exception) as err:
        checked(config)
    assert type(err.value).__name__ in {"ValidationError", "ValueError", "KeyError"}


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_cloud_head_takes_no_trials_and_spot_has_an_on_demand_twin(name):
    config = load(name)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    spot = {k: v for k, v in types.items() if _is_spot(v["node_config"])}
    on_demand = {
        k: v
        for k, v in types.items()
        if k != config["head_node_type"] and not _is_spot(v["node_config"])
    }
    assert spot, "no spot node type"
    for spot_type in spot.values():
        # only on-demand nodes carry `on_demand`, so trial drivers can avoid spot nodes
        assert "on_demand" not in spot_type["resources"]
        size = {k: v for k, v in spot_type["resources"].items() if k.startswith("gpu_")}
        twins = [t for t in on_demand.values() if size.items() <= t["resources"].items()]
        assert twins and all(t["resources"]["on_demand"] == 1 for t in twins)


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_dashboard_and_gcs_are_not_opened_to_the_internet(name):
    config = load(name)
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        opened = {str(p) for p in range(int(rule["FromPort"]), int(rule["ToPort"]) + 1)}
        assert not opened & SECURITY_PORTS, rule
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start


def _is_spot(node_config: dict) -> bool:
    aws = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling", {})
    gcp = scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible")
    return bool(aws or gcp)


# Patterns of real credentials: AWS access key ids, secret key assignments with a value,
# private keys, GCP service-account JSON, bearer tokens.
CREDENTIAL_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{30,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\"type\"\s*:\s*\"service_account\""),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._-]{20,}"),
    re.compile(r"(?i)(password|token|secret)\s*:\s*['\"]?[A-Za-z0-9/+_-]{16,}"),
    re.compile(r"(?i)name:\s*(AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|\w*PASSWORD)\s*\n\s*value:"),
]


def test_no_file_under_cluster_holds_a_credential():
    files = [p for p in CLUSTER.rglob("*") if p.is_file()]
    assert len(files) >= 6
    for path in files:
        text = path.read_text()
        for pattern in CREDENTIAL_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(CLUSTER)}: {pattern.pattern}"


# AWS's documented example values, not real keys.
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    "planted",
    [
        "access_key: AKIAIOSFODNN7EXAMPLE",
        f"aws_secret_access_key = {EXAMPLE_SECRET}",
        f"env:\n  - name: AWS_SECRET_ACCESS_KEY\n    value: {EXAMPLE_SECRET}",
        "-----BEGIN RSA PRIVATE KEY-----",
        '{"type": "service_account", "project_id": "p"}',
        "Authorization: Bearer 0123456789abcdef0123456789",
    ],
)
def test_the_credential_check_catches_a_planted_credential(planted):
    assert any(pattern.search(planted) for pattern in CREDENTIAL_PATTERNS)
