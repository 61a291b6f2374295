"""A pretrain checkpoint: its files, how the loop writes one and resumes from one, and how
evaluation reads one back from its URI (a local folder or `s3://`).

A checkpoint is a folder `checkpoint_epoch_NNNN` in the run's Ray storage holding
`checkpoint.pt` (model, optimizer and scaler state, epochs completed, global step, spec) and
`spec.json` (the spec alone, so an evaluation can size its encoder without loading weights).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


def checkpoint_dir_name(epoch: int) -> str:
    """The folder of the checkpoint taken after `epoch` epochs (1 -> checkpoint_epoch_0001)."""
    return f"checkpoint_epoch_{epoch:04d}"


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

    def restore_weights(self, model: nn.Module, scaler: torch.amp.GradScaler) -> None:
        """Before the model moves to its device and is wrapped (the state holds bare keys)."""
        model.load_state_dict(self.state["model"])
        scaler.load_state_dict(self.state["scaler"])

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        # After the model's move to the device: load_state_dict puts the optimizer state on its
        # parameters' device, so loaded before the move it stays on the CPU and step() fails.
        optimizer.load_state_dict(self.state["optimizer"])


def resume_point(checkpoint: ray.train.Checkpoint | None) -> ResumePoint | None:
    """The state of the checkpoint Ray Train hands a (re)started worker; None on a fresh run."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        # CPU first: a GPU checkpoint would otherwise land on the saving rank's GPU.
        state = torch.load(
            os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=False
        )
    return ResumePoint(state["epoch"], state["step"], checkpoint_uri(checkpoint), state)


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
