"""The worker's own record of a resume, without Ray Train: a checkpoint written as the loop
writes it, loaded as the loop loads it, and what the loop then says and logs.

A resumed run must be told apart from one that trained again from scratch: the loop prints
`resuming at epoch N (step S) from <checkpoint>` and rank 0 logs `resume/from_epoch` = N at
step S, a point per resume even where the MLflow reporter skips steps the run already holds.
(The end-to-end resume through Ray Train is tests/test_resume_e2e.py.)
"""

from __future__ import annotations

import pyarrow.fs
import pytest
import torch
from conftest import TINY_MODEL
from ray.train import Checkpoint

from orchestrator.config import load_spec
from orchestrator.tracking import Tracker
from workloads.checkpoint import (
    RESUME_METRIC,
    checkpoint_dir_name,
    checkpoint_uri,
    read_checkpoint_spec,
    record_resume,
    resume_point,
    write_checkpoint,
)
from workloads.optim import build_optimizer
from workloads.pretrain import build_model
from workloads.run_reporter import RecordingReporter


def trained_state(seed: int):
    """A tiny MAE, its optimizer after one step (so it holds moments) and a GradScaler."""
    spec = load_spec(None, [*TINY_MODEL, "method.name=mae"]).model_dump(mode="json")
    torch.manual_seed(seed)
    model = build_model(spec)
    optimizer = build_optimizer(model, lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).loss.backward()
    optimizer.step()
    return spec, model, optimizer, torch.amp.GradScaler("cpu", enabled=False)


@pytest.fixture
def saved(tmp_path):
    """A checkpoint after 1 epoch of 4 steps, in the folder name the loop gives it."""
    spec, model, optimizer, scaler = trained_state(seed=0)
    folder = tmp_path / checkpoint_dir_name(1)
    folder.mkdir()
    write_checkpoint(str(folder), model, optimizer, scaler, epoch=1, step=4, spec=spec)
    return folder, spec, model, optimizer


def test_resume_restores_the_saved_state_and_says_where_it_continues(saved, capsys):
    folder, spec, model, optimizer = saved
    point = resume_point(Checkpoint.from_directory(str(folder)))
    assert (point.epoch, point.step, point.location) == (1, 4, str(folder))
    assert folder.name == "checkpoint_epoch_0001"
    assert read_checkpoint_spec(str(folder)) == spec

    _, fresh, fresh_optimizer, scaler = trained_state(seed=1)
    before = next(iter(fresh.state_dict().values())).clone()
    point.restore_weights(fresh, scaler)
    point.restore_optimizer(fresh_optimizer)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    assert not torch.equal(before, next(iter(fresh.state_dict().values())))
    assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()

    reporter = RecordingReporter()
    record_resume(point, reporter, rank=0)
    assert capsys.readouterr().out == f"[mimray] resuming at epoch 1 (step 4) from {folder}\n"
    assert reporter.events == [(4, {RESUME_METRIC: 1.0})]
    assert reporter.metrics == []  # not a training metric: nothing the reporter could skip


def test_only_rank_zero_records_the_resume(saved, capsys):
    point = resume_point(Checkpoint.from_directory(str(saved[0])))
    reporter = RecordingReporter()
    record_resume(point, reporter, rank=1)
    assert capsys.readouterr().out == ""
    assert reporter.events == []


def test_a_fresh_run_has_nothing_to_resume():
    assert resume_point(None) is None


def test_a_checkpoint_in_object_storage_is_named_by_its_s3_uri():
    checkpoint = Checkpoint(
        "bucket/runs/mae/checkpoint_epoch_0002",
        filesystem=pyarrow.fs.S3FileSystem(region="us-east-1", anonymous=True),
    )
    assert checkpoint_uri(checkpoint) == "s3://bucket/runs/mae/checkpoint_epoch_0002"


def test_mlflow_reporter_keeps_a_point_per_resume_even_at_a_step_the_run_holds(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume")
    run_id = tracker.open_run("resumed", params={}, tags={}).run_id
    for _ in range(2):
        # Two attempts resume from the same epoch-1 checkpoint (step 4): the first dies
        # before its next checkpoint, so its training metrics are dropped, not its resume.
        reporter = tracker.reporter(run_id, system_metrics=False, commit_on_checkpoint=True)
        reporter.start()
        reporter.log_event({RESUME_METRIC: 1.0}, 4)
        reporter.log_metrics({"train/loss": 0.5}, 5)
        reporter.close()
    assert tracker.metric_history(run_id, RESUME_METRIC) == [(4, 1.0), (4, 1.0)]
    assert tracker.metric_history(run_id, "train/loss") == []


def test_each_worker_resumes_its_own_random_generators(saved):
    """Every rank writes its generators into the checkpoint; each rank gets its own back,
    rank 1's included, and continues its draws (masks, noise) where they stopped."""
    import random

    import numpy as np

    from workloads.checkpoint import restore_random_state, write_random_state

    folder = saved[0]
    cpu = torch.device("cpu")
    expected = {}
    for rank in (0, 1):
        torch.manual_seed(100 + rank)
        np.random.seed(200 + rank)
        random.seed(300 + rank)
        write_random_state(str(folder), rank, cpu)
        expected[rank] = (torch.rand(3), np.random.rand(3), random.random())

    for rank in (1, 0):
        point = resume_point(Checkpoint.from_directory(str(folder)), rank)
        torch.manual_seed(0), np.random.seed(0), random.seed(0)  # a restarted worker's seed
        restore_random_state(point.random_state, cpu)
        draws = (torch.rand(3), np.random.rand(3), random.random())
        torch.testing.assert_close(draws[0], expected[rank][0])
        np.testing.assert_array_equal(draws[1], expected[rank][1])
        assert draws[2] == expected[rank][2]
    # A run with more workers than the checkpoint's has nothing to restore for the new ranks.
    assert resume_point(Checkpoint.from_directory(str(folder)), 2).random_state is None


@pytest.mark.parametrize("resumed_from_it", [False, True], ids=["epoch-redone", "resumed-from"])
def test_a_checkpoint_record_cut_short_by_a_kill_is_recorded_again_whole(tmp_path, resumed_from_it):
    """A kill between MLflow creating a checkpoint's LoggedModel (PENDING) and storing its
    MLmodel file (READY) leaves a half record. The resumed run records that checkpoint whole,
    whether it redoes the epoch (the checkpoint was never registered) or resumes from it (it
    was: the epoch is never redone, so its record must not wait for a redo). Whole records are
    kept as they are."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    from orchestrator.tracking.names import CHECKPOINT_URI_TAG, MODEL_TYPE

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "cut")
    run_id = tracker.open_run("cut", params={}, tags={}).run_id
    first = tracker.reporter(run_id, system_metrics=False, commit_on_checkpoint=True)
    first.start()
    first.log_metrics({"epoch/loss": 1.0}, 1)
    whole = first.log_checkpoint(f"{tmp_path}/checkpoint_epoch_0001", 1, 4, {"loss": 1.0})
    first.close()
    # Epoch 2: its metrics are committed just before its checkpoint record is made (what
    # `log_checkpoint` does first), then the kill lands inside the record.
    tracker.client.log_metric(run_id, "epoch/loss", 0.9, step=2)
    mlflow.set_tracking_uri(tracker.tracking_uri)
    uri_2 = f"{tmp_path}/checkpoint_epoch_0002"
    half = mlflow.initialize_logged_model(  # what create_external_model does before its MLmodel
        name="checkpoint-epoch-0002",
        source_run_id=run_id,
        experiment_id=tracker.experiment_id,
        model_type=MODEL_TYPE,
        tags={CHECKPOINT_URI_TAG: uri_2},
        params={"epoch": "2", "step": "8", "checkpoint_uri": uri_2},
    ).model_id

    resumed = tracker.reporter(run_id, system_metrics=False, commit_on_checkpoint=True)
    resumed.start()
    if resumed_from_it:  # the next checkpoint this attempt makes is epoch 3's
        resumed.log_metrics({"epoch/loss": 0.8}, 3)
        resumed.log_checkpoint(f"{tmp_path}/checkpoint_epoch_0003", 3, 12, {"loss": 0.8})
        epochs = ["1", "2", "3"]
    else:
        again = resumed.log_checkpoint(f"{tmp_path}/checkpoint_epoch_0001", 1, 4, {"loss": 1.0})
        assert again == whole  # a whole record is not made twice
        resumed.log_checkpoint(uri_2, 2, 8, {"loss": 0.9})
        epochs = ["1", "2"]
    resumed.close()

    models = tracker.checkpoint_models(run_id)
    assert [m.params["epoch"] for m in models] == epochs
    assert models[0].model_id == whole
    second = models[1]
    assert second.model_id != half
    assert second.params == {"epoch": "2", "step": "8", "checkpoint_uri": uri_2}
    assert second.tags[CHECKPOINT_URI_TAG] == uri_2
    # The whole record carries the epoch's loss, as a record made in one go does.
    recorded = tracker.client.get_logged_model(second.model_id)
    assert recorded.status == LoggedModelStatus.READY
    assert [(m.key, m.value, m.step) for m in recorded.metrics] == [("checkpoint/loss", 0.9, 2)]
