"""The region mimray's S3 filesystems sign with: the bucket's own where its store says it, else
the configured one, the boto3 profile's included. On moto's S3 server over HTTP."""

from __future__ import annotations

import uuid

import boto3
import pyarrow.fs
import pytest
from servers import refused_address

from workloads.data.object_store import S3Settings, filesystem_for


@pytest.fixture
def profile_only(monkeypatch, tmp_path):
    """An AWS profile that names a region, and no region in the environment."""
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-central-1\n")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))


def test_the_profiles_region_is_used_when_the_environment_names_none(profile_only):
    assert S3Settings.from_env().region == "eu-central-1"


def test_the_environment_wins_over_the_profile(profile_only, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert S3Settings.from_env().region == "ap-south-1"
    monkeypatch.setenv("AWS_REGION", "sa-east-1")
    assert S3Settings.from_env().region == "sa-east-1"


def test_a_bucket_in_another_region_is_read_and_written_in_its_own(s3_env):
    """The configured region is us-east-1 (s3_env); the bucket lives in eu-west-1."""
    name = f"mimray-eu-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_env, region_name="eu-west-1")
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert S3Settings.from_env().region == "us-east-1"

    filesystem, root = filesystem_for(f"s3://{name}/runs")
    assert isinstance(filesystem, pyarrow.fs.S3FileSystem)
    assert filesystem.region == "eu-west-1"
    with filesystem.open_output_stream(f"{root}/hello.txt") as out:
        out.write(b"hello")
    with filesystem.open_input_stream(f"{root}/hello.txt") as stream:
        assert stream.read() == b"hello"


def test_a_bucket_in_the_configured_region_keeps_it(s3_env, bucket):
    filesystem, _ = filesystem_for(f"s3://{bucket}/x")
    assert filesystem.region == "us-east-1"


def test_an_unreachable_store_falls_back_to_the_configured_region():
    with refused_address() as address:
        settings = S3Settings(address, "eu-north-1", "key", "secret")
        filesystem, _ = filesystem_for(f"s3://mimray-{uuid.uuid4().hex[:8]}/x", settings)
    assert filesystem.region == "eu-north-1"
