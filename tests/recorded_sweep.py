"""A recorded ablation sweep of any size, laid out with mimray's real sweep and tracker code.

Shared by the golden-output tests (`test_tracker_scale.py`, 50 trials) and the benchmark
(`benchmarks/tracker_scale.py`, 100 to 5,000 trials). No Ray: `open_sweep_runs` opens the
parent run and every trial's run as each trial opens its own when it starts, through MLflow's
client; each trial then declares its training data as a starting trial does; `MlflowReporter`
writes what rank 0 writes (epoch losses, one LoggedModel per checkpoint); the eval runs carry
the tags and inputs `mimray eval` gives them. Every number is a function of the trial index, so
two layouts of the same size hold the same values (only MLflow's ids and timestamps differ).
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tiny_model import tiny_model_yaml

from orchestrator.config import load_sweep
from orchestrator.pretrain.prepare import log_training_input
from orchestrator.sweep.runner import open_sweep_runs
from orchestrator.tracking import (
    CHECKPOINT_EPOCH_TAG,
    CHECKPOINT_URI_TAG,
    EVAL_PROTOCOL_TAG,
    KIND_TAG,
    MODEL_ID_TAG,
    PRETRAIN_RUN_TAG,
    SWEEP_TAG,
    Tracker,
)

SEEDS = 5
KS = (2, 4)
SWEEP_YAML = """
name: {name}
base:
  method: {{name: emae}}
  model: {model}
  data: {{source: shapes, num_images: 64}}
  train: {{epochs: 3, batch_size: 16, warmup_epochs: 1}}
  tracking: {{experiment: {experiment}}}
sweep:
  grid: {{method.k: {ks}, train.blr: {blrs}}}
  seeds: {seeds}
"""


@dataclass
class Layout:
    parent_run_id: str
    trial_run_ids: list[str]
    setup_s: float  # open_sweep_runs: the parent and every trial's run, as trials open them
    record_s: float  # losses, checkpoints and eval runs


def sweep_yaml(name: str, experiment: str, trials: int) -> str:
    """A sweep of `trials` trials: K x blr grid x SEEDS seeds (trials divisible by 10)."""
    if trials % (len(KS) * SEEDS):
        raise ValueError(f"trials must be a multiple of {len(KS) * SEEDS}, got {trials}")
    blrs = [f"{(i + 1) * 1e-4:.4g}" for i in range(trials // (len(KS) * SEEDS))]
    return SWEEP_YAML.format(
        name=name,
        experiment=experiment,
        ks=list(KS),
        blrs=f"[{', '.join(blrs)}]",
        seeds=SEEDS,
        model=tiny_model_yaml(),
    )


def load_trials(folder: Path, name: str, experiment: str, trials: int):
    path = folder / f"{name}.yaml"
    path.write_text(sweep_yaml(name, experiment, trials))
    return load_sweep(str(path))


def record_sweep(
    tracker: Tracker, folder: Path, name: str, trials: int, varied: bool = True, threads: int = 1
) -> Layout:
    """Lay out a recorded sweep of `trials` trials in `tracker`'s experiment.

    `varied=False` (the benchmark): every trial has 3 epoch losses, one checkpoint and one kNN
    evaluation. `varied=True` (the golden tests) adds what real campaigns hold: a failed trial
    with fewer epochs, trials without checkpoints or evaluations, two checkpoints, linear
    probes, and an evaluation run twice (the later one counts). `threads` trials are recorded
    at once."""
    spec, planned = load_trials(folder, name, tracker_experiment(tracker), trials)
    started = time.perf_counter()
    parent_id, runs = open_sweep_runs(spec, planned, tracker, name)
    setup_s = time.perf_counter() - started

    started = time.perf_counter()

    def record(index: int) -> None:
        run = runs[index]
        log_training_input(tracker, run.run_id, run.input_at_start)  # as a trial starts
        _record_trial(tracker, name, index, run.run_id, run.name, varied)

    # `threads` > 1: trials recorded side by side, as they would be by trials running at once
    # (through a server, one after the other would take half an hour at 1,000 trials).
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(record, range(len(runs))))
    tracker.finish_run(parent_id)
    return Layout(parent_id, [r.run_id for r in runs], setup_s, time.perf_counter() - started)


def tracker_experiment(tracker: Tracker) -> str:
    return tracker.client.get_experiment(tracker.experiment_id).name


def final_loss(index: int) -> float:
    return round(0.3 + (index * 37 % 101) / 1000, 6)


def top1(index: int, protocol: str, epoch: int) -> float:
    salt = {"knn": 11, "linear": 29}[protocol] + epoch
    return round(0.1 + ((index * salt) % 97) / 200, 6)


def _record_trial(
    tracker: Tracker, sweep: str, index: int, run_id: str, run_name: str, varied: bool
) -> None:
    epochs = 2 if varied and index == 5 else 3  # trial 5 failed after epoch 2
    reporter = tracker.reporter(run_id, system_metrics=False)
    reporter.start()
    checkpoints: dict[int, str] = {}
    for epoch in range(1, epochs + 1):
        loss = final_loss(index) + 0.1 * (epochs - epoch)
        reporter.log_metrics({"epoch/loss": loss, "epoch/epoch_time_s": 1.5}, step=epoch)
        keep = epoch == epochs or (varied and epoch == 2 and index % 3 == 1)
        if keep and not (varied and index % 7 == 3):  # every 7th trial: no checkpoint at all
            uri = f"file:///ckpt/{sweep}/{run_name}/checkpoint_epoch_{epoch}"
            checkpoints[epoch] = reporter.log_checkpoint(uri, epoch, epoch * 4, {"loss": loss})
    reporter.close()
    tracker.finish_run(run_id, status="FAILED" if epochs < 3 else "FINISHED")

    for epoch, model_id in checkpoints.items():
        last = epoch == epochs
        evaluate = functools.partial(_record_eval, tracker, sweep, run_id, run_name, model_id)
        if varied and index % 6 == 4:
            continue  # never evaluated
        if last or index % 4 == 1:
            if varied and index == 1 and last:  # evaluated twice: the later run counts
                evaluate("knn", epoch, 0.99, "old")
                time.sleep(0.002)
            evaluate("knn", epoch, top1(index, "knn", epoch))
        if varied and last and index % 2 == 0:
            evaluate("linear", epoch, top1(index, "linear", epoch))


def _record_eval(
    tracker: Tracker,
    sweep: str,
    trial_id: str,
    trial_name: str,
    model_id: str,
    protocol: str,
    epoch: int,
    value: float,
    salt: str = "",
) -> None:
    """An eval run as `evaluate_checkpoint` records it (tags, inputs, metrics on the model)."""
    handle = tracker.open_run(
        key=f"eval:{model_id}:{protocol}{salt}",
        params={"eval.protocol": protocol, "eval.data.source": "shapes"},
        tags={
            KIND_TAG: "eval",
            EVAL_PROTOCOL_TAG: protocol,
            PRETRAIN_RUN_TAG: trial_id,
            MODEL_ID_TAG: model_id,
            CHECKPOINT_EPOCH_TAG: str(epoch),
            CHECKPOINT_URI_TAG: f"file:///ckpt/{sweep}/{trial_name}/checkpoint_epoch_{epoch}",
            "mimray.method": "emae",
            "mimray.pretrain_run_name": trial_name,
            SWEEP_TAG: sweep,
        },
        run_name=f"{trial_name}-e{epoch}-{protocol}",
        parent_run_id=trial_id,
    )
    tracker.log_model_input(handle.run_id, model_id)
    for split in ("train", "val"):
        tracker.log_dataset(
            handle.run_id,
            name=f"shapes-{split}",
            uri="shapes",
            digest=f"digest-shapes-{split}",
            num_rows=256,
            context=f"eval-{split}",
        )
    metrics = {f"{protocol}/top1": value}
    if protocol == "knn":
        metrics["knn/top1_1nn"] = round(value - 0.05, 6)
    tracker.log_model_metrics(handle.run_id, model_id, metrics, step=epoch)
    if protocol == "linear":  # a per-epoch curve: not a result, lineage leaves it out
        tracker.client.log_metric(handle.run_id, "linear/val_top1", value, step=1)
    tracker.finish_run(handle.run_id)
