"""Shared fixtures: one local Ray instance for the whole session, fresh MLflow stores per test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

# A ViT small enough that a Ray Train fit in a test is dominated by start-up, not compute.
TINY_MODEL = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_dim=32",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
]


# Runs the CLI in a fresh interpreter and says whether it started Ray: the test session's own
# Ray would hide a command that started one.
PROBE = """
import sys, ray
from orchestrator.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    print("ray started:", ray.is_initialized())
    sys.exit(done.code)
"""


@pytest.fixture
def cluster_temp_dir():
    """A temp folder for a test's own Ray cluster. Short: Ray's socket paths live under it and
    must stay within 107 bytes."""
    path = Path(f"/tmp/mrc-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    path.mkdir()
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture(scope="session")
def ray_session():
    """Start local Ray once; every test that needs Ray shares it (start-up costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True)
    yield ray
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder so the embedded default store `./mimray-runs/` is per test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.pop("RAY_ADDRESS", None)
    return tmp_path


# ---------------------------------------------------------------------------------------------
# A real S3 endpoint for tests: moto in server mode, spoken to over HTTP on 127.0.0.1.
# ---------------------------------------------------------------------------------------------

_MOTO_START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answers(url: str, server: subprocess.Popen, name: str, timeout_s: float) -> None:
    """Block until `url` gives any HTTP answer; fail early if `server` exits."""
    deadline = time.monotonic() + timeout_s
    while not _answers(url):
        if server.poll() is not None:
            raise RuntimeError(f"{name} exited with status {server.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer on {url} within {timeout_s:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def serve_mlflow_ui(timeout_s: float = 90.0):
    """`mimray ui` for the current folder's store on a free loopback port; yields its URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "ui", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopping it stops its workers too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/health", server, "mimray ui", timeout_s)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_endpoint():
    """Start `moto_server` on 127.0.0.1 on a free port; yield its URL; stop it after."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_answers(endpoint, server, "moto_server", _MOTO_START_TIMEOUT_S)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """The standard AWS environment pointing at the moto server, for one test."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_endpoint


@pytest.fixture
def s3_client(s3_env):
    import boto3

    return boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client) -> str:
    """A fresh, empty bucket per test, so tests never see each other's objects."""
    name = f"mimray-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def _answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=1).read()
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False
    return True


@contextlib.contextmanager
def moto_checks_credentials(endpoint: str):
    """Make the moto server verify signatures against its IAM users, then stop again.

    moto accepts any credentials by default. Its `/moto-api/reset-auth` endpoint sets
    INITIAL_NO_AUTH_ACTION_COUNT (the same setting as the env variable): after that many
    requests every request must be signed by a known IAM access key with a policy that allows
    the action. 0 turns checking on at once; "inf" (the default) turns it off.
    """

    def reset_auth(value: bytes) -> None:
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=value,
            method="POST",
            # Not form-encoded: Flask would swallow a form body and moto would read "".
            headers={"Content-Type": "application/octet-stream"},
        )
        urllib.request.urlopen(request, timeout=5).read()

    reset_auth(b"0")
    try:
        yield
    finally:
        reset_auth(b"inf")
