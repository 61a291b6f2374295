"""Where checkpoints go decides how they are written: a worker group uploads to an object store
in the background (Ray Train's asynchronous upload), and writes a local folder in step.

With background upload, rank 0 records each checkpoint in MLflow from Ray Train's upload thread
as soon as its files are stored (workloads/session.py). The end-to-end test here runs the real
pretrain loop in a two-worker group against moto's S3 server and a real SQLite MLflow store,
and looks at MLflow from two places: the reporter itself (what storage holds when a record is
made) and a Ray Train callback on the controller (what MLflow holds when Ray Train registers a
checkpoint, i.e. when a resume could start from it). The cluster path is
`test_s3_checkpoints_e2e.py`.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from tiny_model import TINY_MODEL_SPEC

from orchestrator.pretrain.trainer import is_remote
from workloads.report_order import ReportOrder


@pytest.mark.parametrize(
    ("storage", "remote"),
    [
        ("s3://bucket/runs", True),
        ("gs://bucket/runs", True),
        ("/home/me/mimray-runs/ray", False),
        ("file:///home/me/mimray-runs/ray", False),
        ("mimray-runs/ray", False),
    ],
)
def test_object_storage_is_remote_and_a_folder_is_not(storage, remote):
    assert is_remote(storage) is remote


def test_a_filesystem_given_with_the_path_decides():
    import pyarrow.fs

    assert is_remote("bucket/runs", pyarrow.fs.S3FileSystem(region="us-east-1"))
    assert not is_remote("/home/me/runs", pyarrow.fs.LocalFileSystem())


def test_calls_made_after_a_checkpoint_wait_for_its_record():
    """The reporter sees what synchronous upload gives it: the record in its report's place."""
    order, seen = ReportOrder(), []
    order.submit(lambda: seen.append("epoch 1 metrics"))
    place = order.reserve()  # epoch 1's report; its upload has not finished
    order.submit(lambda: seen.append("epoch 2 step 1"))
    assert seen == ["epoch 1 metrics"]  # the training thread went on without waiting
    uploader = threading.Thread(target=order.fill, args=(place, lambda: seen.append("record 1")))
    uploader.start()
    uploader.join(timeout=10)
    order.wait_until_done()
    assert seen == ["epoch 1 metrics", "record 1", "epoch 2 step 1"]


EPOCHS, RESUMED_EPOCHS, STEPS_PER_EPOCH, KEEP = 3, 4, 2, 2  # 64 images / batch 32


def storage_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_background_upload_records_each_checkpoint_once_stored_and_resumes(
    ray_session, s3_env, bucket, tmp_path
):
    import pyarrow.fs
    from ray.train import UserCallback

    from orchestrator.config import validate_spec
    from orchestrator.pretrain.prepare import check_trainable
    from orchestrator.pretrain.trainer import build_trainer
    from orchestrator.tracking import Tracker
    from orchestrator.tracking.reporter import MlflowReporter
    from workloads.checkpoint import CHECKPOINT_FILE, RESUME_METRIC, random_state_file

    # The workers of the shared local Ray do not see this test's S3 environment: the
    # filesystem (endpoint and keys) travels with the run config.
    filesystem = pyarrow.fs.S3FileSystem(
        endpoint_override=s3_env,
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
    )
    storage, name = f"{bucket}/ray", "async"
    run_folder = f"{storage}/{name}"
    every_rank = sorted([CHECKPOINT_FILE, random_state_file(0), random_state_file(1)])
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tracking_uri, "async-upload")
    run_id = tracker.open_run(name, params={}, tags={}).run_id
    at_record, at_registration = tmp_path / "at_record.jsonl", tmp_path / "at_registration.jsonl"

    def stored_files(folder: str) -> list[str]:
        listed = filesystem.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
        return sorted(i.base_name for i in listed if i.type == pyarrow.fs.FileType.File)

    # Defined here so that Ray pickles them by value: workers cannot import tests.
    @dataclasses.dataclass
    class StorageCheckingReporter(MlflowReporter):
        """Rank 0's MLflow reporter, noting what storage holds as it records a checkpoint."""

        notes: str = ""

        def log_checkpoint(self, uri, epoch, step, metrics):
            with open(self.notes, "a") as out:
                out.write(json.dumps({"epoch": epoch, "stored": stored_files(uri)}) + "\n")
            return super().log_checkpoint(uri, epoch, step, metrics)

    class MlflowAtRegistration(UserCallback):
        """On the controller, as Ray Train registers a checkpoint (from then on a restart
        resumes from it): which checkpoints MLflow holds, and the folder's files."""

        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is None:
                return
            models = Tracker(tracking_uri, "async-upload").checkpoint_models(run_id)
            event = {
                "epoch": int(metrics[0]["epoch"]),
                "recorded": [int(m.params["epoch"]) for m in models],
                "stored": stored_files(checkpoint.path),
            }
            with open(at_registration, "a") as out:
                out.write(json.dumps(event) + "\n")

    def fit(epochs: int) -> None:
        spec = validate_spec(
            {
                "model": TINY_MODEL_SPEC,
                "data": {"source": "shapes", "num_images": 64},
                "train": {
                    "epochs": epochs,
                    "batch_size": 32,
                    "warmup_epochs": 0,
                    "keep_checkpoints": KEEP,
                    "max_failures": 0,
                },
                "scaling": {"num_workers": 2},
            }
        )
        _, schedule = check_trainable(spec)
        assert schedule.steps_per_epoch == STEPS_PER_EPOCH
        reporter = StorageCheckingReporter(
            tracking_uri=tracking_uri,
            run_id=run_id,
            experiment_id=tracker.experiment_id,
            system_metrics=False,
            commit_on_checkpoint=True,
            notes=str(at_record),
        )
        trainer = build_trainer(
            spec,
            name,
            storage,
            schedule,
            reporter,
            callbacks=[MlflowAtRegistration()],
            storage_filesystem=filesystem,
        )
        trainer.fit()

    def kept() -> list[str]:
        listed = filesystem.get_file_info(pyarrow.fs.FileSelector(run_folder))
        return sorted(i.base_name for i in listed if i.base_name.startswith("checkpoint_epoch_"))

    fit(EPOCHS)
    # Each record was made once rank 0's files were in the bucket (the model, optimizer and
    # spec evaluation reads; another rank's random state may still be on its way).
    records = storage_events(at_record)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert {CHECKPOINT_FILE, random_state_file(0)} <= set(record["stored"]), record
    # When Ray Train registered epoch k's checkpoint, MLflow already held it (and maybe later
    # ones: the controller polls every few seconds): a run stopped from then on resumes after
    # an epoch MLflow recorded. (This bounds the record by the registration, not by the next
    # report: a record deferred to the next report that still beats the poll passes.)
    registrations = storage_events(at_registration)
    assert [r["epoch"] for r in registrations] == [1, 2, 3]
    for registration in registrations:
        epochs_so_far = set(range(1, registration["epoch"] + 1))
        assert epochs_so_far <= set(registration["recorded"]), registration
        # ... and every rank's files were in the folder MLflow names.
        assert set(every_rank) <= set(registration["stored"]), registration
    models = tracker.checkpoint_models(run_id)
    assert [m.params["checkpoint_uri"] for m in models] == [
        f"{run_folder}/checkpoint_epoch_000{e}" for e in (1, 2, 3)
    ]
    assert kept() == ["checkpoint_epoch_0002", "checkpoint_epoch_0003"]  # keep 2
    for folder in kept():
        assert set(every_rank) <= set(stored_files(f"{run_folder}/{folder}"))

    # Run again by name with one more epoch: it resumes from the last uploaded checkpoint.
    fit(RESUMED_EPOCHS)
    assert tracker.metric_history(run_id, RESUME_METRIC) == [(EPOCHS * STEPS_PER_EPOCH, EPOCHS)]
    steps = [s for s, _ in tracker.metric_history(run_id, "train/loss")]
    assert steps == list(range(1, RESUMED_EPOCHS * STEPS_PER_EPOCH + 1))  # each step once
    assert [r["epoch"] for r in storage_events(at_record)] == [1, 2, 3, 4]
    last = storage_events(at_registration)[-1]
    assert (last["epoch"], last["recorded"]) == (4, [1, 2, 3, 4])
    assert [m.params["epoch"] for m in tracker.checkpoint_models(run_id)] == ["1", "2", "3", "4"]
    assert kept() == ["checkpoint_epoch_0003", "checkpoint_epoch_0004"]
