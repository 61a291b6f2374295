"""A preemption costs a few steps, not the partial epoch: on a local multi-node Ray cluster, the
node of a 2-worker run is drained with the preemption reason while it trains (`ray drain-node
--reason DRAIN_NODE_REASON_PREEMPTION`, as a cloud's spot reclaim is reported to Ray). The
workers read the notice (`ray.train.get_preemption_info()`) and save a checkpoint at the next
step; then the deadline is brought forward (the reclaim), and Ray Train restarts the workers on
another node from that step, with `train.max_failures: 0`: a preemption is counted apart from
failures, or the run would end there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time

import pytest
from local_ray_cluster import RAY, LocalRayCluster
from tiny_model import TINY_MODEL
from waiting import wait_until

pytestmark = pytest.mark.slow

# The notice reaches the workers seconds after the drain (10-15 s seen on a loaded machine:
# the CLI, the watcher's poll, a step), and the restart needs a few more: the epochs after the
# first leave it time to land before the run ends, also on an idle machine where an epoch
# takes under 2 s. The test stops the run once the resumed attempt has ended an epoch.
EPOCHS, STEPS_PER_EPOCH = 16, 48  # 1,536 images / batch 32
DEADLINE_S = 300  # the notice's window; cut short once the checkpoint is in
SETTINGS = [
    *TINY_MODEL,
    "data.num_images=1536",
    "train.batch_size=32",
    f"train.epochs={EPOCHS}",
    "train.warmup_epochs=0",
    "train.max_failures=0",
    # The final epoch's checkpoint only: the workers keep training after their checkpoint at
    # the notice (as Ray recommends: a notice may be withdrawn), and an epoch's checkpoint
    # saved before the node goes would be resumed from instead.
    f"train.checkpoint_every={EPOCHS}",
    "scaling.num_workers=2",
    "scaling.cpus_per_worker=0.25",
    # Only nodes offering `trainer` host workers: the drained node, then its replacement.
    'scaling.worker_resources={"trainer": 0.5}',
    "tracking.experiment=preempt",
    "tracking.system_metrics=false",
]


NOTICE = re.compile(r"preemption notice: checkpoint at step (\d+)")


def registered(run_path) -> str:
    """Ray Train's record of the run's checkpoints (what a restart resumes from)."""
    snapshot = run_path / "checkpoint_manager_snapshot.json"
    return snapshot.read_text() if snapshot.exists() else ""


def test_a_preempted_run_checkpoints_at_the_notice_and_resumes_from_that_step(
    workdir, cluster_temp_dir
):
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        cluster = LocalRayCluster(cluster_temp_dir, token_auth=False)
        stack.callback(cluster.stop)
        # Ray Train's preemption watcher polls the drain state every 5 s by default.
        cluster.env["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"] = "0.5"
        cluster.start_head(num_cpus=2)
        cluster.add_node(num_cpus=1, resources={"trainer": 1})
        spot = [n for n in cluster.alive_nodes() if "trainer" in n["resources_total"]]
        env = {
            **os.environ,
            "RAY_ADDRESS": cluster.gcs_address,
            "RAY_AUTH_MODE": "disabled",
            # A progress line within the first epoch, however short the epoch is.
            "MIMRAY_PROGRESS_EVERY_S": "0.5",
        }
        sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
        log_path = workdir / "run.log"
        with log_path.open("w") as log:
            run = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "pretrain", "demo", "--name", "spot"] + sets,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        stack.callback(lambda: run.poll() is None and os.killpg(run.pid, 9))

        def output() -> str:
            return log_path.read_text()

        def ended() -> str | None:
            return None if run.poll() is None else f"the run ended:\n{output()[-3000:]}"

        # Training has started (the first progress line).
        wait_until(lambda: f"epoch 1/{EPOCHS}  step" in output(), 600, "a step", give_up=ended)

        def drain(deadline_s: int) -> None:
            subprocess.run(
                [
                    RAY,
                    "drain-node",
                    f"--address={cluster.gcs_address}",
                    f"--node-id={spot[0]['node_id']}",
                    "--reason=DRAIN_NODE_REASON_PREEMPTION",
                    "--reason-message=spot reclaim (test)",
                    f"--deadline-remaining-seconds={deadline_s}",
                ],
                env={**cluster.env},
                check=True,
                capture_output=True,
            )

        drain(DEADLINE_S)
        drained_at = time.monotonic()
        cluster.add_node(num_cpus=1, resources={"trainer": 1})  # where the restart goes
        notice = wait_until(
            lambda: NOTICE.search(output()), 300, "the checkpoint at the notice", give_up=ended
        )
        step = int(notice.group(1))
        run_path = workdir / "mimray-runs" / "ray" / "spot"
        folder = run_path / f"checkpoint_epoch_{step // STEPS_PER_EPOCH:04d}_step_{step:08d}"
        wait_until(lambda: folder.name in registered(run_path), 60, "the checkpoint registered")
        # The reclaim comes now: a drain with a deadline that has all but passed. Ray Train
        # restarts the group at the deadline and counts it as a preemption.
        drain(1)
        # The restarted group resumes and trains on: the epoch the notice cut ends after the
        # resume. The run is stopped there; the epochs after it train like any others.
        next_epoch_end = f"epoch {step // STEPS_PER_EPOCH + 1}/{EPOCHS}  loss"

        def trained_after_the_resume() -> bool:
            out = output()
            resumed_at = out.find("resuming at epoch")
            return resumed_at >= 0 and next_epoch_end in out[resumed_at:]

        def ended_without_it() -> str | None:
            # Asked again after the run ended: its last lines may have come meanwhile.
            return None if trained_after_the_resume() else ended()

        wait_until(trained_after_the_resume, 600, next_epoch_end, give_up=ended_without_it)
        out = output()
        took = time.monotonic() - started
        print(f"drained at {drained_at - started:.0f} s; resumed epoch done at {took:.0f} s")

    # Mid-epoch: past the last epoch boundary.
    assert step % STEPS_PER_EPOCH, out[-4000:]
    resumed = re.search(
        rf"resuming at epoch {step // STEPS_PER_EPOCH} \(step {step}\) from (\S+)", out
    )
    assert resumed and resumed.group(1) == str(folder), out[-4000:]
    # Every rank's random state went into the checkpoint, beside rank 0's training state.
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint.pt",
        "random_state_rank_0000.pt",
        "random_state_rank_0001.pt",
        "spec.json",
    ]
    # The run trained on after the resume with 0 failures allowed: the restart was not
    # counted against train.max_failures (one counted failure would have ended the run).
    assert out.index(resumed.group(0)) < out.rindex(next_epoch_end)
    assert json.loads((folder / "spec.json").read_text())["train"]["max_failures"] == 0
