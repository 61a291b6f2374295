"""`mimray submit` / `mimray jobs`: argument errors and what a job carries (no cluster needed)."""

from __future__ import annotations

import pytest
from cli_checks import assert_refused
from click.testing import CliRunner
from servers import refused_address

from orchestrator.cli.main import main
from orchestrator.cluster import jobs


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["submit"], "command: nothing to run"),
        (["submit", "--"], "command: nothing to run"),
        (["submit", "--address", "ftp://head:8265", "--", "presets"], "--address: 'ftp://head"),
        (["submit", "--", "jobs", "list"], "command: 'jobs' runs here"),
        (["jobs", "status", "x", "--address", "gcs://h:1"], "--address: 'gcs://h:1' is not"),
        (["jobs", "logs", "x", "--address", "http://"], "--address: 'http://' is not"),
    ],
)
def test_usage_errors_exit_2_in_one_line(args, expected, workdir):
    assert_refused(CliRunner().invoke(main, args), expected, at_start=True)


def test_missing_job_id_is_a_usage_error(workdir):
    result = CliRunner().invoke(main, ["jobs", "status"])
    assert result.exit_code == 2
    assert "JOB_ID" in result.output


@pytest.mark.parametrize(
    ("command", "rest"),
    [(["jobs", "list"], []), (["jobs", "stop", "j1"], []), (["submit"], ["--", "presets"])],
)
def test_unreachable_cluster_exits_1_in_one_line(command, rest, workdir):
    with refused_address() as url:
        result = CliRunner().invoke(main, [*command, "--address", url, *rest])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"mimray: error: cannot reach the Ray Jobs API at {url}")
    assert result.output.count("\n") == 1


def test_spec_file_outside_the_shipped_folder_is_refused(tmp_path, workdir):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.yaml"
    outside.write_text("name: x\n")
    try:
        with pytest.raises(jobs.JobsUsageError, match="is outside"):
            jobs.check_local_files(["sweep", str(outside)], workdir)
        (workdir / "mine.yaml").write_text("name: x\n")
        jobs.check_local_files(["sweep", "mine.yaml"], workdir)  # inside: fine
        with pytest.raises(jobs.JobsUsageError, match="give it relative"):
            jobs.check_local_files(["sweep", str(workdir / "mine.yaml")], workdir)
    finally:
        outside.unlink()


def test_address_defaults(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert jobs.normalise_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "https://head.example:8265/")
    assert jobs.normalise_address(None) == "https://head.example:8265"
    # A GCS address in RAY_ADDRESS (for `ray.init`) is not the Jobs API: ignore it.
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert jobs.normalise_address(None) == "http://127.0.0.1:8265"
    assert jobs.normalise_address("head:8265") == "http://head:8265"


def test_job_env_forwards_settings_and_secrets_only_when_asked(monkeypatch):
    environ = {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000",
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "HOME": "/home/me",
    }
    plain = jobs.job_env(environ, with_secrets=False)
    assert plain == {k: environ[k] for k in list(environ)[:4]}
    full = jobs.job_env(environ, with_secrets=True)
    assert full["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert "HOME" not in full


def test_auth_token_becomes_a_bearer_header(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    assert jobs.auth_headers() == {}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok123")
    assert jobs.auth_headers() == {"Authorization": "Bearer tok123"}


def test_entrypoint_runs_the_shipped_cli_with_quoting():
    assert (
        jobs.entrypoint(["sweep", "my sweep.yaml", "--set", "train.epochs=1"])
        == "python -m orchestrator sweep 'my sweep.yaml' --set train.epochs=1"
    )
    env = jobs.build_runtime_env(jobs.Path("/x"), {}, with_secrets=False)
    assert [p.rsplit("/", 1)[-1] for p in env["py_modules"]] == ["orchestrator", "workloads"]
    assert {".git", ".venv", "mimray-runs"} <= set(env["excludes"])


# --- checkpoints that survive: a remote run needs storage every node (and a rerun) can reach ---


@pytest.fixture
def unreachable() -> list[str]:
    """--address of a Jobs API that refuses connections (held for the test, see servers.py)."""
    with refused_address() as url:
        yield ["--address", url]


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["sweep", "emae-k"], "./mimray-runs (the default)"),
        (["sweep", "emae-k", "--set", "storage.path=/data/runs"], "/data/runs"),
        (["sweep", "emae-k", "--set=storage.path=runs", "--dry-run"], "runs"),
        (["pretrain", "demo", "--name", "x"], "./mimray-runs (the default)"),
        (["demo"], "./mimray-runs (the default)"),
    ],
)
def test_submit_refuses_node_local_storage_in_one_line(command, shown, workdir, unreachable):
    result = CliRunner().invoke(main, ["submit", *unreachable, "--", *command])
    line = assert_refused(
        result, f"storage.path: {shown} is on the disk of each node", at_start=True
    )
    assert "s3://BUCKET" in line


def test_submit_reads_storage_from_the_spec_file(workdir, unreachable):
    (workdir / "local.yaml").write_text("storage: {path: ./ckpt}\n")
    (workdir / "remote.yaml").write_text("storage: {path: s3://bucket/mimray}\n")
    refused = CliRunner().invoke(main, ["submit", *unreachable, "--", "pretrain", "local.yaml"])
    assert_refused(refused, "storage.path: ./ckpt ", at_start=True)
    # Object storage passes the check: the next failure is the (absent) cluster, exit 1.
    accepted = CliRunner().invoke(main, ["submit", *unreachable, "--", "pretrain", "remote.yaml"])
    assert accepted.exit_code == 1, accepted.output
    assert "cannot reach the Ray Jobs API" in accepted.output
    # --set wins over the file, as it will on the cluster.
    overridden = ["pretrain", "remote.yaml", "--set", "storage.path=/tmp/x"]
    result = CliRunner().invoke(main, ["submit", *unreachable, "--", *overridden])
    assert_refused(result, "storage.path: /tmp/x ", at_start=True)


@pytest.mark.parametrize(
    "args",
    [
        ["--", "sweep", "emae-k", "--set", "storage.path=s3://bucket/runs"],
        ["--shared-storage", "--", "sweep", "emae-k", "--set", "storage.path=/nfs/runs"],
        ["--", "presets"],  # writes no checkpoints
    ],
)
def test_object_or_declared_shared_storage_passes_the_check(args, workdir, unreachable):
    result = CliRunner().invoke(main, ["submit", *unreachable, *args])
    assert result.exit_code == 1, result.output
    assert "cannot reach the Ray Jobs API" in result.output


def test_a_broken_spec_is_refused_before_the_cluster_is_contacted(workdir, unreachable):
    args = ["submit", *unreachable, "--", "sweep", "emae-k", "--set", "train.epochs=zero"]
    assert_refused(CliRunner().invoke(main, args), "train.epochs:", at_start=True)


def test_storage_rule_on_its_own():
    jobs.require_shared_storage(["s3://bucket/x", "s3://bucket/y"])
    for path in (None, "runs", "/abs/runs", "file:///abs/runs"):
        with pytest.raises(jobs.JobsUsageError, match="^storage.path: "):
            jobs.require_shared_storage(["s3://bucket/x", path])
