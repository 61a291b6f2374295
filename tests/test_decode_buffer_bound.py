"""The decode stage's in-flight buffers stay under `OBJECT_STORE_SHARE` of the object store,
on any node size (`workloads/data/decode_stage.py`, `decode_plan`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from workloads.data.decode_stage import (
    BLOCK_BYTES,
    OBJECT_STORE_SHARE,
    TASK_OUTPUT_BUFFER_BLOCKS,
    TASKS_PER_CPU,
    decode_plan,
)

GIB = 2**30
RAY_MIN_OBJECT_STORE = 75 * 2**20  # the smallest object store Ray starts with


@pytest.mark.parametrize("cpus", [1, 2, 8, 32, 96, 192, 384])
@pytest.mark.parametrize("store", [RAY_MIN_OBJECT_STORE, 1 * GIB, 8 * GIB, 64 * GIB, 200e9])
def test_buffers_stay_under_the_share_of_any_object_store(cpus, store):
    plan = decode_plan(cpus, store)
    assert plan.buffer_bytes <= OBJECT_STORE_SHARE * store, plan
    assert plan.tasks >= 1 and 1 <= plan.buffer_blocks <= TASK_OUTPUT_BUFFER_BLOCKS
    if TASKS_PER_CPU * cpus * TASK_OUTPUT_BUFFER_BLOCKS * BLOCK_BYTES <= OBJECT_STORE_SHARE * store:
        # Room enough: the measured defaults, untouched.
        assert (plan.tasks, plan.buffer_blocks) == (TASKS_PER_CPU * cpus, 8)
    elif plan.buffer_blocks > 1:
        # Bound by memory: blocks give way before tasks do.
        assert plan.tasks == TASKS_PER_CPU * cpus, plan


def test_a_192_cpu_node_with_a_200_gb_store_keeps_every_cpu_decoding():
    plan = decode_plan(192, 200e9)
    assert plan.tasks == 2 * 192 and plan.buffer_blocks >= 4
    assert plan.buffer_bytes <= OBJECT_STORE_SHARE * 200e9


# Ray with 192 logical CPUs and a 1 GiB object store, without prestarting a worker per CPU: the
# stream as training builds it must take its plan from that cluster, and run. Two shards: two
# decode tasks, so two worker processes, whatever the plan allows.
STREAM_ON_192_CPUS = textwrap.dedent(
    """
    import json, sys
    import ray
    from workloads.data import Augmentation, build_dataset
    from workloads.data.decode_stage import cluster_decode_plan
    from workloads.data.push import push_dataset

    ray.init(address="local", num_cpus=192, object_store_memory=2**30, include_dashboard=False,
             log_to_driver=False)
    push_dataset("shapes", sys.argv[1], shard_bytes=100_000, img_size=32, num_images=96)
    plan = cluster_decode_plan()
    dataset = build_dataset(sys.argv[1], img_size=32, augmentation=Augmentation(), order_seed=0)
    rows = sum(len(b["image"]) for b in dataset.iter_batches(batch_size=32))
    print(json.dumps({
        "cpus": ray.cluster_resources()["CPU"],
        "store": ray.cluster_resources()["object_store_memory"],
        "tasks": plan.tasks, "blocks": plan.buffer_blocks, "bytes": plan.buffer_bytes,
        "context_blocks": dataset.context._max_num_blocks_in_streaming_gen_buffer,
        "rows": rows,
    }))
    """
)


def test_stream_on_192_logical_cpus_plans_by_its_object_store(tmp_path):
    environment = {
        **os.environ,
        "RAY_enable_worker_prestart": "0",
        "RAY_prestart_worker_first_driver": "0",
        "RAY_ADDRESS": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", STREAM_ON_192_CPUS, str(tmp_path / "shards")],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["cpus"] == 192
    # Unbounded, 384 tasks × 8 blocks × 16 MiB would be 48 GiB in a 1 GiB store.
    assert seen["bytes"] <= OBJECT_STORE_SHARE * seen["store"], seen
    assert seen["context_blocks"] == seen["blocks"], seen
    assert seen["rows"] == 96
