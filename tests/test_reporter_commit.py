"""The MLflow reporter under a worker-group restart, on a real SQLite store (no Ray needed).

A restart redoes everything after the last checkpoint; MLflow's history is append-only, so
what an attempt logged past its last checkpoint must never reach the store.
"""

from __future__ import annotations

import pytest

from orchestrator.tracking import Tracker


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    # One store for the module: creating an SQLite MLflow store costs seconds.
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return Tracker(f"sqlite:///{db}", "commit")


def attempt(tracker: Tracker, run_id: str, steps: range, checkpoint_epochs: dict[int, int]):
    """One worker-group attempt: per-step losses, an epoch line and a checkpoint at each
    epoch end in `checkpoint_epochs` (last step -> epoch); returns the reporter, not closed."""
    reporter = tracker.reporter(run_id, system_metrics=False, commit_on_checkpoint=True)
    reporter.start()
    for step in steps:
        reporter.log_metrics({"train/loss": 1.0 / step}, step)
        if step in checkpoint_epochs:
            epoch = checkpoint_epochs[step]
            reporter.log_metrics({"epoch/loss": 1.0 / epoch}, epoch)
            reporter.log_checkpoint(f"file:///ckpt/{epoch}", epoch, step, {"loss": 1.0 / epoch})
    return reporter


def test_restart_logs_each_step_and_epoch_once(tracker):
    run_id = tracker.open_run("restarted", params={}, tags={}).run_id

    # Attempt 1: epoch 1 (steps 1-4) checkpointed, then dies in epoch 2 after step 6.
    first = attempt(tracker, run_id, range(1, 7), {4: 1})
    assert [s for s, _ in tracker.metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
    first.close()  # the surviving rank 0 unwinds: steps 5-6 belong to no checkpoint
    assert [s for s, _ in tracker.metric_history(run_id, "train/loss")] == [1, 2, 3, 4]

    # Attempt 2 resumes from the epoch-1 checkpoint and redoes steps 5-8.
    second = attempt(tracker, run_id, range(5, 9), {8: 2})
    second.close()
    assert [s for s, _ in tracker.metric_history(run_id, "train/loss")] == list(range(1, 9))
    assert [s for s, _ in tracker.metric_history(run_id, "epoch/loss")] == [1, 2]
    assert [m.params["epoch"] for m in tracker.checkpoint_models(run_id)] == ["1", "2"]


def test_without_commit_mode_close_writes_everything(tracker):
    # Eval loops log without checkpoints: their metrics must still be written on close.
    run_id = tracker.open_run("eval", params={}, tags={}).run_id
    reporter = tracker.reporter(run_id, system_metrics=False)
    reporter.start()
    reporter.log_metrics({"eval/accuracy": 0.5}, 1)
    reporter.close()
    assert tracker.metric_history(run_id, "eval/accuracy") == [(1, 0.5)]


def test_restart_from_scratch_after_a_lost_registration_logs_nothing_twice(tracker):
    # Ray Train registers a saved checkpoint a poll later: a worker lost in between restarts
    # the run from the start, although the reporter already committed epoch 1.
    run_id = tracker.open_run("lost-registration", params={}, tags={}).run_id
    attempt(tracker, run_id, range(1, 7), {4: 1}).close()
    attempt(tracker, run_id, range(1, 9), {4: 1, 8: 2}).close()
    assert [s for s, _ in tracker.metric_history(run_id, "train/loss")] == list(range(1, 9))
    assert [s for s, _ in tracker.metric_history(run_id, "epoch/loss")] == [1, 2]
    assert [m.params["epoch"] for m in tracker.checkpoint_models(run_id)] == ["1", "2"]
    assert [s for s, _ in tracker.metric_history(run_id, "checkpoint/loss")] == [1, 2]
