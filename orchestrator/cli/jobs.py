"""`mimray submit` and `mimray jobs`: mimray commands as Ray jobs on a remote cluster."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from orchestrator.cli.common import RUNTIME_ERROR, console, fail

address_option = click.option(
    "--address",
    help="Ray dashboard URL of the cluster (default: RAY_ADDRESS if http(s), "
    "else http://127.0.0.1:8265). A token from RAY_AUTH_TOKEN is sent when set.",
)


def _client(address: str | None) -> Any:
    from orchestrator.cluster.jobs import JobsError, JobsUsageError, connect, normalise_address

    try:
        normalise_address(address)  # a malformed address is a usage error, before any I/O
        return connect(address)
    except JobsUsageError as err:
        fail(str(err))
    except JobsError as err:
        fail(str(err), code=RUNTIME_ERROR)


def _run(action: Callable[[], Any]) -> Any:
    from orchestrator.cluster.jobs import JobsError, JobsUsageError

    try:
        return action()
    except JobsUsageError as err:
        fail(str(err))
    except JobsError as err:
        fail(str(err), code=RUNTIME_ERROR)


@click.command(context_settings={"ignore_unknown_options": True})
@address_option
@click.option(
    "--wait", is_flag=True, help="Stream the logs until the job ends; exit 1 unless it succeeded."
)
@click.option("--name", help="Job id to use (default: generated); must be new on the cluster.")
@click.option(
    "--with-credentials",
    is_flag=True,
    help="Also pass AWS_ACCESS_KEY_ID/SECRET/SESSION_TOKEN and MLflow credentials from this "
    "shell (the dashboard shows them to anyone who can reach it).",
)
@click.option(
    "--shared-storage",
    is_flag=True,
    help="Accept a plain storage.path: every node mounts it (e.g. NFS). Without it, runs must "
    "checkpoint to object storage (s3://) so they survive a lost node.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(
    address: str | None,
    wait: bool,
    name: str | None,
    with_credentials: bool,
    shared_storage: bool,
    command: tuple[str, ...],
) -> None:
    """Run a mimray COMMAND on a Ray cluster as a job: mimray submit -- sweep emae-k

    The current folder (spec files named in COMMAND must be in it) and mimray's packages are
    shipped with the job; MLFLOW_TRACKING_URI, MLFLOW_S3_ENDPOINT_URL and the AWS endpoint and
    region settings set here are passed on.
    """
    import os

    from orchestrator.cluster import jobs

    if not command:
        fail("command: nothing to run; e.g. mimray submit -- sweep emae-k")
    if command[0] in ("submit", "jobs"):
        fail(f"command: {command[0]!r} runs here, not on the cluster")
    group = click.get_current_context().parent
    target = group.command.get_command(group, command[0]) if group else None
    if target is not None and not shared_storage:
        _run(lambda: jobs.require_shared_storage(jobs.storage_paths(target, list(command))))
    client = _client(address)
    job_id = _run(lambda: jobs.submit(client, list(command), name, with_secrets=with_credentials))
    click.echo(job_id)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        click.echo(
            "note: MLFLOW_TRACKING_URI is not set here; unless the spec sets tracking.uri, the "
            "job records into an SQLite file in its working folder on the cluster",
            err=True,
        )
    if not wait:
        click.echo(f"follow it: mimray jobs logs {job_id} -f", err=True)
        return
    _run(lambda: jobs.follow_logs(client, job_id))
    summary = _run(lambda: jobs.wait_for(client, job_id))
    click.echo(f"job {job_id}: {summary.status}", err=True)
    if summary.status != "SUCCEEDED":
        sys.exit(RUNTIME_ERROR)


@click.group()
def jobs() -> None:
    """Jobs on a Ray cluster: list, status, logs, stop."""


@jobs.command("list")
@address_option
def jobs_list(address: str | None) -> None:
    """Every job the cluster knows, oldest first."""
    from orchestrator.cluster.jobs import list_jobs

    client = _client(address)
    table = Table("job", "status", "started (UTC)", "entrypoint")
    for job in _run(lambda: list_jobs(client)):
        table.add_row(job.job_id, job.status, _started(job.start_time_ms), job.entrypoint)
    console.print(table)


@jobs.command("status")
@click.argument("job_id")
@address_option
def jobs_status(job_id: str, address: str | None) -> None:
    """The status of JOB_ID (exit 1 when it failed or was stopped)."""
    from orchestrator.cluster.jobs import job_status

    client = _client(address)
    job = _run(lambda: job_status(client, job_id))
    click.echo(f"{job.job_id}: {job.status}" + (f" ({job.message})" if job.message else ""))
    if job.status in ("FAILED", "STOPPED"):
        sys.exit(RUNTIME_ERROR)


@jobs.command("logs")
@click.argument("job_id")
@address_option
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
def jobs_logs(job_id: str, address: str | None, follow: bool) -> None:
    """The output of JOB_ID's driver."""
    from orchestrator.cluster.jobs import follow_logs, job_logs

    client = _client(address)
    if follow:
        _run(lambda: follow_logs(client, job_id))
    else:
        click.echo(_run(lambda: job_logs(client, job_id)), nl=False)


@jobs.command("stop")
@click.argument("job_id")
@address_option
def jobs_stop(job_id: str, address: str | None) -> None:
    """Ask the cluster to stop JOB_ID (its trials end; a re-submitted sweep resumes them)."""
    from orchestrator.cluster.jobs import stop_job

    client = _client(address)
    stopped = _run(lambda: stop_job(client, job_id))
    click.echo(f"{job_id}: {'stopping' if stopped else 'already ended'}")


def _started(ms: int | None) -> str:
    if not ms:
        return "-"
    started = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return started.strftime("%Y-%m-%d %H:%M:%S")
