"""End to end on real local Ray and a real SQLite MLflow store: pretrain, then resume by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_MODEL
from interruption import file_states
from mlflow.entities import LoggedModelStatus

from orchestrator.config import load_spec
from orchestrator.pretrain.launch import run_pretrain
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
    epoch_2 = file_states(Path(first.checkpoint_uri))
    second = run_pretrain(load_spec("demo", [*TINY, "train.epochs=3"]), name="tiny")
    assert (second.resumed, second.run_id, second.epochs_done) == (True, first.run_id, 3)
    # The workers loaded the epoch-2 checkpoint (their resume record) and did not rewrite it.
    assert tracker.metric_history(first.run_id, "resume/from_epoch") == [(8, 2.0)]
    assert file_states(Path(first.checkpoint_uri)) == epoch_2
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 1
    epochs = [step for step, _ in tracker.metric_history(first.run_id, "epoch/loss")]
    assert epochs == [1, 2, 3]  # epoch 3 only was trained: not restarted from 0
    steps = [s for s, _ in tracker.metric_history(first.run_id, "train/loss")]
    assert steps == list(range(1, 13))
    assert [m.params["epoch"] for m in tracker.checkpoint_models(first.run_id)] == ["1", "2", "3"]

    # A kill inside the final checkpoint's record leaves it half made (PENDING, what MLflow
    # creates before the record's MLmodel file is stored): replace the whole one by that.
    final = tracker.checkpoint_models(first.run_id)[-1]
    tracker.client.delete_logged_model(final.model_id)
    tracker.client.create_logged_model(
        experiment_id=tracker.experiment_id,
        name=final.name,
        source_run_id=first.run_id,
        tags=dict(final.tags),
        params=dict(final.params),
        model_type=final.model_type,
    )

    # Once the last epoch is checkpointed, the same command trains nothing and reports it,
    # its final record made whole first.
    third = run_pretrain(load_spec("demo", [*TINY, "train.epochs=3"]), name="tiny")
    assert (third.resumed, third.run_id, third.epochs_done) == (True, first.run_id, 3)
    models = tracker.checkpoint_models(first.run_id)
    assert [m.params for m in models][-1] == dict(final.params)
    assert tracker.client.get_logged_model(models[-1].model_id).status == LoggedModelStatus.READY
    assert third.checkpoint_uri == second.checkpoint_uri
    assert len(tracker.metric_history(first.run_id, "train/loss")) == 12
    # The data is declared once, however often the run is resumed.
    resumed_run = tracker.client.get_run(first.run_id)
    assert len(resumed_run.inputs.dataset_inputs) == 1
