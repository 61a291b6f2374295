"""A Ray pod's preStop hook: tell Ray its node is being preempted, then wait for Ray's work on
it to move.

Kubernetes takes a pod away with notice: Karpenter drains a node whose spot instance EC2 is
reclaiming, GKE shuts a spot VM down gracefully, an operator evicts it. Each time the pod's
preStop hook runs first. Without this hook Ray would only see a dead node: Ray Train charges
the lost worker group to `train.max_failures`. Drained with reason
DRAIN_NODE_REASON_PREEMPTION (Ray's `ray drain-node`, the command the autoscaler's own drain
uses), the loss is a preemption: Ray Train's preemption watcher tells the workers
(`ray.train.get_preemption_info()`), mimray's loop checkpoints at the next step, and the
worker group restarts elsewhere without spending `max_failures`.

The hook then waits while Ray actors still live on the node (the worker group leaving it),
at most the grace period it was given, so Kubernetes does not kill the container under a
checkpoint being written. A pod the Ray autoscaler removes as idle has none: it returns at once.

    python -m orchestrator.cluster.pod_drain --grace-seconds 110

The pod's Ray node is found by its IP (`MIMRAY_NODE_IP`, from the pod's status.podIP).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

# Left for Kubernetes between this hook's end and the grace period's: SIGTERM, then exit.
MARGIN_S = 5.0
POLL_S = 2.0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.cluster.pod_drain")
    parser.add_argument("--grace-seconds", type=int, default=110, help="the pod's notice")
    parser.add_argument("--node-ip", default=os.environ.get("MIMRAY_NODE_IP"))
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "auto"))
    return parser.parse_args(argv)


def node_with_ip(nodes: list[dict], ip: str) -> str | None:
    """The id of the one live Ray node at `ip` (from `ray.nodes()`), or None."""
    alive = [n["NodeID"] for n in nodes if n.get("Alive") and n.get("NodeManagerAddress") == ip]
    return alive[0] if len(alive) == 1 else None


def drain_command(address: str, node_id: str, grace_s: int) -> list[str]:
    return [
        "ray",
        "drain-node",
        "--address",
        address,
        "--node-id",
        node_id,
        "--reason",
        "DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message",
        f"Kubernetes is terminating this pod ({grace_s} s notice)",
        "--deadline-remaining-seconds",
        str(grace_s),
    ]


def actors_on(node_id: str) -> int:
    """Live actors on the node (Ray Train workers, Tune trials), from Ray's state API."""
    from ray.util.state import list_actors

    return len(list_actors(filters=[("node_id", "=", node_id), ("state", "=", "ALIVE")]))


def main(argv: list[str]) -> int:
    args = parse(argv)
    started = time.monotonic()
    if not args.node_ip:
        print("pod_drain: no node IP (set MIMRAY_NODE_IP or --node-ip)", file=sys.stderr)
        return 2
    import ray

    ray.init(address=args.address, log_to_driver=False, logging_level="WARNING")
    node_id = node_with_ip(ray.nodes(), args.node_ip)
    if node_id is None:
        print(f"pod_drain: no single live Ray node at {args.node_ip}", file=sys.stderr)
        return 2
    gcs = ray.get_runtime_context().gcs_address
    drained = subprocess.run(drain_command(gcs, node_id, args.grace_seconds), check=False)
    if drained.returncode != 0:  # e.g. already draining as idle: nothing to protect
        return 0
    deadline = started + args.grace_seconds - MARGIN_S
    while time.monotonic() < deadline:
        try:
            if actors_on(node_id) == 0:
                break
        except Exception as err:  # noqa: BLE001 - the state API briefly away: keep waiting
            print(f"pod_drain: {err}", file=sys.stderr)
        time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
