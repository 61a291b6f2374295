"""orchestrator/cluster/spot_watch.py: reading the clouds' interruption notices, and draining the
node with a reason Ray's own CLI accepts. No cloud: the metadata answers are the documented ones."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from orchestrator.cluster import spot_watch

NOW = datetime(2026, 11, 29, 22, 0, 0, tzinfo=timezone.utc).timestamp()


def test_aws_notice_gives_the_moment_the_instance_goes():
    notice = json.dumps({"action": "terminate", "time": "2026-11-29T22:02:00Z"})
    assert spot_watch.aws_deadline(200, notice) == NOW + 120
    assert spot_watch.seconds_left(spot_watch.aws_deadline(200, notice), NOW) == 120
    late = json.dumps({"action": "stop", "time": "2026-11-29T21:59:00Z"})
    assert spot_watch.seconds_left(spot_watch.aws_deadline(200, late), NOW) == 0


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, ""), (200, json.dumps({"action": "none", "time": "2026-11-29T22:02:00Z"}))],
)
def test_aws_without_a_notice_is_quiet(status, body):
    assert spot_watch.aws_deadline(status, body) is None


def test_gcp_preempted_flag():
    assert spot_watch.gcp_deadline("TRUE", NOW) == NOW + spot_watch.GCP_NOTICE_S
    assert spot_watch.gcp_deadline("FALSE\n", NOW) is None


class FakeClock:
    """Time that passes only when the watcher sleeps or the test says so."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_gcp_drain_deadline_counts_the_time_already_gone():
    """GCP's flag turns TRUE 3 s after a quiet poll; the watcher sees it at its next poll and
    spends 7 s finding its node id: the drain gets 30 - 5 - 7 = 18 s (counted from the quiet
    poll, the earliest the notice may have begun), not a fresh 30."""
    clock = FakeClock(NOW)
    preempted_at = NOW + 3

    def metadata(last_quiet_poll: float) -> float | None:
        body = "TRUE" if clock() >= preempted_at else "FALSE"
        return spot_watch.gcp_deadline(body, last_quiet_poll)

    def node_id() -> str:
        clock.now += 7  # ray.init to learn the node id
        return "ab" * 28

    command = spot_watch.drain_on_notice("gcp", metadata, node_id, clock, clock.sleep)
    left = int(command[command.index("--deadline-remaining-seconds") + 1])
    assert left == spot_watch.GCP_NOTICE_S - spot_watch.POLL_S - 7
    # Never past the real end: a drain may not promise time the VM does not have.
    assert clock() + left <= preempted_at + spot_watch.GCP_NOTICE_S


def test_aws_drain_deadline_is_the_notice_time():
    clock = FakeClock(NOW)
    notice = json.dumps({"action": "terminate", "time": "2026-11-29T22:02:00Z"})

    def metadata(last_quiet_poll: float) -> float | None:
        return spot_watch.aws_deadline(200, notice) if clock() >= NOW + 10 else None

    def node_id() -> str:
        clock.now += 4
        return "cd" * 28

    command = spot_watch.drain_on_notice("aws", metadata, node_id, clock, clock.sleep)
    assert command[command.index("--deadline-remaining-seconds") + 1] == str(120 - 10 - 4)


def test_a_metadata_error_is_retried_not_fatal():
    clock = FakeClock(NOW)
    answers = iter([OSError("metadata away"), None, NOW + 100])

    def metadata(last_quiet_poll: float) -> float | None:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert spot_watch.wait_for_notice(metadata, clock, clock.sleep) == NOW + 100
    assert clock() == NOW + 2 * spot_watch.POLL_S


def test_drain_command_is_one_rays_cli_accepts():
    from ray.scripts.scripts import drain_node

    command = spot_watch.drain_command("ab" * 28, 120, "aws")
    assert command[:2] == ["ray", "drain-node"]
    # Parse it with Ray's own click command (no cluster): every option and choice must exist.
    context = drain_node.make_context("drain-node", command[2:])
    assert context.params["reason"] == "DRAIN_NODE_REASON_PREEMPTION"
    assert context.params["deadline_remaining_seconds"] == 120
    assert context.params["node_id"] == "ab" * 28


def test_usage_error_exits_2():
    assert spot_watch.main([]) == 2
    assert spot_watch.main(["azure"]) == 2


def test_ray_cli_refuses_an_unknown_reason():
    from ray.scripts.scripts import drain_node

    result = CliRunner().invoke(drain_node, ["--reason", "SPOT", "--reason-message", "x"])
    assert result.exit_code == 2
