"""Shared fixtures: one local Ray instance for the whole session, fresh MLflow stores per test."""

from __future__ import annotations

import contextlib
import os
import urllib.request
import uuid

import pytest
from local_ray_cluster import short_temp_dir
from servers import mimray_ui, moto_server
from tiny_model import TINY_MODEL

__all__ = ["TINY_MODEL", "serve_mlflow_ui"]

# `mimray ui` on a port of its own choosing (see servers.py); the name older tests import.
serve_mlflow_ui = mimray_ui


# Runs the CLI in a fresh interpreter and says whether it started Ray: the test session's own
# Ray would hide a command that started one.
PROBE = """
import sys, ray
from orchestrator.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    print("ray started:", ray.is_initialized())
    print("models imported:", sorted({"torch", "timm"} & sys.modules.keys()))
    sys.exit(done.code)
"""


# The test files that take longest (one fresh-clone run's `--durations`, 2 cores), longest
# first, then the other slow files, then the fast ones: each of the two test processes takes
# whole files (`--dist loadfile`), so a long file left to the end would run alone while the
# other process idles; the many short files fill the gaps at the end. (xdist's own order puts
# files with many tests first: `--no-loadscope-reorder` in pyproject keeps this one.)
LONGEST_FIRST = (  # seconds per file in a fresh-clone run, both processes busy
    "test_cluster_e2e.py",  # two tests on one cluster
    "test_s3_checkpoints_e2e.py",  # 249
    "test_sweep_e2e.py",  # 247
    "test_data_e2e.py",  # 246
    "test_preemption_e2e.py",  # 239
    "test_sweep_failures_e2e.py",  # 154
    "test_sweep_optuna_e2e.py",  # 147
    "test_observability_e2e.py",  # 100
    "test_checkpoint_upload.py",  # 87
    "test_promote_e2e.py",  # 85
    "test_pretrain_e2e.py",  # 79
    "test_cluster_autoscaler_e2e.py",  # 80
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first (see LONGEST_FIRST); a file's tests keep their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    slow_files = {item.path.name for item in items if item.get_closest_marker("slow")}
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.path.name, index)

    def order(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        group = rank.get(name, len(rank) + (0 if name in slow_files else 1))
        return group, first_seen[name]

    items.sort(key=order)  # stable: within a file, collection order


@pytest.fixture
def cluster_temp_dir():
    """A temp folder for a test's own Ray cluster (`local_ray_cluster.short_temp_dir`)."""
    with short_temp_dir() as path:
        yield path


def _start_local_ray():
    import ray

    # address="local": a new instance even where a `ray start` cluster left its address in
    # /tmp/ray (ray.init would join that one, and refuse num_cpus for it).
    ray.init(address="local", num_cpus=2, include_dashboard=True)


@pytest.fixture(scope="session")
def _shared_ray():
    """Local Ray, started once per test process (pytest-xdist runs two)."""
    import ray

    if not ray.is_initialized():
        _start_local_ray()
    yield ray
    ray.shutdown()


ACTOR_START_S = 40.0  # an actor starts in seconds; room for a machine with every core busy


@pytest.fixture(scope="module")
def ray_session(_shared_ray):
    """The test process's Ray, shared by every test that needs it (start-up costs seconds),
    checked once per test file: an actor must start.

    Ray 2.60's driver can stop hearing that its actors started: in three fresh-clone runs,
    late in one test process, the GCS logged a Tune trial actor as created while the driver's
    core worker never got its ALIVE notice (its last: PENDING_CREATION), and Tune waited
    forever; so did every later in-process sweep of that process. Users' drivers are one CLI
    process per run. A test process that has fallen into this state gets a fresh Ray, and says
    so, instead of a hang that ends at the 900 s timeout."""
    ray = _shared_ray

    @ray.remote(num_cpus=0)
    class Probe:
        def ready(self) -> bool:
            return True

    probe = Probe.remote()
    try:
        ray.get(probe.ready.remote(), timeout=ACTOR_START_S)
    except ray.exceptions.GetTimeoutError:
        import warnings

        warnings.warn(
            f"no actor started in {ACTOR_START_S:.0f} s on this test process's Ray: "
            "restarting it (Ray driver lost its actor notifications)",
            stacklevel=1,
        )
        ray.shutdown()
        _start_local_ray()
    else:
        ray.kill(probe)
    yield ray


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


@pytest.fixture(scope="session")
def s3_endpoint():
    """`moto_server` on 127.0.0.1, on the port it bound itself; its URL; stopped after."""
    with moto_server() as endpoint:
        yield endpoint


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
