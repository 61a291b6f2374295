"""The random-init baseline of a pretrain run: its untrained encoder, kept as an epoch-0 checkpoint.

Whether pretraining helped is only readable next to the same encoder before pretraining. The
pretrain loop seeds torch with `train.seed * 1000 + rank` right before building the model and
rank 0 saves the checkpoints, so seeding the same way and building the same spec here gives,
bit for bit, the weights the run started from (a check the tests make). They are written in
the files of any checkpoint and recorded as the run's LoggedModel `checkpoint-epoch-0000`
(epoch 0, step 0), so evaluations, lineage and `mimray report` (`knn@e0` columns) treat the
baseline like every other checkpoint: the same eval code, run and links.

The folder is `<run path>/random_init/checkpoint_epoch_0000`, not a direct child of the run
path: resuming looks for `checkpoint_epoch_N` folders there, and must never pick this one.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from torch import nn

from orchestrator.tracking import Tracker
from orchestrator.tracking.lookup import RunReader, TrackedRun, checkpoint_models
from workloads.checkpoint import CHECKPOINT_FILE, SPEC_FILE
from workloads.data.object_store import filesystem_for
from workloads.pretrain import build_model

BASELINE_EPOCH = 0
BASELINE_FOLDER = "random_init/checkpoint_epoch_0000"


def initial_model(spec: dict[str, Any]) -> nn.Module:
    """The model a pretrain run with `spec` starts from (rank 0's, as the loop builds it)."""
    torch.manual_seed(spec["train"]["seed"] * 1000)  # the loop's seed for rank 0
    return build_model(spec)


def baseline_uri(run_path: str) -> str:
    return f"{run_path.rstrip('/')}/{BASELINE_FOLDER}"


def write_baseline_checkpoint(spec: dict[str, Any], run_path: str) -> str:
    """Save the untrained model of `spec` as a checkpoint under `run_path`; its URI.

    Local folders and s3:// alike (the storage of the run)."""
    uri = baseline_uri(run_path)
    filesystem, path = filesystem_for(uri)
    filesystem.create_dir(path, recursive=True)
    state = {"model": initial_model(spec).state_dict(), "epoch": 0, "step": 0, "spec": spec}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with filesystem.open_output_stream(f"{path}/{CHECKPOINT_FILE}") as stream:
        stream.write(buffer.getvalue())
    with filesystem.open_output_stream(f"{path}/{SPEC_FILE}") as stream:
        stream.write(json.dumps(spec).encode())
    return uri


def ensure_baseline_model(
    reader: RunReader, tracker: Tracker, run: TrackedRun, spec: dict[str, Any], run_path: str
) -> None:
    """Record the run's epoch-0 checkpoint (write it and its LoggedModel) unless it exists."""
    if any(
        int(m.params.get("epoch", -1)) == BASELINE_EPOCH for m in checkpoint_models(reader, run)
    ):
        return
    uri = write_baseline_checkpoint(spec, run_path)
    reporter = tracker.reporter(run.run_id, system_metrics=False)
    reporter.start()
    try:
        reporter.log_checkpoint(uri, BASELINE_EPOCH, 0, {})
    finally:
        reporter.close()
