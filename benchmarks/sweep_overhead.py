"""Per-trial fixed cost: one-worker sweep trials (in-process) vs a bare `TorchTrainer.fit()`.

    python benchmarks/sweep_overhead.py [--trials 3] [--epochs 1] [--images 512]

Both sides train the same tiny MAE with the same loop (`workloads.pretrain`), one worker, on
the built-in shapes, in one process against one local Ray:

- sweep: `mimray sweep`'s `run_sweep` of `--trials` one-worker trials (seeds), which train in
  the trial's own process (`orchestrator/fit/in_process.py`), one at a time. A trial's wall is
  measured on the driver from the previous trial's end (the first: Tune's first step) to Tune
  seeing it complete, so it includes starting the trial's process and what that process
  imports; Tune's own "trial started" comes after both (the "in trial" column, from there);
- fit: `--trials` bare `TorchTrainer.fit()` calls of the same loop with one Ray Train worker
  (no Tune, no MLflow), timed around `fit()`.

Fixed cost = wall minus the trial's own epoch times (`epoch_time_s`, measured in the loop),
so it is what a trial pays to start, set up and finish. Rounds alternate sides, so machine
noise hits both. Everything is written under a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

TINY = {
    "model": {
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "decoder_dim": 32,
        "decoder_depth": 1,
        "decoder_num_heads": 2,
    },
    "tracking": {"experiment": "overhead", "system_metrics": False},
    "scaling": {"num_workers": 1},
}


def sweep_yaml(name: str, trials: int, epochs: int, images: int, seed0: int) -> str:
    import yaml

    base = {
        **TINY,
        "data": {"source": "shapes", "num_images": images},
        "train": {"epochs": epochs, "batch_size": 64, "seed": seed0},
    }
    return yaml.safe_dump({"name": name, "base": base, "sweep": {"seeds": trials}})


def time_sweep(path: str, name: str) -> list[tuple[str, float, float, float]]:
    """(trial, wall, in-trial wall, epochs' time) of each trial of the sweep at `path`."""
    import orchestrator.sweep.runner as sweep_module
    from orchestrator.config import load_sweep
    from orchestrator.tracking import Tracker, resolve_tracking_uri

    started: dict[str, float] = {}
    in_trial: dict[str, float] = {}
    walls: dict[str, float] = {}
    free_since: list[float] = []  # when the previous trial ended (the first: Tune's first step)
    running: set[str] = set()
    overlapped: list[str] = []

    class TimedProgress(sweep_module.SweepProgress):
        """The sweep's own progress callback, also noting when Tune starts and ends trials."""

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            if not free_since:
                free_since.append(time.perf_counter())
            super().on_step_begin(iteration, trials, **info)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            started[self._name(trial)] = time.perf_counter()
            overlapped.extend(running)
            running.add(self._name(trial))
            super().on_trial_start(iteration, trials, trial, **info)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            now, name = time.perf_counter(), self._name(trial)
            in_trial[name] = now - started[name]
            walls[name] = now - free_since[-1]
            free_since.append(now)
            running.discard(name)
            super().on_trial_complete(iteration, trials, trial, **info)

    original = sweep_module.SweepProgress
    sweep_module.SweepProgress = TimedProgress
    try:
        spec, trials = load_sweep(path)
        result = sweep_module.run_sweep(spec, trials, name=name)
    finally:
        sweep_module.SweepProgress = original
    assert all(o.status == "FINISHED" for o in result.outcomes), result.outcomes
    # One trial at a time, or "since the previous trial's end" would not be this trial's time.
    assert not overlapped, f"trials overlapped: {overlapped}"
    tracker = Tracker(resolve_tracking_uri(), "overhead")
    rows = []
    for trial in trials:
        run = tracker.client.search_runs(
            [tracker.experiment_id], filter_string=f"tags.`mimray.run_key` = '{trial.name}'"
        )[0]
        epochs = sum(v for _, v in tracker.metric_history(run.info.run_id, "epoch/epoch_time_s"))
        rows.append((trial.name, walls[trial.name], in_trial[trial.name], epochs))
    return rows


def time_bare_fit(name: str, epochs: int, images: int, seed: int) -> tuple[str, float, float]:
    """(name, wall, epochs' time) of one bare TorchTrainer.fit() with one Ray Train worker."""
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.config import validate_spec
    from orchestrator.fit.ray_setup import scaling_config
    from orchestrator.pretrain.prepare import check_trainable, resolve_storage_path
    from orchestrator.pretrain.trainer import build_trainer

    spec = validate_spec(
        {
            **TINY,
            "data": {"source": "shapes", "num_images": images},
            "train": {"epochs": epochs, "batch_size": 64, "seed": seed},
        }
    )
    _, schedule = check_trainable(spec)
    storage = resolve_storage_path(spec)
    # The loop, its config and its datasets exactly as a mimray run builds them; only the
    # scaling differs: one Ray Train worker instead of the calling process.
    local = build_trainer(spec, name, storage, schedule, reporter=None)
    trainer = TorchTrainer(
        local.train_loop_per_worker,
        train_loop_config=local.train_loop_config,
        scaling_config=scaling_config(spec.scaling),
        run_config=RunConfig(name=name, storage_path=storage),
        datasets=local.datasets,
    )
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    epoch_times = [m["epoch_time_s"] for _, m in result.best_checkpoints]
    return name, wall, sum(epoch_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1, help="alternating sweep/fit rounds")
    args = parser.parse_args()

    os.chdir(tempfile.mkdtemp(prefix="mimray-overhead-"))
    from orchestrator.fit.ray_setup import ensure_ray

    ensure_ray(log_to_driver=False)
    rows: list[tuple[str, str, float, float, float]] = []
    for round_index in range(args.rounds):
        name = f"overhead-{round_index}"
        path = f"{name}.yaml"
        seed0 = round_index * args.trials
        with open(path, "w") as f:
            f.write(sweep_yaml(name, args.trials, args.epochs, args.images, seed0))
        for trial, wall, in_trial, epochs in time_sweep(path, name):
            rows.append(("sweep trial (in-process)", trial, wall, in_trial, epochs))
        for i in range(args.trials):
            trial, wall, epochs = time_bare_fit(
                f"bare-{round_index}-{i}", args.epochs, args.images, seed0 + i
            )
            rows.append(("bare TorchTrainer.fit()", trial, wall, wall, epochs))

    console = Console(width=140)
    table = Table(
        "path", "run", "wall s", "in trial s", "epochs s", "fixed cost s", title="per-trial cost"
    )
    for path, run, wall, in_trial, epochs in rows:
        table.add_row(
            path, run, f"{wall:.1f}", f"{in_trial:.1f}", f"{epochs:.1f}", f"{wall - epochs:.1f}"
        )
    console.print(table)
    for path in dict.fromkeys(r[0] for r in rows):
        costs = [wall - epochs for p, _, wall, _, epochs in rows if p == path]
        console.print(
            f"{path}: fixed cost median {statistics.median(costs):.1f} s, "
            f"mean {statistics.mean(costs):.1f} s over {len(costs)} runs"
        )


if __name__ == "__main__":
    main()
