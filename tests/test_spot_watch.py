"""orchestrator/spot_watch.py: reading the clouds' interruption notices, and draining the node
with a reason Ray's own CLI accepts. No cloud: the metadata answers are the documented ones."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from orchestrator import spot_watch

NOW = datetime(2026, 11, 29, 22, 0, 0, tzinfo=timezone.utc)


def test_aws_notice_gives_the_seconds_left():
    notice = json.dumps({"action": "terminate", "time": "2026-11-29T22:02:00Z"})
    assert spot_watch.aws_seconds_left(200, notice, NOW) == 120
    late = json.dumps({"action": "stop", "time": "2026-11-29T21:59:00Z"})
    assert spot_watch.aws_seconds_left(200, late, NOW) == 0


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, ""), (200, json.dumps({"action": "none", "time": "2026-11-29T22:02:00Z"}))],
)
def test_aws_without_a_notice_is_quiet(status, body):
    assert spot_watch.aws_seconds_left(status, body, NOW) is None


def test_gcp_preempted_flag():
    assert spot_watch.gcp_seconds_left("TRUE") == spot_watch.GCP_NOTICE_S
    assert spot_watch.gcp_seconds_left("FALSE\n") is None


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
