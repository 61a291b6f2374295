"""Running mimray commands on a remote Ray cluster through the Ray Jobs API.

`mimray submit -- sweep emae-k` ships the current folder (the specs it names) and mimray's own
packages (`orchestrator`, `workloads`) as the job's runtime environment, so the cluster needs
mimray's dependencies but not mimray itself, and runs `python -m orchestrator sweep emae-k`
as the job's driver on the head node. Tracking and storage settings travel as environment
variables, because the job's driver and its Train workers read them there.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

# What the job needs to reach the same MLflow server and object storage as this machine. The
# names are the ones mimray reads (tracking.py, workloads/data/object_store.py) and those MLflow
# and boto3 read for artifact uploads.
SETTINGS_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_EXPERIMENT_NAME",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
# Secrets go only when asked for: the dashboard shows a job's runtime_env to anyone who can
# reach it, and clusters with instance roles or Kubernetes Secrets do not need them.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
# Never shipped: local stores, virtual environments, caches and history.
EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "mimray-runs",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "node_modules",
]


class JobsError(RuntimeError):
    """The cluster could not do what was asked; the message is one line."""


class JobsUsageError(ValueError):
    """The command line is wrong (address, files); the message is one line."""


@dataclass(frozen=True)
class JobSummary:
    job_id: str
    status: str
    entrypoint: str
    start_time_ms: int | None
    message: str | None


def normalise_address(address: str | None) -> str:
    """The Jobs API URL: `--address`, else RAY_ADDRESS (when it is an http one), else local."""
    if not address:
        env = os.environ.get("RAY_ADDRESS", "")
        address = env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS
    if "://" not in address:
        address = f"http://{address}"
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JobsUsageError(
            f"--address: {address!r} is not the Ray dashboard's URL; "
            "expected http(s)://HEAD:8265 (use an SSH tunnel or `ray dashboard` for a cloud head)"
        )
    return address.rstrip("/")


def auth_headers() -> dict[str, str]:
    """A bearer token for clusters started with token authentication (RAY_AUTH_TOKEN)."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: str | None) -> Any:
    """A `JobSubmissionClient` for the cluster, or JobsError naming the address."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = normalise_address(address)
    try:
        return JobSubmissionClient(url, headers=auth_headers())
    except AuthenticationError as err:
        raise JobsError(f"{url}: {_one_line(err)}; set RAY_AUTH_TOKEN") from None
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise JobsError(
            f"cannot reach the Ray Jobs API at {url}: {_one_line(err)} "
            "(is the cluster up and the dashboard port forwarded?)"
        ) from None


def job_env(environ: Mapping[str, str], with_secrets: bool) -> dict[str, str]:
    names = SETTINGS_ENV + (SECRET_ENV if with_secrets else ())
    return {name: environ[name] for name in names if environ.get(name)}


def package_dirs() -> list[str]:
    """mimray's own packages, shipped with every job (the cluster may not have mimray)."""
    import orchestrator
    import workloads

    return [str(Path(module.__file__).resolve().parent) for module in (orchestrator, workloads)]


def check_local_files(args: Iterable[str], working_dir: Path) -> None:
    """Files named on the command line must be inside the folder that is shipped."""
    for arg in args:
        path = Path(arg)
        if arg.startswith("-") or not path.is_file():
            continue
        resolved = path.resolve()
        if not resolved.is_relative_to(working_dir):
            raise JobsUsageError(
                f"{arg}: is outside {working_dir}, the folder shipped to the cluster; "
                "run `mimray submit` from a folder that contains it"
            )
        if path.is_absolute():
            raise JobsUsageError(
                f"{arg}: give it relative to {working_dir}; the job runs in a copy of that "
                "folder on the cluster"
            )


# Commands that write checkpoints to their spec's `storage.path`.
CHECKPOINTING_COMMANDS = ("pretrain", "sweep", "demo")


def storage_paths(command: Any, args: list[str]) -> list[str | None]:
    """The `storage.path` of every run that `mimray ARGS` would start (None: the default).

    COMMAND is the click command ARGS[0] names; its own parser reads the config and `--set`s,
    so the check sees what the job will run.
    """
    # Deferred for start-up speed: `mimray jobs list/logs/...` never parse a spec.
    from orchestrator.config.base import ConfigError
    from orchestrator.config.loading import load_spec, load_sweep, read_spec_source
    from orchestrator.config.sweep import is_sweep

    if args[0] not in CHECKPOINTING_COMMANDS:
        return []
    params = command.make_context(args[0], list(args[1:]), resilient_parsing=True).params
    config, overrides = params.get("config") or args[0], list(params.get("overrides") or ())
    try:
        if is_sweep(read_spec_source(config)):
            specs = [trial.spec for trial in load_sweep(config, overrides)[1]]
        else:
            specs = [load_spec(config, overrides)]
    except ConfigError as err:
        raise JobsUsageError(str(err)) from None
    return [spec.storage.path for spec in specs]


def require_shared_storage(paths: Iterable[str | None]) -> None:
    """Refuse a storage.path that lives on one node's disk: on a cluster, checkpoints written
    there die with the node, and a resubmitted sweep on other nodes cannot restore them."""
    for path in paths:
        scheme = urlparse(path or "").scheme if "://" in (path or "") else ""
        if scheme and scheme != "file":
            continue
        shown = path or "./mimray-runs (the default)"
        raise JobsUsageError(
            f"storage.path: {shown} is on the disk of each node, so checkpoints die with a lost "
            "node and a resubmitted job cannot restore them; use object storage "
            "(--set storage.path=s3://BUCKET/mimray), or --shared-storage if every node mounts "
            "that path"
        )


def build_runtime_env(
    working_dir: Path, environ: Mapping[str, str], with_secrets: bool
) -> dict[str, Any]:
    return {
        "working_dir": str(working_dir),
        "py_modules": package_dirs(),
        "excludes": EXCLUDES,
        "env_vars": job_env(environ, with_secrets),
    }


def entrypoint(args: list[str]) -> str:
    # `python -m`, not the `mimray` script: the shipped packages are importable on the
    # cluster, an installed console script may not be.
    return shlex.join(["python", "-m", "orchestrator", *args])


def submit(
    client: Any,
    args: list[str],
    name: str | None = None,
    working_dir: Path | None = None,
    with_secrets: bool = False,
) -> str:
    """Submit `mimray ARGS` as a Ray job; returns its id (NAME when given)."""
    from ray.exceptions import RayError

    if not args:
        raise JobsUsageError("command: nothing to run; e.g. mimray submit -- sweep emae-k")
    working_dir = (working_dir or Path.cwd()).resolve()
    check_local_files(args, working_dir)
    try:
        return client.submit_job(
            entrypoint=entrypoint(args),
            submission_id=name,
            runtime_env=build_runtime_env(working_dir, os.environ, with_secrets),
            metadata={"mimray.command": shlex.join(args)},
        )
    except (RuntimeError, RayError, ValueError) as err:  # ValueError: e.g. folder too large
        raise JobsError(f"submit failed: {_one_line(err)}") from None


def list_jobs(client: Any) -> list[JobSummary]:
    jobs = [_summary(job) for job in _call(client.list_jobs)]
    return sorted(jobs, key=lambda job: job.start_time_ms or 0)


def job_status(client: Any, job_id: str) -> JobSummary:
    return _summary(_call(client.get_job_info, job_id))


def job_logs(client: Any, job_id: str) -> str:
    return _call(client.get_job_logs, job_id)


def follow_logs(client: Any, job_id: str, out: Any = None) -> None:
    """Stream the job's logs to `out` until the job ends."""
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    _call(job_status, client, job_id)  # an unknown id fails here, not inside the stream
    asyncio.run(tail())


def wait_for(client: Any, job_id: str, timeout_s: float = 60.0) -> JobSummary:
    """The job's final status (its logs can end a moment before the status is terminal)."""
    deadline = time.monotonic() + timeout_s
    while True:
        summary = job_status(client, job_id)
        if summary.status in TERMINAL_STATUSES or time.monotonic() > deadline:
            return summary
        time.sleep(0.5)


def stop_job(client: Any, job_id: str) -> bool:
    return bool(_call(client.stop_job, job_id))


def _summary(info: Any) -> JobSummary:
    return JobSummary(
        job_id=info.submission_id or info.job_id or "?",
        status=str(getattr(info.status, "value", info.status)),
        entrypoint=info.entrypoint,
        start_time_ms=info.start_time,
        message=info.message,
    )


def _call(function: Any, *args: Any) -> Any:
    from ray.exceptions import RayError

    try:
        return function(*args)
    except (RuntimeError, RayError) as err:  # HTTP errors arrive as RuntimeError
        raise JobsError(_one_line(err)) from None


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:500]
