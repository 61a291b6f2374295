"""The object-storage data plane against a real S3 API: moto's server mode on 127.0.0.1.

Every request here is real HTTP to a moto server started by the fixture below; nothing is
mocked. Ray is only started (through the shared `ray_session`) by tests that read datasets.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import moto_checks_credentials
from PIL import Image
from servers import refused_address

from workloads.data import Augmentation, build_dataset
from workloads.data.decode import decode_images, random_resized_crop_box
from workloads.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, read_manifest
from workloads.data.object_store import DataSourceError, S3Settings, check_reachable
from workloads.data.push import push_dataset
from workloads.data.sources.shapes import SHAPE_CLASSES, render_shapes
from workloads.data.sources.stored import (
    describe_stored as describe_remote,
)
from workloads.data.sources.stored import (
    sample_ids,
)

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

TINY_SHARD_BYTES = 40_000  # a 32x32 shapes PNG is ~3 KB: about a dozen images per shard


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_folder(root, classes: int, per_class: int, corrupt: set[str]) -> list[str]:
    """Class folders of small PNGs; files named in `corrupt` hold garbage bytes instead."""
    rng = np.random.default_rng(0)
    relative_paths = []
    for class_index in range(classes):
        class_folder = root / f"class_{class_index}"
        class_folder.mkdir(parents=True)
        for image_index in range(per_class):
            relative = f"class_{class_index}/img_{image_index:03d}.png"
            image = rng.integers(0, 256, size=(20, 28, 3), dtype=np.uint8)
            data = b"definitely not an image " * 8 if relative in corrupt else png_bytes(image)
            (root / relative).write_bytes(data)
            relative_paths.append(relative)
    return relative_paths


def rows_of(dataset) -> list[dict]:
    return sorted(dataset.take_all(), key=lambda row: row["id"])


# ---------------------------------------------------------------------------------------------
# Settings and pure functions (no server, no Ray)
# ---------------------------------------------------------------------------------------------


def test_settings_from_env_prefers_the_s3_specific_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:2")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    settings = S3Settings.from_env()
    assert settings.endpoint_url == "http://s3-only:2"
    assert settings.region == "us-east-1"
    assert (settings.access_key, settings.secret_key) == ("key", "s3cr3t-value")
    assert "s3cr3t-value" not in repr(settings)


def test_settings_fall_back_to_the_profile_credentials(monkeypatch, tmp_path):
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKPROFILE\naws_secret_access_key = x\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    settings = S3Settings.from_env()
    assert (settings.access_key, settings.secret_key) == ("AKPROFILE", "x")


def test_random_resized_crop_box_stays_inside_the_image():
    rng = np.random.default_rng(0)
    for width, height in [(32, 32), (500, 375), (40, 4), (1, 1), (3, 900)]:
        for _ in range(50):
            left, top, right, bottom = random_resized_crop_box(width, height, rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_decode_images_flags_undecodable_bytes():
    image = np.full((10, 12, 3), 200, dtype=np.uint8)
    encoded = [png_bytes(image), b"garbage", None, png_bytes(image)[:40]]
    images, ok = decode_images(encoded, 8, augmentation=None, rng=np.random.default_rng(0))
    assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8
    assert ok.tolist() == [True, False, False, False]
    assert (images[0] == 200).all() and not images[1:].any()


def test_manifest_round_trips_and_rejects_tampering():
    manifest = Manifest(3, ["a", "b"], [ShardInfo("part-00000.parquet", 3, 10, "ab" * 32)])
    assert Manifest.from_json(manifest.to_json()) == manifest
    document = json.loads(manifest.to_json())
    document["shards"][0]["sha256"] = "cd" * 32
    with pytest.raises(DataSourceError, match="digest"):
        Manifest.from_json(json.dumps(document))


# ---------------------------------------------------------------------------------------------
# Push (real S3 API, no Ray)
# ---------------------------------------------------------------------------------------------


def test_push_shapes_writes_shards_whose_checksums_match_the_objects(s3_client, bucket, tmp_path):
    calls = []
    manifest = push_dataset(
        "shapes",
        f"s3://{bucket}/shapes",
        num_images=64,
        shard_bytes=TINY_SHARD_BYTES,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert manifest.num_rows == 64 and len(manifest.shards) >= 2
    assert manifest.class_names == list(SHAPE_CLASSES)
    assert calls[-1] == (64, 64)

    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="shapes/")["Contents"]
    keys = sorted(item["Key"] for item in listed)
    assert keys == sorted([f"shapes/{s.path}" for s in manifest.shards] + ["shapes/manifest.json"])
    for shard in manifest.shards:
        data = s3_client.get_object(Bucket=bucket, Key=f"shapes/{shard.path}")["Body"].read()
        assert len(data) == shard.bytes
        assert hashlib.sha256(data).hexdigest() == shard.sha256
        assert pq.read_metadata(pa.BufferReader(data)).num_rows == shard.rows
    stored = s3_client.get_object(Bucket=bucket, Key=f"shapes/{MANIFEST_NAME}")["Body"].read()
    document = json.loads(stored)
    expected_digest = hashlib.sha256("".join(s.sha256 for s in manifest.shards).encode())
    assert document["digest"] == manifest.digest == expected_digest.hexdigest()
    assert read_manifest(f"s3://{bucket}/shapes") == manifest

    # The same data gives the same digest wherever it is written: it names the data.
    local = push_dataset(
        "shapes", str(tmp_path / "shapes"), num_images=64, shard_bytes=TINY_SHARD_BYTES
    )
    assert local.digest == manifest.digest


def test_failed_push_leaves_neither_manifest_nor_shards(s3_client, bucket):
    def fail_after_two_shards(done: int, total: int) -> None:
        if done > 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        push_dataset(
            "shapes",
            f"s3://{bucket}/broken",
            num_images=64,
            shard_bytes=TINY_SHARD_BYTES,
            progress=fail_after_two_shards,
        )
    listed = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    # pyarrow leaves an empty "broken/" directory marker when it deletes a folder's last file.
    assert [item["Key"] for item in listed if not item["Key"].endswith("/")] == []
    assert read_manifest(f"s3://{bucket}/broken") is None


# ---------------------------------------------------------------------------------------------
# Reading with Ray Data
# ---------------------------------------------------------------------------------------------


def test_pushed_shapes_read_back_exactly(ray_session, bucket):
    uri = f"s3://{bucket}/shapes"
    push_dataset("shapes", uri, num_images=64, shard_bytes=TINY_SHARD_BYTES)
    info = describe_remote(uri)
    assert (info.num_rows, info.class_names, info.kind) == (64, list(SHAPE_CLASSES), "shards")
    # Rows are pushed in a seeded random order, not index order, and a re-push is the same.
    first_ids = sample_ids(uri, 8)
    assert len(set(first_ids)) == 8 and all(i.startswith("shapes/train/") for i in first_ids)
    assert first_ids != [f"shapes/train/{index}" for index in range(8)]
    push_dataset(
        "shapes", f"s3://{bucket}/shapes-again", num_images=64, shard_bytes=TINY_SHARD_BYTES
    )
    assert sample_ids(f"s3://{bucket}/shapes-again", 8) == first_ids

    # Without augmentation at the pushed size, PNG is lossless: the very pixels come back.
    plain = build_dataset(uri, img_size=32).take_all()
    index = np.asarray([int(row["id"].rsplit("/", 1)[1]) for row in plain])
    expected_images, expected_labels = render_shapes(index, 32, seed=0)
    assert sorted(index.tolist()) == list(range(64))
    assert all(row["ok"] for row in plain)
    np.testing.assert_array_equal(np.stack([row["image"] for row in plain]), expected_images)
    assert [row["label"] for row in plain] == expected_labels.tolist()

    # Only the columns asked for, chosen while decoding: the same pixels, from a copy in
    # many small shards (one decode task each).
    pixels = {row["id"]: row["image"] for row in plain}
    many = f"s3://{bucket}/shapes-many"
    push_dataset("shapes", many, num_images=64, shard_bytes=TINY_SHARD_BYTES // 4)
    assert len(read_manifest(many).shards) > 4
    rows = build_dataset(many, img_size=32, keep=("image", "id")).take_all()
    assert all(sorted(row) == ["id", "image"] for row in rows) and len(rows) == 64
    assert {row["id"] for row in rows} == set(pixels)
    for row in rows:
        np.testing.assert_array_equal(row["image"], pixels[row["id"]])


def test_hugging_face_style_parquet_reads_with_its_labels(ray_session, s3_client, bucket, tmp_path):
    rng = np.random.default_rng(1)
    labels = [index % 3 for index in range(30)]
    images = [
        {"bytes": png_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)), "path": f"{i}.png"}
        for i in range(30)
    ]
    features = {"label": {"names": ["cat", "dog", "fox"], "_type": "ClassLabel"}}
    table = pa.table(
        {
            "image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "label": pa.array(labels, pa.int64()),
        }
    ).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    local_file = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, local_file)
    expected = {f"{i}.png": label for i, label in enumerate(labels)}

    # As uploaded by someone else: Parquet files under a prefix, no manifest.
    s3_client.upload_file(str(local_file), bucket, "hf/train-00000-of-00001.parquet")
    info = describe_remote(f"s3://{bucket}/hf")
    assert (info.num_rows, info.class_names, info.kind) == (30, ["cat", "dog", "fox"], "parquet")
    rows = rows_of(build_dataset(f"s3://{bucket}/hf", img_size=16, augmentation=Augmentation()))
    assert all(row["ok"] for row in rows)
    assert {row["id"]: row["label"] for row in rows} == expected

    # Pushed by mimray: bytes, labels and names (the struct's paths) are kept, and the class
    # names reach the manifest. Read with pyarrow: the Ray path for shards is tested above.
    manifest = push_dataset(str(local_file), f"s3://{bucket}/hf-pushed")
    assert (manifest.num_rows, manifest.class_names) == (30, ["cat", "dog", "fox"])
    shard = s3_client.get_object(Bucket=bucket, Key=f"hf-pushed/{manifest.shards[0].path}")
    pushed = pq.read_table(pa.BufferReader(shard["Body"].read())).to_pylist()
    assert {row["id"]: row["label"] for row in pushed} == expected
    # Each image keeps its own bytes (rows are in the push's seeded random order).
    assert {row["id"]: row["image"] for row in pushed} == {
        image["path"]: image["bytes"] for image in images
    }
    assert [row["id"] for row in pushed] != [image["path"] for image in images]


def test_corrupt_images_become_flagged_rows(ray_session, s3_client, bucket, tmp_path):
    corrupt = {"class_1/img_004.png", "class_3/img_009.png"}
    relative_paths = write_image_folder(tmp_path / "images", 4, 10, corrupt)
    manifest = push_dataset(str(tmp_path / "images"), f"s3://{bucket}/pushed")
    assert manifest.num_rows == 40

    rows = rows_of(build_dataset(f"s3://{bucket}/pushed", img_size=24, augmentation=Augmentation()))
    assert len(rows) == 40
    assert {row["image"].shape for row in rows} == {(24, 24, 3)}
    assert rows[0]["image"].dtype == np.uint8
    assert {row["id"] for row in rows if not row["ok"]} == corrupt
    assert not any(row["image"].any() for row in rows if not row["ok"])

    # The same folder uploaded file by file: labels come from the class folder names.
    for relative in relative_paths:
        s3_client.upload_file(str(tmp_path / "images" / relative), bucket, f"files/{relative}")
    info = describe_remote(f"s3://{bucket}/files")
    assert (info.num_rows, info.kind) == (40, "image-files")
    assert info.class_names == [f"class_{index}" for index in range(4)]
    rows = rows_of(build_dataset(f"s3://{bucket}/files", img_size=16))
    assert len(rows) == 40 and sum(not row["ok"] for row in rows) == 2
    assert all(row["label"] == int(row["id"].split("/")[0][-1]) for row in rows)


# ---------------------------------------------------------------------------------------------
# Clear errors within seconds
# ---------------------------------------------------------------------------------------------


def test_missing_bucket_is_named_within_seconds(s3_env):
    started = time.monotonic()
    with pytest.raises(DataSourceError, match="bucket 'no-such-bucket' does not exist"):
        build_dataset("s3://no-such-bucket/shapes", img_size=16)
    assert time.monotonic() - started < 30


def test_unreachable_endpoint_fails_within_seconds(s3_env, monkeypatch, tmp_path):
    with refused_address() as nothing_answers:
        monkeypatch.setenv("AWS_ENDPOINT_URL", nothing_answers)
        started = time.monotonic()
        with pytest.raises(DataSourceError, match="cannot reach the S3 endpoint") as raised:
            describe_remote("s3://some-bucket/data")
        assert "s3://some-bucket/data" in str(raised.value)
        with pytest.raises(DataSourceError, match="cannot reach"):
            push_dataset("shapes", "s3://some-bucket/data", num_images=4)
        assert time.monotonic() - started < 30


def test_empty_prefix_is_reported(bucket):
    with pytest.raises(DataSourceError, match="no objects under this prefix"):
        check_reachable(f"s3://{bucket}/nothing-here")


def test_wrong_credentials_are_rejected_within_seconds(s3_env, bucket):
    import boto3

    iam = boto3.client("iam", endpoint_url=s3_env, region_name="us-east-1")
    user = f"reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*"}]}
    policy["Statement"][0]["Resource"] = "*"
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    push_dataset("shapes", f"s3://{bucket}/shapes", num_images=4)

    def settings(access_key: str, secret_key: str) -> S3Settings:
        return S3Settings(s3_env, "us-east-1", access_key, secret_key)

    with moto_checks_credentials(s3_env):
        # The right keys still work, so what fails below is the keys and nothing else.
        check_reachable(
            f"s3://{bucket}/shapes", settings(key["AccessKeyId"], key["SecretAccessKey"])
        )
        started = time.monotonic()
        for wrong in (settings(key["AccessKeyId"], "wrong-secret"), settings("testing", "testing")):
            with pytest.raises(DataSourceError, match="access denied.*AWS_ACCESS_KEY_ID") as raised:
                describe_remote(f"s3://{bucket}/shapes", wrong)
            assert f"s3://{bucket}/shapes" in str(raised.value)
        assert time.monotonic() - started < 30
