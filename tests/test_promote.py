"""`mimray promote` and `models:/NAME@ALIAS` targets on a real SQLite MLflow store, no Ray.

The store is laid out as `mimray sweep` and `mimray eval` record one: a parent run, trial runs
with their training input, checkpoints written by the real `MlflowReporter`, and evaluation
results logged on the checkpoints (LoggedModels). Only the numbers are chosen here, so which
checkpoint is best is known.
"""

from __future__ import annotations

import pytest
from cli_checks import assert_refused
from click.testing import CliRunner

from orchestrator.cli.main import main
from orchestrator.evaluation.checkpoints import resolve_checkpoints
from orchestrator.tracking import (
    KIND_TAG,
    RUN_KEY_TAG,
    SWEEP_TAG,
    TRIAL_INDEX_TAG,
    Tracker,
    resolve_tracking_uri,
)
from orchestrator.tracking.provenance import command_line
from orchestrator.tracking.registry import default_alias

SWEEP = "kpick"
# (trial, epoch) -> knn/top1 of that checkpoint. The best is trial 1's epoch 1, not any last
# epoch, and not the trial with the best last epoch.
KNN = {(0, 1): 0.40, (0, 2): 0.55, (1, 1): 0.81, (1, 2): 0.60}
SOURCE = "mimray sweep kpick.yaml"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A recorded 2-trial sweep with 2 checkpoints per trial, each evaluated with kNN; one per
    module (a fresh store costs seconds): tests register under names of their own."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("promote")
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield _record(resolve_tracking_uri())


def _record(uri: str) -> dict:
    tracker = Tracker(uri, "promote-test")
    parent = tracker.open_run(
        key=f"sweep:{SWEEP}",
        params={"sweep.trials": 2},
        tags={SWEEP_TAG: SWEEP, KIND_TAG: "sweep"},
        run_name=SWEEP,
    )
    models: dict[tuple[int, int], str] = {}
    trials = []
    for index in (0, 1):
        name = f"{SWEEP}-t{index}"
        trial = tracker.open_run(
            key=name,
            params={},
            tags={
                SWEEP_TAG: SWEEP,
                KIND_TAG: "trial",
                TRIAL_INDEX_TAG: str(index),
                "mlflow.source.name": SOURCE,
                "mlflow.source.git.commit": "0123456789abcdef",
            },
            run_name=name,
            parent_run_id=parent.run_id,
        )
        tracker.log_dataset(trial.run_id, "shapes-train", "shapes", "d" * 40, 64, "training")
        reporter = tracker.reporter(trial.run_id, system_metrics=False)
        reporter.start()
        for epoch in (1, 2):
            uri_of = f"file:///ckpt/{name}/checkpoint_epoch_{epoch}"
            model_id = reporter.log_checkpoint(uri_of, epoch, epoch * 4, {"loss": 1.0 / epoch})
            models[index, epoch] = model_id
        reporter.close()
        tracker.finish_run(trial.run_id)
        for epoch in (1, 2):
            tracker.log_model_metrics(
                trial.run_id, models[index, epoch], {"knn/top1": KNN[index, epoch]}, step=epoch
            )
        trials.append(trial.run_id)
    tracker.finish_run(parent.run_id)
    return {"uri": uri, "tracker": tracker, "models": models, "trials": trials}


def test_promote_registers_the_best_checkpoint_and_eval_targets_resolve_to_it(store):
    runner = CliRunner()
    out = runner.invoke(main, ["promote", SWEEP, "--metric", "knn/top1"])
    assert out.exit_code == 0, out.output
    best = store["models"][1, 1]
    assert best in out.output and "version 1" in out.output

    client = store["tracker"].client
    version = client.get_model_version_by_alias(SWEEP, "best-knn")
    assert str(version.version) == "1" and version.source == f"models:/{best}"
    assert version.run_id == store["trials"][1]
    assert version.tags["mimray.promoted_by"] == "knn/top1=0.81"

    (checkpoint,) = resolve_checkpoints(store["uri"], f"models:/{SWEEP}@best-knn")
    assert (checkpoint.model_id, checkpoint.epoch, checkpoint.run_id) == (
        best,
        1,
        store["trials"][1],
    )
    assert checkpoint.sweep == SWEEP
    (by_version,) = resolve_checkpoints(store["uri"], f"models:/{SWEEP}/1")
    assert by_version == checkpoint

    # Promoting again keeps one version; another metric and alias picks another checkpoint.
    again = runner.invoke(main, ["promote", SWEEP, "--metric", "knn/top1"])
    assert again.exit_code == 0 and "already registered as version 1" in again.output
    lowest = runner.invoke(
        main, ["promote", SWEEP, "--metric", "checkpoint/loss", "--alias", "lowest-loss"]
    )
    assert lowest.exit_code == 0, lowest.output
    chosen = client.get_model_version_by_alias(SWEEP, "lowest-loss")
    assert str(chosen.version) == "2"
    assert chosen.source == f"models:/{store['models'][0, 2]}"  # loss 0.5, first in trial order
    assert len(client.search_model_versions(f"name = '{SWEEP}'")) == 2


def test_promote_of_a_run_and_a_name_of_ones_own(store):
    trial = f"{SWEEP}-t0"
    out = CliRunner().invoke(
        main, ["promote", trial, "--metric", "knn/top1", "--name", "enc", "--alias", "pick"]
    )
    assert out.exit_code == 0, out.output
    version = store["tracker"].client.get_model_version_by_alias("enc", "pick")
    assert version.source == f"models:/{store['models'][0, 2]}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nosuch", "--metric", "knn/top1"], "target 'nosuch': not a run id"),
        ([SWEEP, "--metric", "linear/top1"], "--metric linear/top1: none of the 4 checkpoints"),
        ([SWEEP, "--metric", "knn/top1", "--alias", "latest"], "--alias 'latest'"),
        ([SWEEP, "--metric", "knn/top1", "--alias", "a/b"], "--alias 'a/b'"),
        ([SWEEP, "--metric", "knn/top1", "--name", "a:b"], "--name 'a:b'"),
    ],
)
def test_bad_promote_input_is_one_line_and_exit_2(store, args, expected):
    client = store["tracker"].client
    before = [(m.name, m.latest_versions) for m in client.search_registered_models()]
    line = assert_refused(CliRunner().invoke(main, ["promote", *args]), expected)
    if "--metric" in expected:
        assert "allowed: checkpoint/loss, knn/top1" in line  # what the checkpoints do hold
    after = [(m.name, m.latest_versions) for m in client.search_registered_models()]
    assert after == before  # nothing registered


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("models:/unregistered@best-knn", "no such registered model version"),
        ("models:/", "allowed registered-model forms"),
    ],
)
def test_eval_of_an_unknown_version_is_one_line_and_exit_2(store, target, expected):
    assert_refused(CliRunner().invoke(main, ["eval", target, "--protocol", "knn"]), expected)


def test_checkpoints_name_their_source_and_training_data(store):
    """What MLflow's model page shows as "Logged from" and "Datasets used" comes from the
    model's tags and from the data sets on its metrics: the run's command and commit, and the
    data the run trained on, not the process that wrote it (a Ray worker)."""
    client = store["tracker"].client
    model = client.get_logged_model(store["models"][0, 1])
    assert model.tags["mlflow.source.name"] == SOURCE
    assert model.tags["mlflow.source.git.commit"] == "0123456789abcdef"
    (loss,) = [m for m in model.metrics if m.key == "checkpoint/loss"]
    assert (loss.dataset_name, loss.dataset_digest) == ("shapes-train", "d" * 36)


def test_a_run_without_source_tags_still_names_mimray(workdir):
    tracker = Tracker(resolve_tracking_uri(), "bare")
    run = tracker.open_run(key="bare", params={}, tags={RUN_KEY_TAG: "bare"})
    reporter = tracker.reporter(run.run_id, system_metrics=False)
    reporter.start()
    model_id = reporter.log_checkpoint("file:///ckpt/bare/checkpoint_epoch_1", 1, 4, {"loss": 1})
    reporter.close()
    model = tracker.client.get_logged_model(model_id)
    assert model.tags["mlflow.source.name"] == "mimray"  # not pytest's own script
    assert [m.dataset_name for m in model.metrics] == [None]  # it declared no training data


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/venv/bin/mimray", "sweep", "emae-k"], "mimray sweep emae-k"),
        (["/src/orchestrator/__main__.py", "pretrain", "a b.yaml"], "mimray pretrain 'a b.yaml'"),
        (["/venv/lib/ray/_private/workers/default_worker.py", "--node-ip=1"], None),
        (["/venv/bin/pytest", "tests"], "pytest tests"),
    ],
)
def test_command_line_names_the_mimray_command(argv, expected):
    assert command_line(argv) == expected


@pytest.mark.parametrize(
    ("metric", "alias"),
    [
        ("knn/top1", "best-knn"),
        ("linear/top1", "best-linear"),
        ("checkpoint/loss", "best-checkpoint-loss"),
    ],
)
def test_default_alias(metric, alias):
    assert default_alias(metric) == alias
