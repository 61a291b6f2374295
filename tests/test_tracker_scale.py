"""Reading and writing a sweep's MLflow records at scale keeps what they say.

- `report` cells and Markdown, `lineage --json` (of the sweep, a trial, a checkpoint, an eval
  run) and the checkpoints `mimray eval SWEEP` picks are exactly what they were before the
  store reads were batched: golden data captured from the per-trial reads of the code before
  (`tracker_golden.py`), on a 50-trial sweep laid out with the real sweep and tracker code.
- A sweep set-up killed half-way (SIGKILL, in a real process) and run again finds every run it
  had made by its key: nothing is duplicated, and the runs it had made are the ones kept.
- The same golden report, lineage and eval targets come back through a real `mlflow server`.
- `mimray --help` lists the lazily imported commands by their own one-line help (what it
  imports: `test_cli_startup.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from recorded_sweep import load_trials
from tracker_golden import TRIALS, record_and_snapshot

from orchestrator.sweep.runner import open_sweep_runs
from orchestrator.tracking import KIND_TAG, RUN_KEY_TAG, SWEEP_TAG, Tracker
from orchestrator.tracking import TRIAL_INDEX_TAG as TRIAL

GOLDEN = Path(__file__).parent / "data" / f"tracker_golden_{TRIALS}.json"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def golden_store(tmp_path_factory):
    """The recorded 50-trial sweep in an SQLite store, and what the readers show of it there."""
    folder = tmp_path_factory.mktemp("golden")
    return folder, record_and_snapshot(folder)


@pytest.fixture(scope="module")
def snapshot(golden_store):
    return golden_store[1]


def test_report_cells_are_unchanged(snapshot):
    golden = json.loads(GOLDEN.read_text())
    # Through JSON, as the golden file went: tuples become lists, nothing else changes.
    now = json.loads(json.dumps(snapshot))
    assert now["report"]["cells"] == golden["report"]["cells"]
    assert now["report"]["body"] == golden["report"]["body"]
    assert now["report"]["trials"] == golden["report"]["trials"]
    assert now["report"] == golden["report"]


def test_lineage_json_and_eval_targets_are_unchanged(snapshot):
    golden = json.loads(GOLDEN.read_text())
    now = json.loads(json.dumps(snapshot))
    for target in ("sweep", "trial_by_name", "checkpoint", "eval_run"):
        assert now["lineage"][target] == golden["lineage"][target], target
    assert now["eval_targets"] == golden["eval_targets"]


def test_golden_data_holds_what_it_should_cover():
    """The golden sweep is not trivially empty: both protocols, two checkpoint epochs, trials
    without evaluations, a failed trial and an evaluation run twice."""
    golden = json.loads(GOLDEN.read_text())
    assert golden["report"]["columns"] == ["loss", "knn@e2", "knn@e3", "linear@e3"]
    assert len(golden["report"]["trials"]) == TRIALS
    assert "FAILED" in {t[4] for t in golden["report"]["trials"]}
    sweep = golden["lineage"]["sweep"]["runs"]
    assert len(sweep) == TRIALS
    assert any(not run["checkpoints"] for run in sweep)
    assert any(len(run["checkpoints"]) == 2 for run in sweep)
    twice = golden["lineage"]["trial_by_name"]["runs"][0]["checkpoints"][-1]["evals"]
    assert [e["metrics"]["knn/top1"] for e in twice] == [0.17, 0.99]


KILLED_SETUP = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from recorded_sweep import load_trials
from pathlib import Path
from orchestrator.sweep.runner import open_sweep_runs
from orchestrator.tracking import Tracker

tracker = Tracker({uri!r}, "restore")
spec, trials = load_trials(Path({folder!r}), "killed", "restore", 20)
calls = 0

def then_die(write):
    def wrapped(*args, **kwargs):
        global calls
        calls += 1
        if calls == {die_at}:  # SIGKILL in the middle of a write
            os.kill(os.getpid(), signal.SIGKILL)
        return write(*args, **kwargs)
    return wrapped

# One run per create_run call, 8 at once: dies as the 15th run is created. Calls 2-9 start
# together; each later call comes from a thread whose previous run is whole, so at least 6
# trial runs are; runs in flight then may lack their params.
tracker.client.create_run = then_die(tracker.client.create_run)
open_sweep_runs(spec, trials, tracker, "killed")
"""


def test_restore_after_killed_setup_duplicates_nothing(tmp_path):
    die_at, made = 15, set(range(7, 15))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = KILLED_SETUP.format(
        tests=str(REPO / "tests"), uri=uri, folder=str(tmp_path), die_at=die_at
    )
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path)
    assert killed.returncode == -9

    tracker = Tracker(uri, "restore")
    before = {
        run.data.tags[RUN_KEY_TAG]: run.info.run_id
        for run in tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    }
    assert len(before) in made  # what was written before the kill, whole or not

    spec, trials = load_trials(tmp_path, "killed", "restore", 20)
    parent_id, runs = open_sweep_runs(spec, trials, tracker, "killed")
    again_parent, again = open_sweep_runs(spec, trials, tracker, "killed")  # a second restore

    every = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    keys = Counter(run.data.tags[RUN_KEY_TAG] for run in every)
    assert len(every) == 21 and max(keys.values()) == 1, keys
    assert {run.name for run in runs} == {trial.name for trial in trials}
    assert [r.run_id for r in again] == [r.run_id for r in runs] and again_parent == parent_id
    kept = {"sweep:killed": parent_id, **{r.name: r.run_id for r in runs}}
    assert all(kept[key] == run_id for key, run_id in before.items())  # reused, not remade
    for run in every:  # every trial carries its full set-up record: tags and params
        if run.data.tags.get(KIND_TAG) == "trial":
            assert run.data.tags[SWEEP_TAG] == "killed"
            assert run.data.tags["mlflow.parentRunId"] == parent_id
            assert run.data.params["train.blr"] and run.data.params["method.k"]
            assert run.inputs.dataset_inputs == []  # declared when the trial starts


def test_lazy_commands_list_their_own_one_line_help():
    """`mimray --help` shows the lazily registered commands' help without importing them; it
    must be what each command says of itself once imported."""
    import click

    from orchestrator.cli.main import LAZY_COMMANDS, main

    listed = CliRunner().invoke(main, ["--help"]).output
    for name, (_, short_help) in LAZY_COMMANDS.items():
        command = main.get_command(click.Context(main), name)
        assert command is not None and command.name == name
        for limit in (45, 200):
            assert click.utils.make_default_short_help(short_help, limit) == (
                command.get_short_help_str(limit)
            ), name
        assert name in listed
    assert "Ablation table of SWEEP" in listed


def test_setup_through_a_real_mlflow_server_makes_each_run_once(tmp_path):
    """Through `mlflow server` a set-up creates runs several at a time (no bulk endpoint): every
    trial gets its params and tags once (its data set when it starts: `test_sweep_e2e.py`), and
    a second set-up reuses them all."""
    from servers import mlflow_server

    spec, trials = load_trials(tmp_path, "served", "served", 20)
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "art")) as url:
        tracker = Tracker(url, "served")
        parent_id, runs = open_sweep_runs(spec, trials, tracker, "served")
        again_parent, again = open_sweep_runs(spec, trials, tracker, "served")
        every = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    assert again_parent == parent_id and [r.run_id for r in again] == [r.run_id for r in runs]
    assert len(every) == 21 and len({r.data.tags[RUN_KEY_TAG] for r in every}) == 21
    for run in every:
        if run.data.tags.get(KIND_TAG) == "trial":
            assert run.data.params["method.k"] and run.data.tags["mlflow.parentRunId"] == parent_id
            assert run.inputs.dataset_inputs == []


@pytest.mark.parametrize("partitioned", [False, True], ids=["one-search", "16-parts"])
def test_reads_through_a_real_mlflow_server_are_unchanged(golden_store, monkeypatch, partitioned):
    """Served by `mlflow server`, the same recorded sweep reads (through `rest_reads`, without
    MLflow's client) into exactly the golden report, lineage and eval targets; also when its
    runs are searched in parts at once, as a large sweep's are."""
    from servers import mlflow_server
    from tracker_golden import EXPERIMENT, snapshot

    from orchestrator.tracking import rest_reads
    from orchestrator.tracking.lookup import open_reader

    if partitioned:
        monkeypatch.setattr(rest_reads, "PARTITION_FROM", 1)

    folder, _ = golden_store
    golden = json.loads(GOLDEN.read_text())
    with mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", str(folder / "served")) as url:
        assert isinstance(open_reader(url), rest_reads.RestReader)
        tracker = Tracker(url, EXPERIMENT)
        trials = tracker.client.search_runs(
            [tracker.experiment_id], filter_string="tags.`mimray.kind` = 'trial'"
        )
        ids = [r.info.run_id for r in sorted(trials, key=lambda r: int(r.data.tags[TRIAL]))]
        served = json.loads(json.dumps(snapshot(tracker, url, ids)))
    assert served["report"] == golden["report"]
    for target in ("sweep", "trial_by_name", "checkpoint", "eval_run"):
        assert served["lineage"][target] == golden["lineage"][target], target
    assert served["eval_targets"] == golden["eval_targets"]
