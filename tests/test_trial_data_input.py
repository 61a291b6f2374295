"""A sweep trial opens its MLflow run and declares its training data (dataset input) when it
starts, not at set-up.

Through a real `mlflow server` (what a team shares), set-up opens the sweep's parent run only:
a planned trial has no run and has read nothing. A trial builds its spec from Tune's config,
opens its run (key tag, params, parent) and declares its data as it starts, once: a trial
started again (a retry, a restore) finds the same run, which still holds one input. Real local
Ray, one in-process fit.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from servers import mlflow_server
from tiny_model import tiny_model_yaml

from orchestrator.config import load_sweep
from orchestrator.pretrain.launch import execute_run
from orchestrator.pretrain.prepare import TrainingInput, check_trainable, log_training_input
from orchestrator.sweep.runner import open_sweep_parent
from orchestrator.sweep.space import trial_configs
from orchestrator.sweep.trial import SweepContext, start_trial
from orchestrator.tracking import RUN_KEY_TAG, Tracker

SWEEP = """
name: declared
base:
  method: {name: emae}
  model: $TINY_MODEL
  data: {source: shapes, num_images: 64}
  train: {epochs: 1, batch_size: 32}
  scaling: {num_workers: 1}
  tracking: {experiment: declared, system_metrics: false}
sweep:
  grid:
    method.k: [2, 4]
""".replace("$TINY_MODEL", tiny_model_yaml())


def training_inputs(tracker: Tracker, run_id: str) -> list[tuple[str, str, str]]:
    inputs = tracker.client.get_run(run_id).inputs.dataset_inputs
    return [(i.dataset.name, i.dataset.digest, i.tags[0].value) for i in inputs]


@pytest.mark.slow
def test_a_trial_declares_its_data_once_when_it_starts(workdir, ray_session):
    path = workdir / "declared.yaml"
    path.write_text(SWEEP)
    sweep, trials = load_sweep(str(path))
    digest = check_trainable(trials[0].spec).info.digest
    with mlflow_server(f"sqlite:///{workdir / 'served.db'}", str(workdir / "art")) as url:
        tracker = Tracker(url, "declared")
        parent_run_id = open_sweep_parent(sweep, trials, tracker, "declared")
        for trial in trials:  # planned: listed on the parent, no run of their own yet
            assert tracker.find_run(trial.name) is None
        storage = str(workdir / "mimray-runs" / "ray")
        context = SweepContext(sweep, "declared", parent_run_id, url, "declared", storage, {})
        configs = trial_configs(trials)  # what Tune hands each trial

        started = start_trial(context, configs[1], trials[1].name)  # what the trainable runs
        opened = tracker.client.get_run(started.run_id)
        assert opened.data.tags[RUN_KEY_TAG] == trials[1].name
        assert opened.data.tags["mlflow.parentRunId"] == parent_run_id
        assert opened.data.params["method.k"] == "4"  # from Tune's config
        declared = [("shapes-train", digest[:36], "training")]
        assert training_inputs(tracker, started.run_id) == declared
        assert tracker.find_run(trials[0].name) is None  # not started: no run, nothing read
        result = execute_run(started)
        assert result.epochs_done == 1
        assert training_inputs(tracker, started.run_id) == declared

        # Started again (Tune retries an errored trial, a restore resumes one): the same run,
        # still one input. The run is what can go wrong (a duplicate); the input count alone
        # could not show a second declaration, as MLflow keeps one input per data set and run.
        again = start_trial(context, configs[1], trials[1].name)
        assert again.run_id == started.run_id and again.resumed
        assert training_inputs(tracker, started.run_id) == declared


def test_trials_starting_at_once_each_declare_a_new_data_set(tmp_path):
    """Trials that start together each insert their (new) data set; the store keys data sets
    by experiment, name and digest and refuses all but one insert: none of them may fail."""
    with mlflow_server(f"sqlite:///{tmp_path / 'served.db'}", str(tmp_path / "art")) as url:
        tracker = Tracker(url, "together")
        run_ids = [tracker.open_run(f"t{i}", params={}, tags={}).run_id for i in range(8)]
        for attempt in range(4):  # each a data set the store has not seen
            data = TrainingInput("shapes-train", "shapes", f"digest-{attempt}", 64)
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(log_training_input, [tracker] * 8, run_ids, [data] * 8))
        for run_id in run_ids:
            digests = [digest for _, digest, _ in training_inputs(tracker, run_id)]
            assert sorted(digests) == [f"digest-{attempt}" for attempt in range(4)]
