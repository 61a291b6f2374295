"""`ray up cluster/aws.yaml` as far as it talks to AWS, against moto's IAM, EC2, SSM and STS.

A user with an empty account runs `cluster/aws-iam.sh` (the AWS CLI, pointed at moto by
AWS_ENDPOINT_URL), then `ray up`, which runs Ray's own AWS bootstrap (`bootstrap_aws`: key pair,
subnets, security group, profile check) and launches the head through Ray's AWS node provider;
the head's autoscaler later launches workers through the same provider. Here both run on
cluster/aws.yaml, one node of every type, and the test reads back what EC2 recorded.

Ray's private AWS modules are imported on purpose: they are the engine under test.

moto keeps a `resolve:ssm:` ImageId as given and does not check the EC2 Spot service-linked
role, so the test checks those itself: the parameter the nodes name is the one AWS documents
for the DLAMI and resolves in SSM to an image EC2 has, and the role exists after the script.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer
from moto.ssm.models import Parameter, ParameterDict, ssm_backends

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
REGION = "us-west-2"  # aws.yaml's region
BUCKET = "mimray-launch-test"
# The AMI aws.yaml means, by the name AWS's DLAMI release notes give it.
DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)"


def documented_dlami_parameter(ami_name: str, architecture: str = "x86_64") -> str:
    """AWS's rule ("Finding the ID of a DLAMI", DLAMI developer guide): the parameter is
    /aws/service/deeplearning/ami/$architecture/$ami_type/latest/ami-id, where ami_type is the
    DLAMI's name without the words "deep", "learning" and "ami", lower case, dash-separated."""
    words = re.findall(r"[a-z0-9.]+", ami_name.lower())
    ami_type = "-".join(w for w in words if w not in {"deep", "learning", "ami"})
    return f"/aws/service/deeplearning/ami/{architecture}/{ami_type}/latest/ami-id"


def test_the_documented_rule_gives_the_published_parameter_names():
    # Two names AWS publishes with their parameters (DLAMI release notes).
    assert documented_dlami_parameter(DLAMI_NAME) == (
        "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
    )
    assert documented_dlami_parameter(
        "Deep Learning ARM64 Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)", "arm64"
    ).endswith("/arm64/arm64-base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id")


def _forget_cached_clients() -> None:
    """Ray caches its boto clients per (service, region) and boto3's default session caches
    the credentials it first found: neither may outlive a server or a change of identity."""
    from ray.autoscaler._private.aws import utils as ray_aws_utils

    ray_aws_utils.client_cache.cache_clear()
    ray_aws_utils.resource_cache.cache_clear()
    boto3.DEFAULT_SESSION = None


@pytest.fixture(scope="module")
def aws_account(tmp_path_factory):
    """An empty AWS account on moto (127.0.0.1, in this process, so the test can publish AWS's
    own SSM parameter) after the user ran cluster/aws-iam.sh in it, twice; the environment
    points the AWS CLI, boto3 and Ray at it; HOME is a temporary folder for Ray's SSH key."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", REGION)
        env.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        # The AWS CLI from this venv first on PATH, as `pip install awscli` puts it.
        env.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        _forget_cached_clients()
        try:
            # AWS publishes the DLAMI's parameter in every region; moto publishes none: put it
            # there, under the name AWS's documented rule gives, naming an image EC2 has.
            ec2 = boto3.client("ec2", region_name=REGION)
            some_image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
            publish_public_parameter(documented_dlami_parameter(DLAMI_NAME), some_image)
            first = run_aws_iam_script()
            assert run_aws_iam_script() == first  # a second run creates nothing twice
            yield endpoint
        finally:
            _forget_cached_clients()
            reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
            urllib.request.urlopen(reset, timeout=10).read()
            server.stop()


def publish_public_parameter(name: str, value: str) -> None:
    """Put one of AWS's own public parameters into moto's SSM. Its API refuses names under
    /aws (as AWS does for accounts), so this goes in the way moto seeds its own."""
    parameters: ParameterDict = ssm_backends[DEFAULT_ACCOUNT_ID][REGION]._parameters
    super(ParameterDict, parameters).__getitem__(name).append(
        Parameter(
            account_id=DEFAULT_ACCOUNT_ID,
            name=name,
            value=value,
            parameter_type="String",
            description=None,
            allowed_pattern=None,
            keyid=None,
            last_modified_date=datetime.datetime.now(datetime.timezone.utc),
            version=1,
            data_type="aws:ec2:image",
        )
    )


def run_aws_iam_script() -> str:
    result = subprocess.run(
        ["bash", str(CLUSTER / "aws-iam.sh"), BUCKET],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def bootstrapped(config: dict) -> dict:
    """What `ray up` makes of the YAML before launching: Ray's defaults, then Ray's AWS
    bootstrap (key pair, subnets, security group, the head's profile)."""
    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.util import prepare_config

    return bootstrap_aws(prepare_config(copy.deepcopy(config)))


def launch(config: dict, node_type: str, kind: str):
    """One node of `node_type` through Ray's AWS node provider, as `ray up` launches the head
    (`commands.get_or_create_head_node`: Ray's `head_node` settings under the type's own
    node_config) and autoscaler v2 a worker (`NodeProviderAdapter`); the provider."""
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME, TAG_RAY_USER_NODE_TYPE

    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    spec = config["available_node_types"][node_type]
    tags = {
        TAG_RAY_NODE_KIND: kind,
        TAG_RAY_NODE_NAME: f"ray-{config['cluster_name']}-{kind}",
        TAG_RAY_USER_NODE_TYPE: node_type,
    }
    if kind == "head":
        node_config = {**copy.deepcopy(config.get("head_node", {})), **spec["node_config"]}
        provider.create_node(node_config, tags, 1)
    else:
        provider.create_node_with_resources_and_labels(
            spec["node_config"], tags, 1, spec["resources"], {}
        )
    return provider


def ray_up_launches(config: dict) -> None:
    """The head, then one worker of every type."""
    config = bootstrapped(config)
    launch(config, config["head_node_type"], "head")
    for name in config["available_node_types"]:
        if name != config["head_node_type"]:
            launch(config, name, "worker")


def launched_instances() -> dict[str, dict]:
    """Every live instance EC2 recorded, by the node type Ray tagged it with."""
    instances = {}
    for instance in live_instances():
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        instances[tags["ray-user-node-type"]] = instance
    return instances


def live_instances() -> list[dict]:
    ec2 = boto3.client("ec2", region_name=REGION)
    live = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    return [
        instance
        for reservation in ec2.describe_instances(Filters=live)["Reservations"]
        for instance in reservation["Instances"]
    ]


def launched_ids() -> set[str]:
    return {instance["InstanceId"] for instance in live_instances()}


def test_ray_up_on_an_empty_account_launches_every_node_type_as_configured(aws_account):
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    ec2 = boto3.client("ec2", region_name=REGION)
    ray_up_launches(config)

    types = config["available_node_types"]
    instances = launched_instances()
    assert set(instances) == set(types), "one instance of every node type"
    iam = boto3.client("iam", region_name=REGION)
    ssm = boto3.client("ssm", region_name=REGION)
    for name, instance in instances.items():
        head = name == config["head_node_type"]
        # The head launches workers; every worker writes checkpoints to the bucket.
        profile = "mimray-head" if head else "mimray-worker"
        arn = instance.get("IamInstanceProfile", {}).get("Arn", "")
        assert arn.endswith(f":instance-profile/{profile}"), f"{name}: {arn or 'no profile'}"
        (role,) = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]
        assert role["RoleName"] == profile, name
        # A type without the on_demand marker is a spot type, and only those launch as spot.
        spot = not head and "on_demand" not in types[name]["resources"]
        assert (instance.get("InstanceLifecycle") == "spot") == spot, name
        # The AMI: AWS's documented parameter, resolved by SSM to an image EC2 has.
        image = instance["ImageId"]
        assert image.startswith("resolve:ssm:"), f"{name}: {image}"
        parameter = image.removeprefix("resolve:ssm:")
        assert parameter == documented_dlami_parameter(DLAMI_NAME), name
        resolved = ssm.get_parameters(Names=[parameter])
        assert not resolved["InvalidParameters"], f"{name}: {parameter} does not resolve"
        (value,) = [p["Value"] for p in resolved["Parameters"]]
        assert ec2.describe_images(ImageIds=[value])["Images"], name
    assert [i for i in instances.values() if i.get("InstanceLifecycle") == "spot"]

    # EC2's Spot service-linked role, without which a fresh account refuses spot launches.
    spot_roles = iam.list_roles(PathPrefix="/aws-service-role/spot.amazonaws.com/")["Roles"]
    assert spot_roles, "no EC2 Spot service-linked role: spot launches are refused"
    (statement,) = spot_roles[0]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"]["Service"] in ("spot.amazonaws.com", ["spot.amazonaws.com"])


def _user_with_the_policy_of(role: str) -> tuple[str, str]:
    """Access keys of a user holding `role`'s policy as aws-iam.sh wrote it: moto checks a
    request's action against the caller's policies, not an instance profile's."""
    iam = boto3.client("iam", region_name=REGION)
    document = iam.get_role_policy(RoleName=role, PolicyName=role)["PolicyDocument"]
    user = f"{role}-as-user"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName=role, PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def _act_as(monkeypatch, keys: tuple[str, str]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys[1])
    _forget_cached_clients()


def _moto_checks_permissions(endpoint: str, on: bool) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0" if on else b"inf",
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    urllib.request.urlopen(request, timeout=10).read()


def test_the_heads_policy_lets_ray_launch_tag_and_end_a_spot_worker(aws_account, monkeypatch):
    """What the head's autoscaler does with its own credentials, checked by moto against the
    policy aws-iam.sh gave mimray-head (actions only: moto checks no iam:PassRole here)."""
    from ray.autoscaler.node_launch_exception import NodeLaunchException

    config = bootstrapped(yaml.safe_load((CLUSTER / "aws.yaml").read_text()))
    identities = {role: _user_with_the_policy_of(role) for role in ("mimray-head", "mimray-worker")}
    spot = "gpu_1x.spot"
    _moto_checks_permissions(aws_account, on=True)
    try:
        _act_as(monkeypatch, identities["mimray-head"])
        before = launched_ids()
        provider = launch(config, spot, "worker")
        # As the autoscaler does every round: list the nodes (the provider caches their tags).
        (new,) = set(provider.non_terminated_nodes({})) - before
        provider.set_node_tags(new, {"ray-node-status": "up-to-date"})
        provider.terminate_node(new)
        assert new not in launched_ids()
        # The check is live: the workers' policy may launch nothing.
        _act_as(monkeypatch, identities["mimray-worker"])
        with pytest.raises(NodeLaunchException, match="AccessDenied"):
            launch(config, spot, "worker")
    finally:
        _moto_checks_permissions(aws_account, on=False)
        _forget_cached_clients()
