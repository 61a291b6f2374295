"""A resumed run is the run it continues: interrupted after its epoch-1 checkpoint and resumed
from it, a 2-epoch run takes the same steps with the same losses as the run never interrupted
(real local Ray Data, the in-process path of one-worker runs, CPU).

The data is fixed here (stored order kept by Ray Data's `preserve_order`, no crop or flip: what
Ray Data's tasks draw and the order in which its tasks finish are not part of a checkpoint, see
docs/configuration.md, "Resume and preemption"), so what is left to differ after a resume is
the random state the loop draws from (masks, noise): the checkpoint carries it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tiny_model import TINY_MODEL_SPEC

from orchestrator.config import validate_spec
from orchestrator.pretrain.prepare import check_trainable
from orchestrator.pretrain.trainer import build_trainer
from workloads.checkpoint import CHECKPOINT_FILE

pytestmark = pytest.mark.slow

EPOCHS, STEPS_PER_EPOCH = 2, 4  # 128 images / batch 32


class FileReporter:
    """Per-step losses into a JSON-lines file (the run's config is copied per attempt, so
    the test reads the file, not the object). Optionally fails once right after recording the
    epoch-1 checkpoint: the attempt dies with its checkpoint persisted."""

    def __init__(self, path: Path, fail_after_epoch: int | None = None) -> None:
        self.path, self.fail_after_epoch = path, fail_after_epoch

    def start(self) -> None:
        pass

    def log_metrics(self, metrics, step: int) -> None:
        if "train/loss" in metrics:
            with self.path.open("a") as f:
                f.write(json.dumps([step, metrics["train/loss"]]) + "\n")

    def log_event(self, metrics, step: int) -> None:
        pass

    def log_checkpoint(self, uri: str, epoch: int, step: int, metrics) -> None:
        failed = self.path.with_suffix(".failed")
        if epoch == self.fail_after_epoch and not failed.exists():
            failed.touch()
            raise RuntimeError(f"interrupted after the epoch-{epoch} checkpoint")

    def close(self) -> None:
        pass

    def losses(self) -> list[tuple[int, float]]:
        return [tuple(json.loads(line)) for line in self.path.read_text().splitlines()]


def fit(name: str, storage: Path, reporter: FileReporter) -> None:
    spec = validate_spec(
        {
            "model": TINY_MODEL_SPEC,
            "data": {
                "source": "shapes",
                "num_images": 128,
                "shuffle": "none",
                "crop_scale": None,
                "hflip": False,
            },
            "train": {"epochs": EPOCHS, "batch_size": 32, "max_failures": 1},
            "scaling": {"num_workers": 1},
        }
    )
    _, schedule = check_trainable(spec)
    assert schedule.steps_per_epoch == STEPS_PER_EPOCH
    build_trainer(spec, name, str(storage), schedule, reporter).fit()


@pytest.fixture
def stored_order():
    """Ray Data hands blocks over as its tasks finish unless told to keep their order."""
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    yield
    options.preserve_order = before


def test_a_resumed_run_takes_the_uninterrupted_runs_steps(
    ray_session, stored_order, tmp_path, capsys
):
    whole = FileReporter(tmp_path / "whole.jsonl")
    fit("whole", tmp_path / "ray", whole)
    cut = FileReporter(tmp_path / "cut.jsonl", fail_after_epoch=1)
    fit("cut", tmp_path / "ray", cut)  # the failed attempt is retried from its checkpoint

    assert (tmp_path / "cut.failed").exists()  # it was interrupted
    assert (tmp_path / "ray" / "cut" / "checkpoint_epoch_0001" / CHECKPOINT_FILE).is_file()
    uninterrupted, resumed = whole.losses(), cut.losses()
    steps = list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    # Each step trained once: the resumed attempt started after the epoch-1 checkpoint.
    assert [s for s, _ in uninterrupted] == steps and [s for s, _ in resumed] == steps
    with capsys.disabled():
        print("\nstep  uninterrupted  interrupted+resumed")
        for (step, a), (_, b) in zip(uninterrupted, resumed, strict=True):
            mark = "  <- resumed here" if step == STEPS_PER_EPOCH + 1 else ""
            print(f"{step:>4}  {a:.8f}     {b:.8f}{mark}")
    for (step, a), (_, b) in zip(uninterrupted, resumed, strict=True):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7), f"step {step}: {a} vs {b}"
