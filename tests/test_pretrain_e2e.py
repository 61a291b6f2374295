"""End to end on real local Ray and a real SQLite MLflow store: pretrain, then resume by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_MODEL

from orchestrator.launch import run_pretrain
from orchestrator.config import load_spec
from orchestrator.tracking import CHECKPOINT_URI_TAG, Tracker, resolve_tracking_uri
from workloads.data import describe_source

pytestmark = pytest.mark.slow

TINY = [
    *TINY_MODEL,
    "data.num_images=256",
    "train.batch_size=64",
    "train.warmup_epochs=0.5",
    "scaling.num_workers=2",
    "tracking.experiment=e2e",
    "tracking.system_metrics_interval_s=1",
]


def test_pretrain_records_run_and_checkpoints_then_resumes_same_run(ray_session, workdir):
    first = run_pretrain(load_spec("demo", [*TINY, "train.epochs=2"]), name="tiny")
    assert (first.resumed, first.epochs_done) == (False, 2)

    tracker = Tracker(resolve_tracking_uri(), "e2e")
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["method.mask_ratio"] == "0.75"
    assert run.data.params["train.batch_size"] == "64"
    assert run.data.tags["mimray.run_key"] == "tiny"
    assert len(run.data.tags["mimray.config_fingerprint"]) == 16
    assert run.data.tags["mimray.ray_run_path"].endswith("mimray-runs/ray/tiny")
    assert [step for step, _ in tracker.metric_history(first.run_id, "epoch/loss")] == [1, 2]
    # 256 images / batch 64 = 4 optimizer steps per epoch, each logged.
    assert [s for s, _ in tracker.metric_history(first.run_id, "train/loss")] == list(range(1, 9))
    images_per_s = tracker.metric_history(first.run_id, "epoch/images_per_s")
    assert len(images_per_s) == 2 and all(v > 0 for _, v in images_per_s)
    assert any(key.startswith("system/") for key in run.data.metrics), sorted(run.data.metrics)
    inputs = run.inputs.dataset_inputs
    expected = describe_source("shapes", split="train", num_images=256, seed=0)
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [
        ("shapes-train", expected.digest)
    ]
    assert [t.value for t in inputs[0].tags if t.key == "mlflow.data.context"] == ["training"]

    models = tracker.checkpoint_models(first.run_id)
    assert [m.params["epoch"] for m in models] == ["1", "2"]
    for model in models:
        uri = model.tags[CHECKPOINT_URI_TAG]
        assert (Path(uri) / "checkpoint.pt").is_file(), uri
    assert first.checkpoint_uri == models[-1].tags[CHECKPOINT_URI_TAG]

    # Same name, one more epoch: continues from the epoch-2 checkpoint in the same MLflow run.
    second = run_pretrain(load_spec("demo", [*TINY, "train.epochs=3"]), name="tiny")
    assert (second.resumed, second.run_id, second.epochs_done) == (True, first.run_id, 3)
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 1
    epochs = [step for step, _ in tracker.metric_history(first.run_id, "epoch/loss")]
    assert epochs == [1, 2, 3]  # epoch 3 only was trained: not restarted from 0
    steps = [s for s, _ in tracker.metric_history(first.run_id, "train/loss")]
    assert steps == list(range(1, 13))
    assert [m.params["epoch"] for m in tracker.checkpoint_models(first.run_id)] == ["1", "2", "3"]

    # Once the last epoch is checkpointed, the same command trains nothing and reports it.
    third = run_pretrain(load_spec("demo", [*TINY, "train.epochs=3"]), name="tiny")
    assert (third.resumed, third.run_id, third.epochs_done) == (True, first.run_id, 3)
    assert third.checkpoint_uri == second.checkpoint_uri
    assert len(tracker.metric_history(first.run_id, "train/loss")) == 12
    # The data is declared once, however often the run is resumed.
    resumed_run = tracker.client.get_run(first.run_id)
    assert len(resumed_run.inputs.dataset_inputs) == 1


def test_one_worker_run_trains_in_process_and_resumes_into_the_same_run(ray_session, workdir):
    from ray.util.state import list_actors

    def train_workers() -> int:
        address = ray_session.get_runtime_context().gcs_address  # other Rays may be running
        found = list_actors(address, filters=[("class_name", "=", "RayTrainWorker")], limit=1000)
        return len(found)

    workers_before = train_workers()
    one = [*TINY, "scaling.num_workers=1", "data.num_images=128", "tracking.system_metrics=false"]
    first = run_pretrain(load_spec("demo", [*one, "train.epochs=2"]), name="solo")
    assert (first.resumed, first.epochs_done) == (False, 2)
    assert train_workers() == workers_before  # trained in this process: no worker group

    tracker = Tracker(resolve_tracking_uri(), "e2e")
    models = tracker.checkpoint_models(first.run_id)
    assert [m.params["epoch"] for m in models] == ["1", "2"]
    for model in models:  # persisted to the run's storage, where Ray Train would put them
        uri = model.tags[CHECKPOINT_URI_TAG]
        assert uri.endswith(f"mimray-runs/ray/solo/checkpoint_epoch_000{model.params['epoch']}")
        assert (Path(uri) / "checkpoint.pt").is_file(), uri

    second = run_pretrain(load_spec("demo", [*one, "train.epochs=3"]), name="solo")
    assert (second.resumed, second.run_id, second.epochs_done) == (True, first.run_id, 3)
    assert [s for s, _ in tracker.metric_history(first.run_id, "epoch/loss")] == [1, 2, 3]
    # 128 images / batch 64 = 2 steps per epoch: epoch 3 alone was trained on resume.
    assert [s for s, _ in tracker.metric_history(first.run_id, "train/loss")] == list(range(1, 7))
    assert [m.params["epoch"] for m in tracker.checkpoint_models(first.run_id)] == ["1", "2", "3"]
    assert tracker.client.get_run(first.run_id).info.status == "FINISHED"
