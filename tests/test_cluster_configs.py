"""cluster/: the launcher YAMLs pass Ray's own schema and mimray's rules (profiles and service
accounts on every node, pinned images, mimray's own container, no duplicate or extra open
firewall rules, Prometheus discovery visible on the host), and nothing under cluster/ looks
like a credential. Offline and fast: no cloud, no cluster. KubeRay: test_kuberay_manifests.py;
`ray up`'s calls to AWS on moto: test_cluster_aws_launch.py; the host's /tmp/ray as the
container's user sees it: test_cluster_host_mounts.py; what autoscaler v2 launches:
test_cluster_autoscaler_v2.py."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.resource_demand_scheduler import get_bin_pack_residual
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.config.run import ScalingSpec

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
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    # The head is on-demand and always up: the marker is on the cluster before any worker.
    assert not _is_spot(head["node_config"]) and head["resources"]["on_demand"] >= 1
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
        assert twins and all(t["resources"]["on_demand"] >= 1 for t in twins)


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


def _workers(config: dict) -> dict[str, dict]:
    types = config["available_node_types"]
    return {k: v for k, v in types.items() if k != config["head_node_type"]}


def test_security_group_adds_no_duplicate_and_no_open_rule_beyond_rays_own():
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    config = load("aws.yaml")
    extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
    # The exact list Ray sends to EC2 in one authorize_ingress call for the group it creates.
    rules = _create_default_inbound_rules({"sg-mimray"}, extra)
    keys = [yaml.safe_dump(rule, sort_keys=True) for rule in rules]
    assert len(keys) == len(set(keys)), "a rule Ray adds itself is repeated (EC2 rejects it)"
    world_open = [r for r in rules if {"CidrIp": "0.0.0.0/0"} in r.get("IpRanges", [])]
    ssh = {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    assert world_open == [ssh], "only Ray's own SSH rule may be open to the internet"


def test_every_aws_node_has_an_instance_profile_with_bucket_access():
    config = load("aws.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["node_config"]["IamInstanceProfile"]["Name"]
    workers = {t["node_config"]["IamInstanceProfile"]["Name"] for t in _workers(config).values()}
    assert (head, workers) == ("mimray-head", {"mimray-worker"})
    script = (CLUSTER / "aws-iam.sh").read_text()
    assert "for name in head worker" in script and "role=mimray-$name" in script
    for name in ("head", "worker"):
        policy = json.loads((CLUSTER / "iam" / f"aws-{name}-policy.json").read_text())
        allowed = {
            action: statement["Resource"]
            for statement in policy["Statement"]
            for action in _as_list(statement["Action"])
        }
        assert allowed["s3:PutObject"] == allowed["s3:GetObject"] == "arn:aws:s3:::BUCKET/*"
        assert "ecr:BatchGetImage" in allowed  # pulls mimray's image
        if name == "head":
            # launching a worker with its profile needs PassRole on the worker's role
            assert allowed["iam:PassRole"].endswith(":role/mimray-worker")
            assert "ec2:RunInstances" in allowed and "ssm:GetParameters" in allowed
        else:
            assert not {a for a in allowed if a.startswith(("ec2:", "iam:"))}


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def test_every_gcp_worker_runs_as_the_worker_service_account():
    config = load("gcp.yaml")
    for name, node_type in _workers(config).items():
        (account,) = node_type["node_config"]["serviceAccounts"]
        assert account["email"].startswith("mimray-worker@"), name
        assert "https://www.googleapis.com/auth/cloud-platform" in account["scopes"]


def test_gcp_head_runs_as_mimray_head_which_the_readme_sets_up_before_ray_up():
    """Ray's GCP bootstrap puts its own ray-autoscaler-sa-v1 (no Artifact Registry read, made
    during the first `ray up`) into `head_node`; `ray up` lays the head type's node_config over
    it (commands.py, read in Ray 2.60), so the account named here is the one the head runs as."""
    config = load("gcp.yaml")
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    accounts = head.get("serviceAccounts", [{"email": "ray-autoscaler-sa-v1 (Ray's own)"}])
    assert [a["email"] for a in accounts] == ["mimray-head@PROJECT_ID.iam.gserviceaccount.com"]
    readme = (CLUSTER / "README.md").read_text()
    gcp = readme[readme.index("## GCP details") :]
    steps = [
        "gcloud iam service-accounts create mimray-head",
        "--role roles/compute.instanceAdmin.v1",
        "--role roles/iam.serviceAccountUser",
        "--role roles/artifactregistry.reader",
        "docker push",
        "ray up -y cluster/gcp.yaml",
    ]
    _assert_in_order(gcp, steps)
    # The worker account gets no GCS role: mimray's storage reaches GCS through s3:// only.
    assert "roles/storage" not in gcp.split("ray up -y cluster/gcp.yaml")[0]


def test_aws_readme_runs_the_one_time_setup_before_ray_up():
    readme = (CLUSTER / "README.md").read_text()
    aws = readme[readme.index("## 8 spot GPUs on AWS tonight") : readme.index("Watch it:")]
    steps = ["aws s3 mb", "cluster/aws-iam.sh BUCKET", "docker push", "s/ACCOUNT_ID/", "ray up"]
    _assert_in_order(aws, steps)


def _assert_in_order(text: str, steps: list[str]) -> None:
    positions = {step: text.find(step) for step in steps}
    assert -1 not in positions.values(), positions
    assert list(positions.values()) == sorted(positions.values()), positions


def _driver_needed() -> int:
    """The NVIDIA driver the CUDA of torch's wheel needs (CUDA 13: 580, CUDA 12: 525)."""
    import torch

    assert torch.version.cuda, "a CPU-only torch would not use the GPUs"
    return {12: 525, 13: 580}[int(torch.version.cuda.split(".")[0])]


def test_nodes_boot_a_current_gpu_image_not_rays_old_default():
    from ray.autoscaler._private.aws.config import DEFAULT_AMI

    aws = load("aws.yaml")
    for name, node_type in aws["available_node_types"].items():
        image = node_type["node_config"]["ImageId"]
        assert image not in DEFAULT_AMI.values(), name
        # AWS's public SSM parameter for the current Base OSS NVIDIA-driver DLAMI, or a pinned id
        assert image.startswith(
            "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-"
        ) or re.fullmatch(r"ami-[0-9a-f]{8,17}", image), name
    gcp = load("gcp.yaml")
    for name, node_type in gcp["available_node_types"].items():
        (disk,) = node_type["node_config"]["disks"]
        image = disk["initializeParams"]["sourceImage"]
        assert image.startswith("projects/deeplearning-platform-release/"), name
        driver = re.search(r"nvidia-(\d+)", image)
        assert driver and int(driver.group(1)) >= _driver_needed(), f"{name}: {image}"


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_nodes_run_mimrays_own_image_and_install_nothing_at_start(name):
    import ray

    config = load(name)
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in dockerfile
    assert config["docker"]["image"].endswith(f"/mimray:ray{ray.__version__}-py311-gpu")
    commands = " ".join(
        config.get(key) and " ".join(config[key]) or ""
        for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
    )
    assert "pip install" not in commands
    assert not config.get("file_mounts")


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_gpu_nodes_wait_for_the_driver_before_docker_starts(name):
    config = load(name)
    for type_name, node_type in _workers(config).items():
        commands = node_type.get("initialization_commands", config["initialization_commands"])
        waits = [c for c in commands if "nvidia-smi" in c and "until" in c]
        if node_type["resources"].get("GPU"):
            assert waits, f"{type_name}: starts Docker without waiting for the NVIDIA driver"
        else:
            assert not waits, f"{type_name}: has no GPU, waiting for nvidia-smi would hang"
    assert not [c for c in config["initialization_commands"] if "nvidia-smi" in c]


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_prometheus_on_the_host_sees_rays_discovery_file(name):
    config = load(name)
    assert "-v /tmp/ray:/tmp/ray" in config["docker"]["run_options"]
    prometheus = yaml.safe_load((CLUSTER.parent / "dashboards" / "prometheus.yml").read_text())
    files = [
        f
        for job in prometheus["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for f in sd["files"]
    ]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in files
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("--metrics-export-port=8080" in c for c in start), key


@pytest.mark.parametrize(("name", "cloud"), [("aws.yaml", "aws"), ("gcp.yaml", "gcp")])
def test_spot_watcher_is_started_and_no_hook_autoscaler_v2_ignores(name, cloud):
    config = load(name)
    workers = config["worker_start_ray_commands"]
    assert any(f"python -m orchestrator.cluster.spot_watch {cloud}" in c for c in workers)
    # `ray up` starts autoscaler v2, which never reads v1's scorer hook: none may be promised.
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTOSCALER_UTILIZATION_SCORER" not in head


# What mimray asks per Train worker and per trial driver on these clusters.
PIN_ON_DEMAND = {"on_demand": 0.01}
DRIVER = {"CPU": 0.01, "on_demand": 0.01}


def _gpu_type(config: dict, size: str, spot: bool) -> dict:
    (node_type,) = [
        t
        for k, t in _workers(config).items()
        if t["resources"].get(size) and ("on_demand" not in t["resources"]) == spot
    ]
    return node_type


def _worker_bundle(size: str, pinned: bool = False) -> dict[str, float]:
    scaling = ScalingSpec()
    bundle = {"CPU": scaling.cpus_per_worker, "GPU": scaling.gpus_per_worker, size: 1}
    return {**bundle, **(PIN_ON_DEMAND if pinned else {})}


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
@pytest.mark.parametrize("size", ["gpu_1x", "gpu_8x"])
@pytest.mark.parametrize("pinned", [False, True])
def test_resources_add_up_for_a_full_node_of_workers(name, size, pinned):
    config = load(name)
    node = _gpu_type(config, size, spot=not pinned)
    gpus = int(node["resources"]["GPU"])
    workers = [_worker_bundle(size, pinned)] * gpus
    # Every GPU of the node takes one worker, and one worker more does not fit (Ray's packing).
    assert get_bin_pack_residual([node["resources"]], workers)[0] == []
    assert get_bin_pack_residual([node["resources"]], [*workers, _worker_bundle(size)])[0]
    # CPU left beside the workers for Ray Data (its budget excludes what workers reserve).
    assert node["resources"]["CPU"] - gpus * ScalingSpec().cpus_per_worker >= 1


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_trial_drivers_fit_on_on_demand_workers_only(name):
    config = load(name)
    for type_name, node_type in config["available_node_types"].items():
        unfit = get_bin_pack_residual([node_type["resources"]], [DRIVER])[0]
        # Not on spot (no marker), not on the head (CPU: 0): on cpu.on_demand / on-demand GPUs.
        fits = "on_demand" in node_type["resources"] and node_type["resources"]["CPU"] > 0
        assert bool(unfit) == (not fits), type_name
    # And eight pinned workers plus their drivers fit the on-demand marker of one 8-GPU node.
    on_demand = _gpu_type(config, "gpu_8x", spot=False)
    demands = [_worker_bundle("gpu_8x", pinned=True)] * 8 + [DRIVER] * 8
    assert not get_bin_pack_residual([on_demand["resources"]], demands)[0]


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
