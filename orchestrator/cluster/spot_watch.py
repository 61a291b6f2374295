"""Tell Ray when the cloud is about to reclaim this spot node, so the loss is a preemption.

A reclaimed node that Ray was not told about is just a dead node: Ray Train charges the
lost worker group to `train.max_failures`, and the third loss of the night errors the trial.
Ray 2.60 counts preemptions apart (`FailureConfig.max_preemption_failures`, unlimited by
default) when the node was drained first: Train's preemption watcher sees the drain, waits out
its deadline and restarts the worker group from the last checkpoint without spending
`max_failures`.

This watcher runs beside `ray start` on each spot node (worker_start_ray_commands in
cluster/aws.yaml and gcp.yaml), polls the cloud's metadata server, and on a notice drains its
own node with reason DRAIN_NODE_REASON_PREEMPTION (`ray drain-node`, Ray's own CLI):

- AWS: `/latest/meta-data/spot/instance-action` (IMDSv2) answers 404 until EC2 schedules the
  interruption, then `{"action": "terminate", "time": "...Z"}`, about two minutes ahead;
- GCP: `/computeMetadata/v1/instance/preempted` turns `TRUE` about 30 seconds ahead.

The drain's deadline is the moment the node goes, not a fixed span from when the drain is sent:
the watcher may see a notice up to one poll late and needs seconds more to find its node id,
and on GCP's 30 s notice those seconds matter. So a notice becomes an absolute deadline when it
is read (AWS gives the time; on GCP the notice began after the last poll that saw none), and
the seconds left are counted from that deadline when the drain command is built.

    python -m orchestrator.cluster.spot_watch aws|gcp
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime

AWS_IMDS = "http://169.254.169.254/latest"
GCP_METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/preempted"
GCP_NOTICE_S = 30  # GCP's documented preemption notice
POLL_S = 5.0


def aws_deadline(status: int, body: str) -> float | None:
    """When EC2 reclaims this instance (epoch seconds), or None while nothing is scheduled."""
    if status != 200:
        return None
    notice = json.loads(body)
    if notice.get("action") not in ("terminate", "stop", "hibernate"):
        return None
    return datetime.fromisoformat(notice["time"].replace("Z", "+00:00")).timestamp()


def gcp_deadline(body: str, last_quiet_poll: float) -> float | None:
    """When GCP reclaims this VM (epoch seconds), or None while it is not being preempted.
    The flag turned TRUE after `last_quiet_poll` (the last poll that saw none), so the notice
    ends at most GCP_NOTICE_S later: the earliest end that may be true, hence the safe one."""
    return last_quiet_poll + GCP_NOTICE_S if body.strip().upper() == "TRUE" else None


def seconds_left(deadline: float, now: float) -> int:
    """Whole seconds from `now` to `deadline`, never negative (Ray's CLI wants an int >= 0)."""
    return max(0, int(deadline - now))


def drain_command(node_id: str, seconds_left: int, cloud: str) -> list[str]:
    return [
        "ray",
        "drain-node",
        "--address",
        "auto",
        "--node-id",
        node_id,
        "--reason",
        "DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message",
        f"{cloud} spot instance reclaimed in {seconds_left} s",
        "--deadline-remaining-seconds",
        str(seconds_left),
    ]


def drain_on_notice(
    cloud: str,
    poll: Callable[[float], float | None],
    node_id: Callable[[], str],
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Wait for the cloud's notice, then the drain command with the seconds really left."""
    deadline = wait_for_notice(poll, clock, sleep)
    this_node = node_id()  # takes seconds of its own (ray.init): counted below, not ignored
    return drain_command(this_node, seconds_left(deadline, clock()), cloud)


def _http(url: str, headers: dict[str, str], method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def _poll_aws(last_quiet_poll: float) -> float | None:
    _, token = _http(
        f"{AWS_IMDS}/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"}, method="PUT"
    )
    status, body = _http(
        f"{AWS_IMDS}/meta-data/spot/instance-action", {"X-aws-ec2-metadata-token": token}
    )
    return aws_deadline(status, body)


def _poll_gcp(last_quiet_poll: float) -> float | None:
    return gcp_deadline(_http(GCP_METADATA, {"Metadata-Flavor": "Google"})[1], last_quiet_poll)


def wait_for_notice(
    poll: Callable[[float], float | None],
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Poll until the cloud announces the end of this node; that end, in epoch seconds."""
    last_quiet_poll = clock()  # a notice already up at start began no earlier than this
    while True:
        polled_at = clock()
        try:
            deadline = poll(last_quiet_poll)
        except (OSError, ValueError) as err:  # metadata server briefly away: try again
            print(f"spot_watch: {err}", file=sys.stderr)
            deadline = None
        if deadline is not None:
            return deadline
        last_quiet_poll = polled_at
        sleep(POLL_S)


def _this_node_id() -> str:
    import ray

    ray.init(address="auto", log_to_driver=False)
    try:
        return ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("aws", "gcp"):
        print("usage: python -m orchestrator.cluster.spot_watch aws|gcp", file=sys.stderr)
        return 2
    cloud = argv[0]
    command = drain_on_notice(cloud, _poll_aws if cloud == "aws" else _poll_gcp, _this_node_id)
    print("spot_watch: " + " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
