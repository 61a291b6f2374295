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

    python -m orchestrator.spot_watch aws|gcp
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

AWS_IMDS = "http://169.254.169.254/latest"
GCP_METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/preempted"
GCP_NOTICE_S = 30  # GCP's documented preemption notice
POLL_S = 5.0


def aws_seconds_left(status: int, body: str, now: datetime) -> int | None:
    """Seconds until EC2 reclaims this instance, or None while no interruption is scheduled."""
    if status != 200:
        return None
    notice = json.loads(body)
    if notice.get("action") not in ("terminate", "stop", "hibernate"):
        return None
    when = datetime.fromisoformat(notice["time"].replace("Z", "+00:00"))
    return max(0, int((when - now).total_seconds()))


def gcp_seconds_left(body: str) -> int | None:
    """GCP's notice: the metadata value turns TRUE when the VM is being preempted."""
    return GCP_NOTICE_S if body.strip().upper() == "TRUE" else None


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


def _http(url: str, headers: dict[str, str], method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def _poll_aws() -> int | None:
    _, token = _http(
        f"{AWS_IMDS}/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"}, method="PUT"
    )
    status, body = _http(
        f"{AWS_IMDS}/meta-data/spot/instance-action", {"X-aws-ec2-metadata-token": token}
    )
    return aws_seconds_left(status, body, datetime.now(timezone.utc))


def _poll_gcp() -> int | None:
    return gcp_seconds_left(_http(GCP_METADATA, {"Metadata-Flavor": "Google"})[1])


def _this_node_id() -> str:
    import ray

    ray.init(address="auto", log_to_driver=False)
    try:
        return ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("aws", "gcp"):
        print("usage: python -m orchestrator.spot_watch aws|gcp", file=sys.stderr)
        return 2
    cloud = argv[0]
    poll = _poll_aws if cloud == "aws" else _poll_gcp
    while True:
        try:
            seconds_left = poll()
        except (OSError, ValueError) as err:  # metadata server briefly away: try again
            print(f"spot_watch: {err}", file=sys.stderr)
            seconds_left = None
        if seconds_left is not None:
            command = drain_command(_this_node_id(), seconds_left, cloud)
            print("spot_watch: " + " ".join(command), flush=True)
            return subprocess.run(command, check=False).returncode
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
