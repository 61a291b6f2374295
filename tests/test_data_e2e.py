"""Pretraining from object storage, end to end: moto S3 server, real Ray, real MLflow."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from broken_data import write_folder_with_empty_images
from click.testing import CliRunner
from conftest import TINY_MODEL, moto_checks_credentials
from interruption import actors
from PIL import Image
from waiting import wait_until

from orchestrator.cli.main import main
from orchestrator.config import load_spec
from orchestrator.pretrain.launch import run_pretrain
from orchestrator.tracking import Tracker, resolve_tracking_uri
from workloads.data.manifest import read_manifest
from workloads.data.sources.shapes import render_shapes

pytestmark = pytest.mark.slow

TINY = [
    *TINY_MODEL,
    "train.epochs=1",
    "train.max_failures=0",
    "scaling.num_workers=2",
    "tracking.experiment=s3",
    "tracking.system_metrics=false",
]


def upload_parquet(
    s3_client, bucket: str, key: str, count: int, corrupt: int, image_column: str = "image"
) -> None:
    """A Hugging Face-style Parquet file (image struct {bytes, path}, label), `corrupt` of
    whose images are garbage bytes."""
    images, labels = render_shapes(np.arange(count), 32, seed=0)
    records = []
    for index, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        data = b"not an image" if index < corrupt else buffer.getvalue()
        records.append({"bytes": data, "path": f"{index}.png"})
    table = pa.table({image_column: records, "label": pa.array(labels, pa.int64())})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    s3_client.put_object(Bucket=bucket, Key=key, Body=sink.getvalue())


def test_push_inspect_then_pretrain_from_s3(ray_session, workdir, bucket):
    uri = f"s3://{bucket}/shapes"
    pushed = CliRunner().invoke(
        main, ["data", "push", "shapes", uri, "--num-images", "64", "--shard-mb", "0.05"]
    )
    assert pushed.exit_code == 0, pushed.output
    manifest = read_manifest(uri)
    assert manifest.num_rows == 64 and len(manifest.shards) >= 2
    inspected = CliRunner().invoke(main, ["data", "inspect", uri])
    assert inspected.exit_code == 0, inspected.output
    assert manifest.digest in inspected.output
    # The table's own rows, not a "64" that could sit inside the digest or a sample id.
    cells = {
        parts[0]: parts[1]
        for line in inspected.output.splitlines()
        if len(parts := [c.strip() for c in line.strip("│┃ ").split("│")]) == 2
    }
    assert cells["rows"] == "64"
    assert cells["digest"] == manifest.digest

    spec = load_spec(None, [*TINY, f"data.source={uri}", "train.batch_size=32"])
    result = run_pretrain(spec, name="from-s3")
    tracker = Tracker(resolve_tracking_uri(), "s3")
    # Every image streamed exactly once in the epoch, counted by the workers themselves.
    assert tracker.metric_history(result.run_id, "data/images_seen") == [(1, 64.0)]
    assert tracker.metric_history(result.run_id, "data/skipped") == [(1, 0.0)]
    inputs = tracker.client.get_run(result.run_id).inputs.dataset_inputs
    assert [(i.dataset.digest, i.dataset.source_type) for i in inputs] == [
        (manifest.digest[:36], "s3")  # MLflow caps digests at 36 characters
    ]
    assert manifest.digest in inputs[0].dataset.profile  # the whole manifest digest
    assert uri in inputs[0].dataset.source


def alive(ray_session, class_name: str) -> list:
    # This test process's Ray by its address: cluster tests may run other instances beside it.
    return actors(ray_session.get_runtime_context().gcs_address, class_name)


def test_two_corrupt_of_400_train_and_are_counted(ray_session, workdir, bucket, s3_client):
    # As CIFAR-10 is published: the image struct is named `img`, found without being named.
    upload_parquet(s3_client, bucket, "hf/train.parquet", count=400, corrupt=2, image_column="img")
    spec = load_spec(None, [*TINY, f"data.source=s3://{bucket}/hf", "train.batch_size=40"])
    ctrl_c = signal.getsignal(signal.SIGINT)
    result = run_pretrain(spec, name="two-corrupt")
    # The run's worker group ends with it: Ray Train leaves a Ctrl-C handler holding its
    # controller (and data actors) alive after `fit`; mimray puts the caller's handler back.
    assert signal.getsignal(signal.SIGINT) is ctrl_c
    wait_until(
        lambda: not alive(ray_session, "TrainController"), 60, "the run's TrainController to end"
    )
    tracker = Tracker(resolve_tracking_uri(), "s3")
    assert tracker.metric_history(result.run_id, "data/skipped") == [(1, 2.0)]
    assert tracker.metric_history(result.run_id, "data/images_seen") == [(1, 400.0)]


def test_fifteen_percent_corrupt_fails_naming_share_and_threshold(
    ray_session, workdir, bucket, s3_client
):
    upload_parquet(s3_client, bucket, "bad/train.parquet", count=200, corrupt=30)
    # One worker: the in-process path's failure (a worker group's is the CLI test's below).
    sets = [*TINY, f"data.source=s3://{bucket}/bad", "train.batch_size=40"]
    spec = load_spec(None, [*sets, "scaling.num_workers=1"])
    with pytest.raises(Exception) as failed:
        run_pretrain(spec, name="too-corrupt")
    message = str(failed.value)
    assert "30 of 200 images (15.0%)" in message
    assert "data.max_skipped_share=1.0%" in message


@pytest.mark.parametrize("problem", ["missing bucket", "wrong credentials"])
def test_unreadable_bucket_fails_fast_with_a_clear_line(problem, workdir, bucket, s3_env):
    uri = f"s3://{bucket}/data" if problem == "wrong credentials" else "s3://no-such-bucket/x"
    args = ["pretrain", "demo", "--set", f"data.source={uri}"]
    started = time.monotonic()
    if problem == "wrong credentials":
        with moto_checks_credentials(s3_env):  # moto now rejects the unknown test keys
            result = CliRunner().invoke(main, args)
        expected = "access denied"
    else:
        result = CliRunner().invoke(main, args)
        expected = "bucket 'no-such-bucket' does not exist"
    assert time.monotonic() - started < 30
    assert result.exit_code != 0
    assert result.output.startswith("mimray: error:") and expected in result.output
    assert uri in result.output
    assert not (workdir / "mimray-runs").exists()


def test_empty_images_in_a_folder_are_skipped_and_counted(ray_session, workdir, tmp_path):
    write_folder_with_empty_images(tmp_path / "images", count=64, empty=2)
    args = [
        f"data.source={tmp_path / 'images'}",
        "train.batch_size=32",
        "data.max_skipped_share=0.05",
        "scaling.num_workers=1",  # counted in-process (two workers' counts add up above)
    ]
    result = run_pretrain(load_spec(None, [*TINY, *args]), name="empty-files")
    tracker = Tracker(resolve_tracking_uri(), "s3")
    assert tracker.metric_history(result.run_id, "data/skipped") == [(1, 2.0)]
    assert tracker.metric_history(result.run_id, "data/images_seen") == [(1, 64.0)]


def test_too_many_empty_images_stop_the_run_with_one_line(ray_session, workdir, tmp_path):
    write_folder_with_empty_images(tmp_path / "images", count=64, empty=8)
    sets = [*TINY, f"data.source={tmp_path / 'images'}", "train.batch_size=32"]
    # The CLI as a user runs it (its own console set-up), on the tests' Ray instance.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "orchestrator", "pretrain", "demo", "--name", "empty"]
    command += [f"--set={item}" for item in sets]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    lines = [line for line in output.splitlines() if line.startswith("mimray: error:")]
    assert len(lines) == 1, output
    assert "8 of 64 images (12.5%)" in lines[0] and "data.max_skipped_share=1.0%" in lines[0]
    assert "Traceback" not in output
