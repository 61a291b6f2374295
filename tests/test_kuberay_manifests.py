"""cluster/kuberay/: the rules KubeRay's admission and Kubernetes itself apply, checked offline.

`kuberay_violations` restates the parts of KubeRay's `ValidateRayClusterSpec` /
`ValidateRayJobSpec` (ray-operator/controllers/ray/utils/validation.go, v1.7) that these
manifests touch, and Kubernetes' rule for extended resources (a GPU request must equal its
limit); `mimray_violations` adds mimray's own rules (head on on-demand capacity, token auth,
no cloud keys in pods, the NetworkPolicy covering every pod). Each rule is shown to catch the
defect it guards by a broken variant below. No cluster: reading only.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

KUBERAY = Path(__file__).resolve().parent.parent / "cluster" / "kuberay"
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CAPACITY_LABEL = "karpenter.sh/capacity-type"
POD_LABEL = ("app.kubernetes.io/part-of", "mimray")
CLOUD_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((KUBERAY / name).read_text())


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def pod_templates(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    groups = [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
    return [("head", spec["headGroupSpec"]["template"]), *groups]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def kuberay_violations(manifest: dict[str, Any]) -> list[str]:
    """What KubeRay's validation (or the Kubernetes API) would reject in this manifest."""
    found = []
    name = manifest["metadata"]["name"]
    if not DNS1035.match(name):
        found.append(f"{manifest['kind']} name {name!r} is not a DNS-1035 label")
    spec = cluster_spec(manifest)
    head = spec["headGroupSpec"]
    head_env = {e["name"] for e in head["template"]["spec"]["containers"][0].get("env", [])}
    autoscaling = spec.get("enableInTreeAutoscaling", False)
    options = spec.get("autoscalerOptions") or {}
    # validation.go: "both .spec.autoscalerOptions.version and head Pod env var
    # RAY_enable_autoscaler_v2 are set, please only use the former"
    if autoscaling and options.get("version") and "RAY_enable_autoscaler_v2" in head_env:
        found.append("autoscalerOptions.version and head env RAY_enable_autoscaler_v2 both set")
    if options.get("idleTimeoutSeconds", 0) < 0:
        found.append("autoscalerOptions.idleTimeoutSeconds is negative")
    for group, template in pod_templates(spec):
        policy = template["spec"].get("restartPolicy", "")
        if autoscaling and options.get("version") == "v2" and policy not in ("", "Never"):
            found.append(f"{group}: restartPolicy must be Never or unset with autoscaler v2")
        if not template["spec"].get("containers"):
            found.append(f"{group}: no container")
        for container in template["spec"].get("containers", []):
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            for key in set(requests) | set(limits):
                # Extended resources may not be overcommitted: Kubernetes rejects the pod.
                if "/" in key and key in requests and requests[key] != limits.get(key):
                    found.append(f"{group}: {key} request {requests[key]} != limit")
    for group in spec["workerGroupSpecs"]:
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            found.append(f"{group['groupName']}: min/maxReplicas unset without autoscaling")
        inverted = low is not None and high is not None and low > high
        if (low or 0) < 0 or (high or 0) < 0 or inverted:
            found.append(f"{group['groupName']}: replicas {low}..{high}")
        params = group.get("rayStartParams", {})
        if group.get("resources") and any(
            params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")
        ):
            found.append(f"{group['groupName']}: resources in rayStartParams and resources")
        if "labels" in params:
            found.append(f"{group['groupName']}: rayStartParams labels (use the labels field)")
        if not DNS1123.match(group["groupName"]):
            found.append(f"{group['groupName']}: group name is not a DNS-1123 label")
    auth = spec.get("authOptions") or {}
    if auth.get("mode") == "token":
        if not spec.get("rayVersion"):
            found.append("authOptions.mode token without rayVersion")
        elif _version(spec["rayVersion"]) < (2, 52, 0):
            found.append("authOptions.mode token needs rayVersion >= 2.52.0")
    if manifest["kind"] == "RayJob":
        job = manifest["spec"]
        if job.get("ttlSecondsAfterFinished", 0) < 0 or job.get("backoffLimit", 0) < 0:
            found.append("RayJob ttlSecondsAfterFinished/backoffLimit negative")
        if job.get("suspend") and not job.get("shutdownAfterJobFinishes"):
            found.append("RayJob suspended without shutdownAfterJobFinishes")
    return found


def _on_demand_only(template: dict[str, Any]) -> bool:
    spec = template["spec"]
    if spec.get("nodeSelector", {}).get(CAPACITY_LABEL) == "on-demand":
        return True
    terms = (
        spec.get("affinity", {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", {})
        .get("nodeSelectorTerms", [])
    )
    return bool(terms) and all(
        any(
            e["key"] == CAPACITY_LABEL and e["operator"] == "In" and e["values"] == ["on-demand"]
            for e in term.get("matchExpressions", [])
        )
        for term in terms
    )


def _advertised(group: dict[str, Any]) -> dict[str, float]:
    text = group.get("rayStartParams", {}).get("resources", "{}")
    return yaml.safe_load(yaml.safe_load(text)) if text.startswith('"') else yaml.safe_load(text)


def mimray_violations(manifest: dict[str, Any], policy: dict[str, Any]) -> list[str]:
    """mimray's own rules for a Ray cluster it runs sweeps on."""
    found = []
    spec = cluster_spec(manifest)
    head = spec["headGroupSpec"]["template"]
    if not _on_demand_only(head):
        found.append("head may land on spot capacity")
    if (spec.get("authOptions") or {}).get("mode") != "token":
        found.append("Jobs API without token auth (authOptions.mode: token)")
    if spec["headGroupSpec"].get("serviceType", "ClusterIP") != "ClusterIP":
        found.append("head Service is exposed beyond the cluster")
    if "autoscalerOptions" not in spec or spec["autoscalerOptions"].get("version") != "v2":
        found.append("autoscaler v2 not chosen through autoscalerOptions.version")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for group, template in pod_templates(spec):
        labels = template.get("metadata", {}).get("labels", {})
        if not selector.items() <= labels.items():
            found.append(f"{group}: not covered by the NetworkPolicy ({selector})")
        if not template["spec"].get("serviceAccountName"):
            found.append(f"{group}: no serviceAccountName (bucket access by workload identity)")
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if env["name"] in CLOUD_KEYS:
                    found.append(f"{group}: cloud key {env['name']} in the pod environment")
                elif "value" in env and re.search(r"(?i)token|secret|password", env["name"]):
                    found.append(f"{group}: {env['name']} written inline")
    for group in spec["workerGroupSpecs"]:
        advertised = _advertised(group)
        on_demand_pod = _on_demand_only(group["template"])
        if "on_demand" in advertised and not on_demand_pod:
            found.append(f"{group['groupName']}: advertises on_demand but may run on spot")
        if group.get("minReplicas", 0) != 0:
            found.append(f"{group['groupName']}: does not scale from zero")
    return found


def network_policy_violations(policy: dict[str, Any]) -> list[str]:
    found = []
    spec = policy["spec"]
    if "Ingress" not in spec.get("policyTypes", []):
        found.append("policy does not restrict ingress")
    for rule in spec.get("ingress", []):
        if not rule.get("from"):
            found.append("an ingress rule admits every source")
        for source in rule.get("from", []):
            if "ipBlock" in source and source["ipBlock"].get("cidr") in ("0.0.0.0/0", "::/0"):
                found.append("an ingress rule admits any address")
            foreign = "namespaceSelector" in source and "podSelector" not in source
            if foreign and not rule.get("ports"):
                found.append("another namespace may reach every port")
    return found


MANIFESTS = ["raycluster.yaml", "rayjob.yaml"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_passes_kuberay_and_mimray_rules(name):
    manifest = load(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert kuberay_violations(manifest) == []
    assert mimray_violations(manifest, load("networkpolicy.yaml")) == []
    spec = cluster_spec(manifest)
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups, "no GPU worker group"


def test_network_policy_admits_only_the_cluster_operator_and_prometheus():
    policy = load("networkpolicy.yaml")
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    assert network_policy_violations(policy) == []
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}
    assert ports == {8265, 8080}


def test_service_account_carries_a_role_not_keys():
    account = load("serviceaccount.yaml")
    assert account["kind"] == "ServiceAccount" and account["metadata"]["name"] == "mimray-ray"
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    for name in MANIFESTS:
        spec = cluster_spec(load(name))
        assert {t["spec"]["serviceAccountName"] for _, t in pod_templates(spec)} == {"mimray-ray"}


def test_rayjob_keeps_checkpoints_in_object_storage_and_survives_losses():
    job = load("rayjob.yaml")["spec"]
    sets = dict(item.split("=", 1) for item in re.findall(r"--set (\S+)", job["entrypoint"]))
    assert sets["storage.path"].startswith("s3://")
    assert int(sets["train.max_failures"]) >= 10
    # Trial drivers stay off spot by mimray's own rule: the cluster advertises `on_demand`
    # from the start (the head does, before any worker group has scaled up).
    assert "on_demand" in _advertised(cluster_spec(load("rayjob.yaml"))["headGroupSpec"])
    assert job["shutdownAfterJobFinishes"] is True


def test_rayjob_entrypoint_is_a_valid_sweep(workdir):
    from click.testing import CliRunner

    from orchestrator.cli.main import main

    entrypoint = load("rayjob.yaml")["spec"]["entrypoint"].split()
    assert entrypoint[:4] == ["python", "-m", "orchestrator", "sweep"]
    result = CliRunner().invoke(main, [*entrypoint[3:], "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "1 gpu_1x" in result.output


def _head_env(m: dict) -> list:
    return cluster_spec(m)["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]


def _gpu_resources(m: dict) -> dict:
    group = next(
        g
        for g in cluster_spec(m)["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    )
    return group["template"]["spec"]["containers"][0]["resources"]


# Each breakage is a defect the rules must catch: (what, how to break a manifest, checker).
BREAKAGES: list[tuple[str, Callable[[dict], None], str]] = [
    (
        "autoscaler v2 env var beside autoscalerOptions.version",
        lambda m: _head_env(m).append({"name": "RAY_enable_autoscaler_v2", "value": "1"}),
        "kuberay",
    ),
    (
        "GPU request below its limit",
        lambda m: (
            _gpu_resources(m)["requests"].update({"nvidia.com/gpu": "1"})
            or _gpu_resources(m)["limits"].update({"nvidia.com/gpu": "2"})
        ),
        "kuberay",
    ),
    (
        "restartPolicy Always under autoscaler v2",
        lambda m: cluster_spec(m)["workerGroupSpecs"][0]["template"]["spec"].update(
            restartPolicy="Always"
        ),
        "kuberay",
    ),
    (
        "token auth on an old Ray",
        lambda m: cluster_spec(m).update(rayVersion="2.40.0"),
        "kuberay",
    ),
    (
        "head without an on-demand node selector",
        lambda m: cluster_spec(m)["headGroupSpec"]["template"]["spec"].pop("nodeSelector"),
        "mimray",
    ),
    (
        "no token auth",
        lambda m: cluster_spec(m).pop("authOptions"),
        "mimray",
    ),
    (
        "AWS keys in the pod environment",
        lambda m: _head_env(m).append(
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s"}}}
        ),
        "mimray",
    ),
    (
        "a pod outside the NetworkPolicy",
        lambda m: cluster_spec(m)["workerGroupSpecs"][-1]["template"].pop("metadata"),
        "mimray",
    ),
]


@pytest.mark.parametrize("name", MANIFESTS)
@pytest.mark.parametrize(("what", "breaks", "checker"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_each_rule_catches_its_defect(name, what, breaks, checker):
    manifest = copy.deepcopy(load(name))
    breaks(manifest)
    policy = load("networkpolicy.yaml")
    found = (
        kuberay_violations(manifest)
        if checker == "kuberay"
        else mimray_violations(manifest, policy)
    )
    assert found, f"{what}: not caught"


@pytest.mark.parametrize(
    "rule",
    [
        {"from": []},
        {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]},
        {"from": [{"namespaceSelector": {}}]},
    ],
)
def test_network_policy_check_catches_an_open_rule(rule):
    policy = copy.deepcopy(load("networkpolicy.yaml"))
    policy["spec"]["ingress"].append(rule)
    assert network_policy_violations(policy)
