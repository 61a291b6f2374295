"""`mimray eval` and `mimray lineage` refuse bad targets and settings with one line, exit 2,
before any Ray work; on a real SQLite MLflow store."""

from __future__ import annotations

import pytest
from cli_checks import assert_refused
from click.testing import CliRunner

from orchestrator.cli.main import main
from orchestrator.tracking import KIND_TAG, Tracker, resolve_tracking_uri


def _error(args: list[str]) -> str:
    return assert_refused(CliRunner().invoke(main, args), "")


@pytest.fixture
def store(workdir):
    """A store holding one pretrain run that never reached a checkpoint, and one eval run."""
    tracker = Tracker(resolve_tracking_uri(), "cli-errors")
    bare = tracker.open_run("bare", params={}, tags={KIND_TAG: "run"})
    evaluation = tracker.open_run(
        "eval:x", params={}, tags={KIND_TAG: "eval", "mimray.pretrain_run_id": bare.run_id}
    )
    return bare.run_id, evaluation.run_id


def test_protocol_typo_names_the_allowed_protocols(workdir):
    line = _error(["eval", "anything", "--protocol", "knnn"])
    assert "protocol: unknown protocol 'knnn'; allowed: knn, linear, finetune" in line


def test_unknown_setting_names_the_allowed_keys(workdir):
    line = _error(["eval", "anything", "--protocol", "knn", "--set", "knn.kk=3"])
    assert "knn.kk: unknown key; allowed: k, temperature, batch_size" in line


def test_no_store_is_refused_without_creating_one(workdir):
    line = _error(["eval", "0" * 32, "--protocol", "knn"])
    assert "no MLflow store" in line
    assert not (workdir / "mimray-runs").exists()
    assert "no MLflow store" in _error(["lineage", "0" * 32])


def test_unknown_run_id_and_name(store):
    assert "not a run id, a checkpoint model id" in _error(["eval", "f" * 32, "--protocol", "knn"])
    assert "not a run id" in _error(["eval", "no-such-run", "--protocol", "linear"])
    assert "not a run id" in _error(["eval", "m-0123", "--protocol", "linear"])
    assert "not a run id" in _error(["lineage", "f" * 32])


def test_run_without_checkpoint(store):
    bare, _ = store
    line = _error(["eval", bare, "--protocol", "knn"])
    assert f"target {bare} (bare): the run has no checkpoint" in line
    assert "the run has no checkpoint" in _error(["eval", "bare", "--protocol", "knn"])


def test_eval_run_is_not_a_target(store):
    bare, evaluation = store
    line = _error(["eval", evaluation, "--protocol", "knn"])
    assert f"is an evaluation run; pass the pretrain run it evaluated ({bare})" in line


def test_chained_evals_take_the_final_checkpoint_and_every_nth():
    from orchestrator.config import load_eval_spec
    from orchestrator.evaluation.chained import chained_evaluations
    from orchestrator.evaluation.checkpoints import Checkpoint

    checkpoints = [
        Checkpoint("run", "tiny", "0", f"m-{epoch}", epoch, f"/ray/tiny/{epoch}", None)
        for epoch in range(1, 6)
    ]
    final_only = load_eval_spec("linear")
    every_two = load_eval_spec("knn", ["every=2"])
    pairs = chained_evaluations([final_only, every_two], checkpoints, final_epoch=5)
    assert [(c.epoch, s.protocol) for c, s in pairs] == [
        (5, "linear"),
        (2, "knn"),
        (4, "knn"),
        (5, "knn"),
    ]
