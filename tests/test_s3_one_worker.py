"""A one-worker run (trained in the calling process) with `storage.path: s3://...` keeps its
checkpoints in the bucket and nowhere local, resumes from them, and MLflow points at them.

Real local Ray (the session's), moto's S3 server over HTTP, a SQLite MLflow store in the
test's folder. The two-worker and cluster paths are covered by test_s3_checkpoints_e2e.py
and the cluster tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_model import TINY_MODEL

from orchestrator.config import load_spec
from orchestrator.pretrain.launch import run_pretrain
from orchestrator.tracking import CHECKPOINT_URI_TAG, Tracker, resolve_tracking_uri
from workloads.checkpoint import read_checkpoint_state

pytestmark = pytest.mark.slow

SETTINGS = [
    *TINY_MODEL,
    "data.num_images=64",
    "train.batch_size=32",
    "train.warmup_epochs=0",
    "scaling.num_workers=1",  # trains in this process, not in a Ray Train worker group
    "tracking.experiment=s3-one",
    "tracking.system_metrics=false",
]


def local_checkpoint_folders(*roots: Path) -> list[str]:
    return [
        os.path.join(parent, name)
        for root in roots
        if root.exists()
        for parent, folders, _ in os.walk(root)
        for name in folders
        if name.startswith("checkpoint_epoch_")
    ]


def stored_checkpoints(s3_client, bucket: str, prefix: str) -> list[str]:
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listed if o["Key"].endswith("/checkpoint.pt"))


def test_one_worker_run_keeps_its_checkpoints_in_the_bucket(
    ray_session, workdir, s3_client, bucket, capsys
):
    storage = f"s3://{bucket}/ckpt"
    settings = [*SETTINGS, f"storage.path={storage}"]
    result = run_pretrain(load_spec(None, [*settings, "train.epochs=2"]), name="one")
    assert result.epochs_done == 2
    expected = [f"ckpt/one/checkpoint_epoch_000{e}/checkpoint.pt" for e in (1, 2)]
    assert stored_checkpoints(s3_client, bucket, "ckpt/") == expected
    assert result.checkpoint_uri == f"{storage}/one/checkpoint_epoch_0002"
    assert read_checkpoint_state(result.checkpoint_uri)["epoch"] == 2

    # Run again to 3 epochs: it resumes from the bucket's epoch-2 checkpoint.
    resumed = run_pretrain(load_spec(None, [*settings, "train.epochs=3"]), name="one")
    assert f"resuming at epoch 2 (step 4) from {storage}/one/checkpoint_epoch_0002" in (
        capsys.readouterr().out
    )
    assert resumed.epochs_done == 3
    assert stored_checkpoints(s3_client, bucket, "ckpt/") == [
        *expected,
        "ckpt/one/checkpoint_epoch_0003/checkpoint.pt",
    ]
    assert read_checkpoint_state(resumed.checkpoint_uri)["step"] == 6

    tracker = Tracker(resolve_tracking_uri(), "s3-one")
    models = tracker.checkpoint_models(result.run_id)
    assert [m.tags[CHECKPOINT_URI_TAG] for m in models] == [
        f"{storage}/one/checkpoint_epoch_000{e}" for e in (1, 2, 3)
    ]
    # Nowhere local: not in the default store, not in Ray's default results folder.
    ray_results = Path.home() / "ray_results" / "one"
    assert local_checkpoint_folders(workdir, ray_results) == []
    assert not (workdir / "mimray-runs" / "ray").exists()
