"""The in-process path of one-worker runs, without Ray workers: a loop written against the
worker session (`workloads/session.py`: report, latest checkpoint, rank) has its checkpoints
persisted to the run's storage, resumes from the last one, and is retried from it after a
failure; inside a Tune trial it reports with `ray.tune.report`, on public APIs only."""

from __future__ import annotations

import dataclasses
import os
import tempfile

import pytest

from orchestrator.fit.in_process import CheckpointStore, InProcessTrainer


def epoch_loop(config: dict, session) -> None:
    """A tiny loop in the shape of workloads/pretrain.py: resume, train epochs, checkpoint."""
    assert (session.rank, session.world_size) == (0, 1)
    start = 0
    checkpoint = session.latest_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            with open(os.path.join(folder, "checkpoint.pt")) as f:
                start = int(f.read())
    config["log"].append(("start", start))
    for epoch in range(start + 1, config["epochs"] + 1):
        if epoch == config.get("fail_at") and not os.path.exists(config["failed_once"]):
            open(config["failed_once"], "w").close()
            raise RuntimeError(f"worker lost at epoch {epoch}")
        folder = tempfile.mkdtemp()
        with open(os.path.join(folder, "checkpoint.pt"), "w") as f:
            f.write(str(epoch))
        session.report(
            {"epoch": epoch, "loss": 1.0 / epoch},
            checkpoint_folder=folder,
            dir_name=f"checkpoint_epoch_{epoch:04d}",
        )
        assert not os.path.exists(folder)  # the session owns the folder once reported


class SharedLog(list):
    """Survives the pickling of the config per attempt: appends go to one module-level list."""

    entries: list = []

    def append(self, item) -> None:
        SharedLog.entries.append(item)

    def __reduce__(self):
        return (SharedLog, ())


def fit_in_process(trainer, run_path: str, keep, max_failures: int, cpus: float):
    """The trainer fitted into `run_path` with these settings."""
    settings = {"run_path": run_path, "keep": keep, "max_failures": max_failures, "cpus": cpus}
    return dataclasses.replace(trainer, **settings).fit()


def fake_trainer(tmp_path, **config):
    return InProcessTrainer(
        loop=epoch_loop,
        train_loop_config={"log": SharedLog(), "failed_once": str(tmp_path / "failed"), **config},
        datasets={},
        name="run",
        run_path="",
        keep=None,
        max_failures=0,
        cpus=1,
    )


def checkpoints(run_path) -> list[str]:
    return sorted(p.name for p in run_path.iterdir())


@pytest.fixture(autouse=True)
def fresh_log():
    SharedLog.entries = []


def test_checkpoints_persist_resume_by_name_and_prune(tmp_path):
    run_path = tmp_path / "ray" / "run"
    result = fit_in_process(
        fake_trainer(tmp_path, epochs=3), str(run_path), keep=None, max_failures=0, cpus=1
    )
    assert result.metrics == {"epoch": 3, "loss": 1 / 3}
    assert checkpoints(run_path) == [f"checkpoint_epoch_000{e}" for e in (1, 2, 3)]
    assert result.checkpoint.path.endswith("checkpoint_epoch_0003")
    assert (run_path / "checkpoint_epoch_0002" / "checkpoint.pt").read_text() == "2"

    # The same run again with more epochs starts after its last persisted checkpoint; with
    # keep=2 the oldest ones go.
    fit_in_process(fake_trainer(tmp_path, epochs=5), str(run_path), keep=2, max_failures=0, cpus=1)
    assert SharedLog.entries == [("start", 0), ("start", 3)]
    assert checkpoints(run_path) == ["checkpoint_epoch_0004", "checkpoint_epoch_0005"]


def test_a_failed_attempt_is_retried_from_the_last_checkpoint(tmp_path):
    run_path = tmp_path / "run"
    trainer = fake_trainer(tmp_path, epochs=4, fail_at=3)
    result = fit_in_process(trainer, str(run_path), keep=None, max_failures=1, cpus=1)
    assert SharedLog.entries == [("start", 0), ("start", 2)]  # epochs 1-2 were not redone
    assert result.metrics["epoch"] == 4
    assert len(checkpoints(run_path)) == 4

    os.remove(tmp_path / "failed")
    with pytest.raises(RuntimeError, match="worker lost at epoch 5"):
        fit_in_process(fake_trainer(tmp_path, epochs=6, fail_at=5), str(run_path), None, 0, cpus=1)


def test_an_interrupted_copy_is_not_a_checkpoint(tmp_path):
    run_path = tmp_path / "run"
    (run_path / "checkpoint_epoch_0007").mkdir(parents=True)  # no state file: copy cut short
    (run_path / "checkpoint_epoch_0002").mkdir()
    (run_path / "checkpoint_epoch_0002" / "checkpoint.pt").write_text("2")
    latest = CheckpointStore(str(run_path), keep=None).latest()
    assert latest.path.endswith("checkpoint_epoch_0002")


@pytest.mark.slow
def test_tune_restarts_a_crashed_in_process_trial_from_its_last_checkpoint(tmp_path, ray_session):
    from ray import tune

    run_path = str(tmp_path / "ray" / "trial")
    crashed, starts = str(tmp_path / "crashed"), str(tmp_path / "starts.txt")

    # Defined here so that Ray pickles them by value: the trial process cannot import tests.
    def loop(config: dict, session) -> None:
        start = 0
        checkpoint = session.latest_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                with open(os.path.join(folder, "checkpoint.pt")) as f:
                    start = int(f.read())
        with open(starts, "a") as f:
            f.write(f"{start}\n")
        for epoch in range(start + 1, 4):
            if epoch == 3 and not os.path.exists(crashed):
                open(crashed, "w").close()
                raise RuntimeError("the trial crashed in epoch 3")
            folder = tempfile.mkdtemp()
            with open(os.path.join(folder, "checkpoint.pt"), "w") as f:
                f.write(str(epoch))
            session.report(
                {"epoch": epoch, "loss": 1.0 / epoch},
                checkpoint_folder=folder,
                dir_name=f"checkpoint_epoch_{epoch:04d}",
            )

    def trial(config: dict) -> None:
        from orchestrator.fit.in_process import InProcessTrainer

        InProcessTrainer(
            loop=loop,
            train_loop_config={},
            datasets={},
            name="trial",
            run_path=run_path,
            keep=None,
            max_failures=0,
            cpus=1,
        ).fit()

    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": 0.5}),
        run_config=tune.RunConfig(
            name="crash",
            storage_path=str(tmp_path / "tune"),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    (result,) = list(tuner.fit())
    assert result.error is None
    assert open(starts).read().split() == ["0", "2"]  # restarted after epoch 2's checkpoint
    assert list(result.metrics_dataframe["epoch"]) == [1, 2, 3]  # each epoch reached Tune once
