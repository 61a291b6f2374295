"""The console of `mimray demo` reads as mimray's progress: its own lines, warnings and errors,
nothing else; Ray's, Ray Data's, Tune's and MLflow's lines go to the session log it names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL

from workloads.progress import EpochProgress, progress_line

# Lines mimray prints that are not `[mimray] ...`: its run summary table.
TABLE = re.compile(r"^\s*([┌┏│┃├└┗╭╰─━]|mimray run ')")
WARNING_OR_ERROR = re.compile(r"\b(WARNING|ERROR|Warning|Error)\b")


def test_progress_line_every_interval_and_none_after_the_last_step(capsys):
    progress = EpochProgress(2, 5, steps=4, every_s=0.0, interactive=False)
    lines = [progress.update(step, 0.5, images=32) for step in (1, 2, 3, 4)]
    assert lines[3] is None  # the epoch's own line follows its last step
    assert lines[0].startswith("epoch 2/5  step 1/4  loss 0.5000  ")
    assert re.search(r"\d+ img/s  ETA \d+s$", lines[2])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"[mimray] {line}" for line in lines[:3]]
    quiet = EpochProgress(1, 1, steps=10, every_s=3600.0, interactive=False)
    assert [quiet.update(s, 1.0, 8) for s in range(1, 10)] == [None] * 9  # not due yet
    assert progress_line(1, 2, 3, 4, 0.25, 100.0, 7.4) == (
        "epoch 1/2  step 3/4  loss 0.2500  100 img/s  ETA 7s"
    )


@pytest.mark.slow
def test_demo_console_is_mimrays_lines_with_in_epoch_progress(workdir, ray_session):
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "MIMRAY_PROGRESS_EVERY_S": "0",  # a line every step: the epochs here are short
    }
    overrides = [
        *TINY_MODEL,
        "train.epochs=2",
        "data.num_images=256",
        "train.batch_size=64",
        "tracking.system_metrics=false",
    ]
    command = [sys.executable, "-m", "orchestrator", "demo", "--name", "console"]
    for item in overrides:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    lines = [line for line in output.splitlines() if line.strip()]
    strangers = [
        line
        for line in lines
        if not line.startswith("[mimray]")
        and not TABLE.match(line)
        and not WARNING_OR_ERROR.search(line)
    ]
    assert not strangers, "\n".join(strangers)
    # In-epoch progress from rank 0 of the 2 Ray Train workers, then the epoch's own line.
    steps = [line for line in lines if re.match(r"\[mimray\] epoch 1/2  step \d/4  loss", line)]
    assert len(steps) == 3, output
    assert any(line.startswith("[mimray] epoch 2/2  loss") for line in lines)
    # What left the console is in the log file it names.
    (log_line,) = [line for line in lines if "logs: " in line and line.startswith("[mimray]")]
    log = Path(log_line.split("logs: ", 1)[1])
    # Ray's own connect lines, which would otherwise be on the console (MLflow adds its
    # lines only when it has something to say at INFO, e.g. a new store's migrations).
    assert log.is_file() and "Connected to Ray cluster" in log.read_text()
    assert len(lines) < 40, output  # was 73 lines of which 22 mimray's
