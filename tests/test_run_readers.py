"""Every implementation of the one read interface (`tracking.reader.RunReader`) returns exactly
what the reference, MLflow's public client (`ClientReader`), returns on the same store.

- `SqlReader` (plain SELECTs) on an SQLite store, and `RestReader` (plain HTTP) on that store
  served by a real `mlflow server`, against `ClientReader`, call by call, on a recorded sweep
  with failed and deleted runs, two checkpoints, evaluations and dataset inputs; and
  `RestReader` through a proxy that cuts answers off mid-body, which it asks again.
- The SELECTs are used only on tables with exactly the expected columns: a store whose tables
  were altered (a column added, one renamed) is refused, and the readers fall back to MLflow's
  client with the same report and lineage.
- The SELECTs cannot write: SQLite refuses a write through their connection.
- On such a store a sweep's reads need no MLflow import (where most of their CPU went).
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from recorded_sweep import record_sweep

from orchestrator.report.lineage import lineage
from orchestrator.report.table import build_report
from orchestrator.tracking import KIND_TAG, RUN_KEY_TAG, SWEEP_TAG, Tracker
from orchestrator.tracking.lookup import open_reader
from orchestrator.tracking.reader import ClientReader, RunReader
from orchestrator.tracking.rest_reads import RestReader
from orchestrator.tracking.server_http import CUT_ANSWER_RETRIES
from orchestrator.tracking.sql_reads import SqlReader, open_sql_reader

SWEEP = "readers"
TRIALS = 10


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A recorded 10-trial sweep (varied: a failed trial, trials without checkpoints, an
    evaluation run twice) plus one deleted eval run, in an SQLite store."""
    folder = tmp_path_factory.mktemp("readers")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = Tracker(uri, "readers")
    layout = record_sweep(tracker, folder, SWEEP, TRIALS, varied=True)
    evals = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'eval'"
    )
    tracker.client.delete_run(evals[0].info.run_id)  # deleted runs are left out by every reader
    deleted_model = tracker.client.search_logged_models([tracker.experiment_id])[0].model_id
    tracker.client.delete_logged_model(deleted_model)  # and so are deleted LoggedModels
    return folder, uri, tracker.experiment_id, layout, deleted_model


def same_reads(
    fast: RunReader, reference: ClientReader, experiment_id: str, layout, deleted_model: str
) -> None:
    """Every read the readers make, through `fast` and through `reference`, compared."""
    experiments = [experiment_id]
    assert fast.experiments() == reference.experiments()
    assert fast.experiment_id("readers") == reference.experiment_id("readers") == experiment_id
    assert fast.experiment_id("nosuch") is None and reference.experiment_id("nosuch") is None
    for tags in (
        {SWEEP_TAG: SWEEP, KIND_TAG: "trial"},
        {SWEEP_TAG: SWEEP, KIND_TAG: "eval"},
        {KIND_TAG: "sweep"},
        {RUN_KEY_TAG: f"sweep:{SWEEP}"},
        {RUN_KEY_TAG: "nosuch"},
    ):
        found = fast.tagged(experiments, tags)
        assert found == reference.tagged(experiments, tags), tags
    trials = fast.tagged(experiments, {SWEEP_TAG: SWEEP, KIND_TAG: "trial"})
    assert len(trials) == TRIALS and any(run.datasets for run in trials)
    assert {run.status for run in trials} == {"FINISHED", "FAILED"}
    ids = [run.run_id for run in trials]
    for key in ("epoch/loss", "knn/top1", "nosuch"):
        assert fast.metric_histories(ids, key) == reference.metric_histories(ids, key), key
    assert any(len(points) == 3 for points in fast.metric_histories(ids, "epoch/loss").values())
    for run_id in (layout.parent_run_id, ids[1], "0" * 32, "not-a-run"):
        assert fast.run(run_id) == reference.run(run_id)
    models = fast.models_of(experiment_id, ids)
    assert sorted(models, key=str) == sorted(reference.models_of(experiment_id, ids), key=str)
    assert len(models) > TRIALS  # two checkpoints for some trials
    assert fast.model(models[0].model_id) == reference.model(models[0].model_id)
    assert fast.model("m-nosuch") is None and reference.model("m-nosuch") is None
    assert fast.model(deleted_model) is None and reference.model(deleted_model) is None
    assert deleted_model not in {model.model_id for model in models}
    spec = fast.text_artifact(layout.parent_run_id, "sweep_spec.json")
    assert spec is not None and spec == reference.text_artifact(
        layout.parent_run_id, "sweep_spec.json"
    )
    assert fast.text_artifact(layout.parent_run_id, "nosuch.json") is None


def test_sql_reads_return_what_mlflows_client_returns(recorded):
    _, uri, experiment_id, layout, deleted_model = recorded
    fast = open_reader(uri)
    assert isinstance(fast, SqlReader)  # the store's tables are the expected ones
    same_reads(fast, ClientReader(uri), experiment_id, layout, deleted_model)


def test_the_selects_read_a_sweep_without_importing_mlflow(recorded):
    """Importing MLflow and opening its store cost more CPU than all of a 1,000-trial sweep's
    reads: on a store the SELECTs can read, `lineage` and the reads of `report` need neither."""
    _, uri, *_ = recorded
    script = (
        "import sys\n"
        "from orchestrator.report.lineage import lineage\n"
        "from orchestrator.report.table import build_report\n"
        f"tree = lineage({uri!r}, {SWEEP!r})\n"
        f"report = build_report({uri!r}, None, {SWEEP!r})\n"
        "assert len(tree['runs']) == len(report.trials) > 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'sqlalchemy')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def served(recorded):
    """The recorded store served by a real `mlflow server`: its URL."""
    from servers import mlflow_server

    folder, uri = recorded[:2]
    with mlflow_server(uri, str(folder / "served")) as url:
        yield url


def test_rest_reads_return_what_mlflows_client_returns(recorded, served):
    folder, uri, experiment_id, layout, deleted_model = recorded
    fast = open_reader(served)
    assert isinstance(fast, RestReader)
    same_reads(fast, ClientReader(served), experiment_id, layout, deleted_model)


def test_rest_reads_ask_again_when_an_answer_is_cut_off(recorded, served):
    """Through a proxy that cuts the first answers off after their headers (a server worker
    restarted mid-answer), as many as a read is asked again: every read still returns what
    MLflow's client returns from the server itself."""
    from servers import cutting_proxy

    folder, uri, experiment_id, layout, deleted_model = recorded
    with cutting_proxy(served, cuts=CUT_ANSWER_RETRIES) as cut:
        same_reads(RestReader(cut), ClientReader(served), experiment_id, layout, deleted_model)


@contextlib.contextmanager
def altered_copy(folder: Path, statement: str):
    """A copy of the store with `statement` applied to its tables."""
    copy = folder / f"altered-{abs(hash(statement))}.db"
    with contextlib.closing(sqlite3.connect(folder / "mlflow.db")) as source:
        with contextlib.closing(sqlite3.connect(copy)) as target:
            source.backup(target)
            target.execute(statement)
            target.commit()
    yield f"sqlite:///{copy}"


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE latest_metrics ADD COLUMN model_id VARCHAR(36)",
        "ALTER TABLE inputs RENAME COLUMN step TO input_step",
    ],
    ids=["column-added", "column-renamed"],
)
def test_the_selects_refuse_a_store_whose_tables_differ(recorded, statement):
    folder, *_ = recorded
    with altered_copy(folder, statement) as altered:
        assert open_sql_reader(altered) is None
        assert type(open_reader(altered)) is ClientReader


def test_with_the_selects_refused_report_and_lineage_stay_the_same(recorded):
    """A column MLflow's own tables could gain: its client still reads the store, and
    `report` and `lineage` through it show what the SELECTs showed on the original."""
    folder, uri, *_ = recorded
    with altered_copy(folder, "ALTER TABLE runs ADD COLUMN workspace VARCHAR(63)") as altered:
        assert type(open_reader(altered)) is ClientReader
        assert lineage(altered, SWEEP)["runs"] == lineage(uri, SWEEP)["runs"]
        through_client, through_selects = (
            build_report(altered, None, SWEEP),
            build_report(uri, None, SWEEP),
        )
    assert through_client.rows == through_selects.rows
    assert through_client.trials == through_selects.trials
    assert through_client.columns == through_selects.columns


def test_the_selects_cannot_write(recorded):
    _, uri, *_ = recorded
    reader = open_sql_reader(uri)
    assert reader is not None
    with reader._select() as connection, pytest.raises(sqlite3.OperationalError, match="readonly"):
        connection.execute("DELETE FROM tags")
