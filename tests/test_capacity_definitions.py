"""Spot -> on-demand fallback comes from the engines that do it: Karpenter NodePools on EKS and
GKE ComputeClasses, selected by the RayCluster's groups. Checked against the CRDs' schemas
(tests/data/crds/, versions named there) and against what each engine does with them:

- Karpenter launches spot when a NodePool allows both capacity types and falls back to
  on-demand on insufficient capacity; it never launches a type the pool does not allow;
- GKE's autoscaler tries a ComputeClass's priorities in order.

So: the spot-tolerant GPU group must land in a pool/class that allows spot and on-demand
(spot first on GKE), and every group that advertises Ray's `on_demand` marker, the head and
the trial-driver group in one that allows on-demand only. Every Ray worker pod drains its
node as a preemption before Kubernetes stops it, and is protected from consolidation.
No cluster: reading the manifests and applying the overlay's RFC 6902 patches as kustomize does.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERAY = ROOT / "cluster" / "kuberay"
CRDS = Path(__file__).resolve().parent / "data" / "crds"
CAPACITY = "karpenter.sh/capacity-type"
NODEPOOL = "karpenter.sh/nodepool"
COMPUTE_CLASS = "cloud.google.com/compute-class"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def schema(file: str, kind: str) -> dict[str, Any]:
    return yaml.safe_load((CRDS / file).read_text())[kind]


def karpenter_cel_violations(obj: dict[str, Any]) -> list[str]:
    """The CEL rules of Karpenter 1.14.1's CRDs that the schema cannot say."""
    found = []
    spec = obj["spec"]
    if obj["kind"] == "NodePool":
        for req in spec["template"]["spec"]["requirements"]:
            if req["key"] == NODEPOOL or req["key"] == "kubernetes.io/hostname":
                found.append(f"requirement on restricted label {req['key']}")
            if req["operator"] == "In" and not req.get("values"):
                found.append(f"{req['key']}: In with no values")
        for label in spec["template"].get("metadata", {}).get("labels", {}):
            if label.split("/")[0].endswith("karpenter.sh"):
                found.append(f"template label {label} is restricted")
    if obj["kind"] == "EC2NodeClass":
        if ("role" in spec) == ("instanceProfile" in spec):
            found.append("exactly one of role and instanceProfile")
        terms = spec["amiSelectorTerms"]
        if any("alias" in t for t in terms) and len(terms) != 1:
            found.append("an alias AMI term must be the only term")
        if not any("alias" in t for t in terms) and "amiFamily" not in spec:
            found.append("amiFamily required without an alias")
    return found


def validate(obj: dict[str, Any]) -> list[str]:
    files = {
        "NodePool": "karpenter-v1.yaml",
        "EC2NodeClass": "karpenter-v1.yaml",
        "ComputeClass": "gke-computeclass-v1.yaml",
    }
    validator = jsonschema.Draft202012Validator(schema(files[obj["kind"]], obj["kind"]))
    found = [
        f"{obj['kind']} {'/'.join(map(str, e.path))}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
    if obj["kind"] != "ComputeClass":
        found += karpenter_cel_violations(obj)
    return found


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k folder` applies: its resources (a folder is its own
    kustomization) with its RFC 6902 patches applied to the targets they name."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (folder / resource).resolve()
        objects += kustomize(path) if path.is_dir() else documents(path)
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matches = [
            o
            for o in objects
            if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
        ]
        assert len(matches) == 1, f"patch target {target} matches {len(matches)} objects"
        patched = jsonpatch.apply_patch(matches[0], yaml.safe_load(patch["patch"]))
        objects[objects.index(matches[0])] = patched
    return objects


def groups(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Group name -> pod spec, the head included, of a RayCluster or RayJob."""
    spec = cluster["spec"].get("rayClusterSpec", cluster["spec"])
    pods = {"head": spec["headGroupSpec"]["template"]}
    pods.update({g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]})
    return pods


def advertises_on_demand(cluster: dict[str, Any], group: str) -> bool:
    spec = cluster["spec"].get("rayClusterSpec", cluster["spec"])
    if group == "head":
        return True  # the head is held to on-demand whatever it advertises
    entry = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == group)
    return "on_demand" in entry.get("rayStartParams", {}).get("resources", "")


def karpenter_capacity(pod: dict[str, Any], pools: dict[str, dict]) -> list[str]:
    """The capacity types Karpenter may launch for this pod: its NodePool's allowed types,
    narrowed by the pod's own capacity-type selector."""
    selector = pod["spec"].get("nodeSelector", {})
    pool = pools[selector[NODEPOOL]]
    allowed = next(
        r["values"]
        for r in pool["spec"]["template"]["spec"]["requirements"]
        if r["key"] == CAPACITY and r["operator"] == "In"
    )
    wanted = selector.get(CAPACITY)
    return [c for c in allowed if wanted in (None, c)]


def gke_capacity(pod: dict[str, Any], classes: dict[str, dict]) -> list[str]:
    """The capacity kinds GKE tries for this pod, in priority order (spot / on-demand)."""
    chosen = classes[pod["spec"]["nodeSelector"][COMPUTE_CLASS]]
    order = ["spot" if p.get("spot") else "on-demand" for p in chosen["spec"]["priorities"]]
    return list(dict.fromkeys(order))


def capacity_violations(cluster: dict, capacity_of) -> list[str]:  # noqa: ANN001
    found = []
    for group, pod in groups(cluster).items():
        kinds = capacity_of(pod)
        if advertises_on_demand(cluster, group):
            if kinds != ["on-demand"]:
                found.append(f"{group}: must be on-demand only, may get {kinds}")
        elif kinds != ["spot", "on-demand"]:
            found.append(f"{group}: should try spot first, then on-demand; gets {kinds}")
    return found


def eks() -> tuple[dict, dict[str, dict]]:
    objects = documents(KUBERAY / "karpenter.yaml")
    pools = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NodePool"}
    cluster = next(o for o in kustomize(KUBERAY) if o["kind"] == "RayCluster")
    return cluster, pools


def gke() -> tuple[dict, dict[str, dict]]:
    objects = kustomize(KUBERAY / "gke")
    classes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ComputeClass"}
    cluster = next(o for o in objects if o["kind"] == "RayCluster")
    return cluster, classes


def test_capacity_definitions_pass_their_crd_schemas():
    objects = documents(KUBERAY / "karpenter.yaml") + documents(
        KUBERAY / "gke" / "computeclasses.yaml"
    )
    assert {o["kind"] for o in objects} == {"NodePool", "EC2NodeClass", "ComputeClass"}
    for obj in objects:
        assert validate(obj) == [], obj["metadata"]["name"]
    pools = [o for o in objects if o["kind"] == "NodePool"]
    classes = {o["metadata"]["name"] for o in objects if o["kind"] == "EC2NodeClass"}
    assert {p["spec"]["template"]["spec"]["nodeClassRef"]["name"] for p in pools} <= classes


def test_eks_groups_fall_back_from_spot_through_karpenter_and_keep_drivers_on_demand():
    cluster, pools = eks()
    assert capacity_violations(cluster, lambda pod: karpenter_capacity(pod, pools)) == []
    gpu = pools[groups(cluster)["gpu-1x"]["spec"]["nodeSelector"][NODEPOOL]]
    # Only empty GPU nodes are consolidated: a busy one is never replaced to save money.
    assert gpu["spec"]["disruption"]["consolidationPolicy"] == "WhenEmpty"


def test_gke_overlay_selects_compute_classes_spot_first_for_the_spot_group():
    cluster, classes = gke()
    assert capacity_violations(cluster, lambda pod: gke_capacity(pod, classes)) == []
    for pod in groups(cluster).values():
        assert set(pod["spec"]["nodeSelector"]) == {COMPUTE_CLASS}  # no Karpenter label left
    account = next(o for o in kustomize(KUBERAY / "gke") if o["kind"] == "ServiceAccount")
    assert "iam.gke.io/gcp-service-account" in account["metadata"]["annotations"]


@pytest.mark.parametrize("manifest", ["raycluster.yaml", "rayjob.yaml"])
def test_every_ray_worker_pod_drains_as_a_preemption_and_resists_consolidation(manifest):
    cluster = documents(KUBERAY / manifest)[0]
    for group, pod in groups(cluster).items():
        annotations = pod["metadata"].get("annotations", {})
        assert annotations.get("karpenter.sh/do-not-disrupt") == "true", group
        assert annotations.get("cluster-autoscaler.kubernetes.io/safe-to-evict") == "false"
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["MIMRAY_NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        if group == "head":
            continue  # the head is on-demand and holds the GCS: nothing to drain to
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[:3] == ["python", "-m", "orchestrator.cluster.pod_drain"], group
        grace = int(command[command.index("--grace-seconds") + 1])
        # Kubernetes kills the container at terminationGracePeriodSeconds, preStop included.
        assert grace < pod["spec"]["terminationGracePeriodSeconds"], group


def _gpu_pool(objs: list[dict]) -> dict:
    return next(o for o in objs if o["metadata"]["name"] == "mimray-gpu")


def _capacity_req(pool: dict) -> dict:
    return next(r for r in pool["spec"]["template"]["spec"]["requirements"] if r["key"] == CAPACITY)


# Defects each check must catch: (what, break the Karpenter objects or the GKE ones).
SCHEMA_BREAKS = [
    (
        "misspelt consolidation policy",
        lambda objs: _gpu_pool(objs)["spec"]["disruption"].update(consolidationPolicy="WhenIdle"),
    ),
    (
        "unknown key in the pool template",
        lambda objs: _gpu_pool(objs)["spec"]["template"]["spec"].update(nodeSelector={"a": "b"}),
    ),
    (
        "requirement on karpenter.sh/nodepool",
        lambda objs: _gpu_pool(objs)["spec"]["template"]["spec"]["requirements"].append(
            {"key": NODEPOOL, "operator": "In", "values": ["x"]}
        ),
    ),
    (
        "node class with role and instance profile",
        lambda objs: next(o for o in objs if o["kind"] == "EC2NodeClass")["spec"].update(
            instanceProfile="p"
        ),
    ),
    (
        "compute class priority with an unknown field",
        lambda objs: next(o for o in objs if o["kind"] == "ComputeClass")["spec"]["priorities"][
            0
        ].update(preemptible=True),
    ),
]


@pytest.mark.parametrize(("what", "breaks"), SCHEMA_BREAKS, ids=[b[0] for b in SCHEMA_BREAKS])
def test_schema_check_catches(what, breaks):
    objects = copy.deepcopy(
        documents(KUBERAY / "karpenter.yaml") + documents(KUBERAY / "gke" / "computeclasses.yaml")
    )
    breaks(objects)
    assert any(validate(o) for o in objects), f"{what}: not caught"


def test_capacity_check_catches_a_spot_only_gpu_pool_and_a_driver_group_on_spot():
    cluster, pools = eks()
    spot_only = copy.deepcopy(pools)
    _capacity_req(spot_only["mimray-gpu"])["values"] = ["spot"]
    assert capacity_violations(cluster, lambda pod: karpenter_capacity(pod, spot_only))
    drivers_on_spot = copy.deepcopy(cluster)
    groups(drivers_on_spot)["cpu-on-demand"]["spec"]["nodeSelector"] = {NODEPOOL: "mimray-gpu"}
    assert capacity_violations(drivers_on_spot, lambda pod: karpenter_capacity(pod, pools))
    gke_cluster, classes = gke()
    on_demand_first = copy.deepcopy(classes)
    on_demand_first["mimray-gpu"]["spec"]["priorities"].reverse()
    assert capacity_violations(gke_cluster, lambda pod: gke_capacity(pod, on_demand_first))
