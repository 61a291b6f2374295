"""The host's /tmp/ray as Ray in mimray's container finds it, on every node type of the launcher
configs: the start of a node rehearsed on this machine, without Docker or a cloud.

What happens on a node (Ray's updater, read in Ray 2.60): the host runs the node type's
`initialization_commands` (a node type's own list replaces the global one; `ray up` gives the
head the global list, autoscaler v2 gives each worker type its own), then `docker run` with the
config's `run_options`, whose `-v /tmp/ray:/tmp/ray` makes a missing host folder as root, mode
0755. Then `ray start` runs inside as rayproject's user `ray` (uid 1000, gid 100) and creates
its session folder under /tmp/ray (`_private/node.py`), and the spot watcher's log goes there.

Here: the host commands that touch /tmp/ray run as root (as they do through `sudo`) on a
stand-in folder, Docker's folder creation is done as Docker does it, and the container's writes
are made as uid 1000 / gid 100 through `setpriv`, so the kernel checks them as it would.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
CONTAINER_USER = (1000, 100)  # rayproject/ray's `ray`:`users`; cluster/Dockerfile checks it
HOST_FOLDER = "/tmp/ray"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="acts as root (the host) and as uid 1000 (the container)"
)


def node_types(name: str) -> list[tuple[str, list[str], dict]]:
    """(node type, the initialization_commands Ray runs for it, the prepared config)."""
    config = prepare_config(yaml.safe_load((CLUSTER / name).read_text()))
    workers = AutoscalingConfig(copy.deepcopy(config), skip_content_hash=True)
    result = []
    for node_type in config["available_node_types"]:
        if node_type == config["head_node_type"]:
            commands = config["initialization_commands"]  # what `ray up` runs on the head
        else:
            commands = workers.get_initialization_commands(node_type)
        result.append((node_type, commands, config))
    return result


ALL_NODE_TYPES = [
    pytest.param(name, node_type, commands, config, id=f"{name}:{node_type}")
    for name in ("aws.yaml", "gcp.yaml")
    for node_type, commands, config in node_types(name)
]


def bind_mounts(config: dict) -> list[tuple[str, str]]:
    options = " ".join(config["docker"].get("run_options", []))
    return re.findall(r"-v\s+(\S+?):(\S+)", options)


def start_node(host_tmp: Path, commands: list[str], config: dict) -> Path:
    """The host's part: initialization commands on /tmp/ray, then Docker's bind mount."""
    here = str(host_tmp / "ray")
    for command in commands:
        if HOST_FOLDER not in command:
            continue  # registry logins and the NVIDIA wait need the cloud's host
        # `sudo` is root's power on the host; here the test already runs as root.
        script = 'sudo() { "$@"; }\n' + command.replace(HOST_FOLDER, here)
        subprocess.run(["bash", "-euc", script], check=True, timeout=30)
    ((source, target),) = [m for m in bind_mounts(config) if m[1] == HOST_FOLDER]
    source = source.replace(HOST_FOLDER, here)
    if not os.path.exists(source):
        os.makedirs(source, mode=0o755)  # what `docker run -v` does with a missing host path
        os.chown(source, 0, 0)
    return Path(source)


def container_writes(mounted: Path, config: dict) -> subprocess.CompletedProcess:
    """Ray's own first writes under /tmp/ray, as the container's user: the session folder and
    its logs (node.py `_init_temp`), the session_latest link, and the spot watcher's log."""
    watch_logs = [
        match
        for command in config["worker_start_ray_commands"]
        for match in re.findall(rf">\s*({re.escape(HOST_FOLDER)}/\S+)", command)
    ]
    session = mounted / "session_2026-12-06_00-00-00_000000_1"
    script = " && ".join(
        [
            f"mkdir -p {shlex.quote(str(session / 'logs' / 'old'))}",
            f"mkdir -p {shlex.quote(str(session / 'sockets'))}",
            f"ln -sfn {shlex.quote(str(session))} {shlex.quote(str(mounted / 'session_latest'))}",
            *(f": > {shlex.quote(log.replace(HOST_FOLDER, str(mounted)))}" for log in watch_logs),
        ]
    )
    uid, gid = CONTAINER_USER
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def host_tmp():
    """A stand-in for the host's /tmp: root's, world-writable with the sticky bit, like /tmp,
    and under /tmp so that uid 1000 may reach it (pytest's tmp_path is root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="mimray-host-tmp-", dir="/tmp"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.mark.parametrize(("name", "node_type", "commands", "config"), ALL_NODE_TYPES)
def test_ray_in_the_container_can_write_the_mounted_tmp_ray(
    name, node_type, commands, config, host_tmp
):
    mounted = start_node(host_tmp, commands, config)
    result = container_writes(mounted, config)
    assert result.returncode == 0, (
        f"{name} {node_type}: uid 1000 cannot write the host's /tmp/ray "
        f"(owner {mounted.stat().st_uid}, mode {oct(stat.S_IMODE(mounted.stat().st_mode))}): "
        + result.stderr.strip()
    )


def test_a_root_owned_tmp_ray_left_from_before_is_handed_over(host_tmp):
    """A host whose /tmp/ray Docker already made (a node started with an older config)."""
    (name, node_type, commands, config) = ALL_NODE_TYPES[0].values
    stale = host_tmp / "ray"
    stale.mkdir(mode=0o755)
    mounted = start_node(host_tmp, commands, config)
    assert container_writes(mounted, config).returncode == 0, f"{name} {node_type}"
