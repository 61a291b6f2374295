"""The private Ray names mimray keeps (orchestrator/ray_internals.py) exist in the installed
Ray, and that Ray is the release they were read in: any other release fails here, loudly,
until someone reads its source and moves RAY_RELEASE forward."""

from __future__ import annotations

import importlib
import logging
import subprocess
from importlib.metadata import version
from pathlib import Path

from orchestrator import ray_internals

ROOT = Path(__file__).resolve().parents[1]


def test_installed_ray_is_the_release_the_private_names_were_read_in():
    assert ray_internals.supported(), (
        f"Ray {version('ray')} is installed; orchestrator/ray_internals.py was read against "
        f"Ray {ray_internals.RAY_RELEASE}. Read the new release's source for each name there, "
        "then update RAY_RELEASE."
    )


def test_every_private_name_resolves():
    from ray._private import worker

    module, _, cls = ray_internals.DATA_SESSION_FILE_HANDLER.rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), cls), logging.Handler)
    coordinator = importlib.import_module(
        "ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator"
    )
    assert callable(coordinator.get_or_create_autoscaling_coordinator)
    dispatcher = worker.global_worker_stdstream_dispatcher
    assert callable(dispatcher.add_handler) and callable(dispatcher.remove_handler)
    for name in ray_internals.INIT_LOGGERS:
        importlib.import_module(name)  # the loggers are the modules' own


def test_no_private_ray_name_outside_the_one_module():
    """orchestrator/ and workloads/ name private Ray modules only in ray_internals.py."""
    found = subprocess.run(
        [
            "grep",
            "-rlE",
            r"ray[.a-z0-9_]*\._(private|internal)",
            "orchestrator",
            "workloads",
            "--include=*.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert sorted(found) == ["orchestrator/ray_internals.py"], (
        f"private Ray names outside orchestrator/ray_internals.py: {found}"
    )


def test_another_release_turns_the_private_paths_off(monkeypatch):
    monkeypatch.setattr(ray_internals, "RAY_RELEASE", "0.0.0")
    assert not ray_internals.supported()
    assert ray_internals.pin_data_coordinator_here() is False
    assert ray_internals.filter_forwarded_output(lambda line: line) is False
