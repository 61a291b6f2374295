"""A pretrain checkpoint: its files, how the loop writes one and resumes from one, and how
evaluation reads one back from its URI (a local folder or `s3://`).

A checkpoint is a folder in the run's Ray storage, `checkpoint_epoch_NNNN` after N epochs or
`checkpoint_epoch_NNNN_step_SSSSSSSS` when taken mid-epoch (at a preemption notice), holding
`checkpoint.pt` (model, optimizer and scaler state, epochs completed, global step, spec),
`spec.json` (the spec alone, so an evaluation can size its encoder without loading weights) and
one `random_state_rank_RRRR.pt` per worker: the random generators that worker's loop draws
from (torch's, CUDA's, numpy's, Python's; masks and noise come from torch's), so a resumed
run draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from workloads.console import say
from workloads.data.object_store import filesystem_for
from workloads.distributed import unwrap
from workloads.run_reporter import Reporter

if TYPE_CHECKING:
    import ray.train

CHECKPOINT_FILE = "checkpoint.pt"
SPEC_FILE = "spec.json"
# Logged once per resume: epochs completed in the loaded checkpoint, at the step resumed at.
RESUME_METRIC = "resume/from_epoch"


def checkpoint_dir_name(epoch: int, step: int | None = None) -> str:
    """The folder of the checkpoint taken after `epoch` epochs (1 -> checkpoint_epoch_0001),
    or mid-epoch at global step `step` (checkpoint_epoch_0001_step_00000012)."""
    name = f"checkpoint_epoch_{epoch:04d}"
    return name if step is None else f"{name}_step_{step:08d}"


def random_state_file(rank: int) -> str:
    return f"random_state_rank_{rank:04d}.pt"


def write_random_state(folder: str, rank: int, device: torch.device) -> None:
    """This worker's random generators, into `folder` (every worker writes its own file)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    torch.save(state, os.path.join(folder, random_state_file(rank)))


def restore_random_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def write_checkpoint(
    folder: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    epoch: int,
    step: int,
    spec: dict[str, Any],
) -> None:
    """The state of training after `epoch` epochs (`step` global steps), into `folder`."""
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "spec": spec,
    }
    torch.save(state, os.path.join(folder, CHECKPOINT_FILE))
    with open(os.path.join(folder, SPEC_FILE), "w") as f:
        json.dump(spec, f)


@dataclass(frozen=True)
class ResumePoint:
    """Where a restarted or re-run loop continues: the state of its last checkpoint."""

    epoch: int  # epochs completed in the checkpoint: the loop continues with the next one
    step: int  # global steps taken: the next step's number
    location: str  # the checkpoint folder, as a URI
    state: dict[str, Any]
    # This worker's random generators when the checkpoint was taken; None in checkpoints
    # written before they held them, or by a run with fewer workers.
    random_state: dict[str, Any] | None = None

    def steps_into_epoch(self, steps_per_epoch: int) -> int:
        """Steps of the unfinished epoch already trained (0 at an epoch boundary)."""
        return self.step - self.epoch * steps_per_epoch

    def restore_weights(self, model: nn.Module, scaler: torch.amp.GradScaler) -> None:
        """Before the model moves to its device and is wrapped (the state holds bare keys)."""
        model.load_state_dict(self.state["model"])
        scaler.load_state_dict(self.state["scaler"])

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        # After the model's move to the device: load_state_dict puts the optimizer state on its
        # parameters' device, so loaded before the move it stays on the CPU and step() fails.
        optimizer.load_state_dict(self.state["optimizer"])


def resume_point(checkpoint: ray.train.Checkpoint | None, rank: int = 0) -> ResumePoint | None:
    """The state of the checkpoint a (re)started worker resumes from, with worker `rank`'s
    random generators; None on a fresh run."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        # CPU first: a GPU checkpoint would otherwise land on the saving rank's GPU.
        state = torch.load(
            os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=False
        )
        random_path = os.path.join(folder, random_state_file(rank))
        random_state = (
            torch.load(random_path, weights_only=False) if os.path.exists(random_path) else None
        )
    uri = checkpoint_uri(checkpoint)
    return ResumePoint(state["epoch"], state["step"], uri, state, random_state)


def record_resume(point: ResumePoint, reporter: Reporter, rank: int) -> None:
    """The worker's own record that it continued from a checkpoint rather than from scratch:
    a console line and one `resume/from_epoch` point per resume (rank 0)."""
    if rank != 0:
        return
    say(f"resuming at epoch {point.epoch} (step {point.step}) from {point.location}")
    reporter.log_event({RESUME_METRIC: float(point.epoch)}, point.step)


def checkpoint_uri(checkpoint: ray.train.Checkpoint) -> str:
    """A Ray checkpoint's folder as a URI: `s3://bucket/...` in object storage, else a path."""
    scheme = checkpoint.filesystem.type_name
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


def read_checkpoint_state(uri: str) -> dict[str, Any]:
    """The state a pretrain checkpoint saved (model, spec, epoch, ...), from local or s3://."""
    filesystem, path = filesystem_for(uri)
    with filesystem.open_input_file(f"{path.rstrip('/')}/{CHECKPOINT_FILE}") as stream:
        payload = stream.read()
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def read_checkpoint_spec(uri: str) -> dict[str, Any]:
    """The run spec (as a dict) a pretrain checkpoint was trained with; FileNotFoundError
    when the checkpoint is gone (e.g. pruned by `train.keep_checkpoints`)."""
    filesystem, path = filesystem_for(uri)
    try:
        with filesystem.open_input_file(f"{path.rstrip('/')}/{SPEC_FILE}") as stream:
            return json.loads(stream.read())
    except FileNotFoundError:  # checkpoints written before spec.json existed
        return read_checkpoint_state(uri)["spec"]
