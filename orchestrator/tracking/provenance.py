"""Where a run came from: the mimray version, source commit and config fingerprint it records.

Pretrain runs and evaluation runs both tag themselves with these, so MLflow can say which code
produced a number.
"""

from __future__ import annotations

import functools
import shlex
import subprocess
import sys
from pathlib import Path

from orchestrator import __version__
from orchestrator.config import RunSpec
from orchestrator.tracking import FINGERPRINT_TAG

GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own tag: its UI shows it
# MLflow's own tags for where a run came from: its UI shows them as the run's source, and the
# reporter copies them onto each checkpoint LoggedModel ("Logged from").
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
# How the `mimray` command starts: its console script, or `python -m orchestrator` (Ray jobs).
MIMRAY_ENTRY_POINTS = ("mimray", "orchestrator/__main__.py", "orchestrator/cli/main.py")


@functools.lru_cache(maxsize=1)  # a sweep set-up tags 1,000 runs: one `git` call, not 1,000
def git_commit() -> str | None:
    """The commit of the mimray source in use, when it is a git checkout."""
    source = Path(__file__).resolve().parents[2]  # the checkout (orchestrator/tracking/..)
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def command_line(argv: list[str] | None = None) -> str | None:
    """The command this process runs, as the user typed it (`mimray sweep emae-k`); None in a
    Ray worker (`default_worker.py`), which does not know the command that started the run."""
    argv = sys.argv if argv is None else argv
    if not argv or argv[0].endswith("default_worker.py"):
        return None
    program = argv[0].replace("\\", "/")
    if any(program == entry or program.endswith("/" + entry) for entry in MIMRAY_ENTRY_POINTS):
        return shlex.join(["mimray", *argv[1:]])
    return shlex.join([Path(program).name, *argv[1:]])  # mimray used as a library (tests)


def source_tags() -> dict[str, str]:
    """MLflow's source tags for a run this process creates: the command that created it."""
    command = command_line()
    return {SOURCE_NAME_TAG: command[:500], SOURCE_TYPE_TAG: "LOCAL"} if command else {}


def commit_tags() -> dict[str, str]:
    """MLflow's source-commit tag, when the source is a git checkout."""
    commit = git_commit()
    return {GIT_COMMIT_TAG: commit} if commit else {}


def run_tags(spec: RunSpec, run_path: str) -> dict[str, str]:
    """The tags of a pretrain run: fingerprint, version, Ray storage path, method, commit."""
    tags = {
        FINGERPRINT_TAG: spec.fingerprint(),
        "mimray.version": __version__,
        "mimray.ray_run_path": run_path,
        "mimray.method": spec.method.name,
        **source_tags(),
    }
    commit = git_commit()
    if commit:
        tags["mimray.git_commit"] = commit
        tags[GIT_COMMIT_TAG] = commit
    return tags
