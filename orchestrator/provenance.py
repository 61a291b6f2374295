"""Where a run came from: the mimray version, source commit and config fingerprint it records.

Pretrain runs and evaluation runs both tag themselves with these, so MLflow can say which code
produced a number.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from orchestrator import __version__
from orchestrator.config import RunSpec
from orchestrator.tracking import FINGERPRINT_TAG

GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own tag: its UI shows it


@functools.lru_cache(maxsize=1)  # a sweep set-up tags 1,000 runs: one `git` call, not 1,000
def git_commit() -> str | None:
    """The commit of the mimray source in use, when it is a git checkout."""
    source = Path(__file__).resolve().parent.parent
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
    }
    commit = git_commit()
    if commit:
        tags["mimray.git_commit"] = commit
        tags[GIT_COMMIT_TAG] = commit
    return tags
