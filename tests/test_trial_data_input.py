"""A sweep trial declares its training data (MLflow dataset input) when it starts, not at set-up.

Through a real `mlflow server` (what a team shares), set-up gives each trial run its params and
key tags and no dataset input: a planned trial has read nothing, and that input was a third
request per trial before Tune starts. The trial declares it as it starts training, once: a
trial started again (a retry, a restore) still holds one. Real local Ray, one in-process fit.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from servers import mlflow_server
from tiny_model import tiny_model_yaml

from orchestrator.config import load_sweep
from orchestrator.launch import execute_run
from orchestrator.run_prep import TrainingInput, check_trainable, log_training_input
from orchestrator.sweep import open_sweep_runs
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
        assert not tracker.writes_in_batches  # the per-run path a server takes
        _, runs = open_sweep_runs(sweep, trials, tracker, "declared")
        for run, trial in zip(runs, trials, strict=True):
            planned = tracker.client.get_run(run.run_id)
            assert planned.data.tags[RUN_KEY_TAG] == trial.name
            assert planned.data.params["method.k"] == str(trial.spec.method.k)
            assert training_inputs(tracker, run.run_id) == []

        started, planned = runs
        result = execute_run(started)  # what the trial's Tune function runs
        assert result.epochs_done == 1
        declared = [("shapes-train", digest[:36], "training")]
        assert training_inputs(tracker, started.run_id) == declared
        assert training_inputs(tracker, planned.run_id) == []  # not started: nothing read

        # Started again (Tune retries an errored trial, a restore resumes one): still one.
        log_training_input(tracker, started.run_id, started.input_at_start)
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
