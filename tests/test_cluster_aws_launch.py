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


@pytest.fixture
def moto_aws(tmp_path, monkeypatch):
    """moto on 127.0.0.1 (in this process, so the test can publish AWS's own SSM parameter),
    and the standard AWS environment pointing at it; HOME in tmp_path for Ray's SSH key."""
    from ray.autoscaler._private.aws import utils as ray_aws_utils

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("HOME", str(tmp_path))
    # The AWS CLI from this venv first on PATH, as `pip install awscli` puts it.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # Ray caches its boto clients per (service, region): none may outlive this server.
    ray_aws_utils.client_cache.cache_clear()
    ray_aws_utils.resource_cache.cache_clear()
    try:
        yield endpoint
    finally:
        ray_aws_utils.client_cache.cache_clear()
        ray_aws_utils.resource_cache.cache_clear()
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
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


def ray_up_launches(config: dict) -> None:
    """What `ray up` and then the head's autoscaler (v2) ask of AWS: bootstrap, the head
    (`commands.get_or_create_head_node`), one worker of every type (v2's NodeProviderAdapter)."""
    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.util import prepare_config
    from ray.autoscaler.tags import (
        NODE_KIND_HEAD,
        NODE_KIND_WORKER,
        TAG_RAY_NODE_KIND,
        TAG_RAY_NODE_NAME,
        TAG_RAY_USER_NODE_TYPE,
    )

    config = bootstrap_aws(prepare_config(copy.deepcopy(config)))
    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    head_type = config["head_node_type"]
    head_node = config["available_node_types"][head_type]
    head_config = {**copy.deepcopy(config.get("head_node", {})), **head_node["node_config"]}
    provider.create_node(
        head_config,
        {
            TAG_RAY_NODE_KIND: NODE_KIND_HEAD,
            TAG_RAY_NODE_NAME: f"ray-{config['cluster_name']}-head",
            TAG_RAY_USER_NODE_TYPE: head_type,
        },
        1,
    )
    for name, node_type in config["available_node_types"].items():
        if name == head_type:
            continue
        provider.create_node_with_resources_and_labels(
            node_type["node_config"],
            {
                TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
                TAG_RAY_NODE_NAME: f"ray-{config['cluster_name']}-worker",
                TAG_RAY_USER_NODE_TYPE: name,
            },
            1,
            node_type["resources"],
            {},
        )


def launched_instances() -> dict[str, dict]:
    """Every instance EC2 recorded, by the node type Ray tagged it with."""
    ec2 = boto3.client("ec2", region_name=REGION)
    instances = {}
    for reservation in ec2.describe_instances()["Reservations"]:
        for instance in reservation["Instances"]:
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            instances[tags["ray-user-node-type"]] = instance
    return instances


def test_ray_up_on_an_empty_account_launches_every_node_type_as_configured(moto_aws):
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    ec2 = boto3.client("ec2", region_name=REGION)
    # AWS publishes the DLAMI's parameter in every region; moto publishes none: put it there,
    # under the name AWS's documented rule gives, pointing at an image this EC2 has.
    some_image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    publish_public_parameter(documented_dlami_parameter(DLAMI_NAME), some_image)

    first = run_aws_iam_script()
    assert run_aws_iam_script() == first  # a second run creates nothing twice and succeeds

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
