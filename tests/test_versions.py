"""The install is the tested one: constraints.txt pins what the suite passes on, and mimray
says in one line when it runs on other Ray or MLflow releases."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from orchestrator import versions

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def pinned() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#") and "==" in line:
            name, release = line.split("==", 1)
            pins[name.strip().lower()] = release.strip()
    return pins


def test_installed_ray_and_mlflow_are_the_pinned_releases():
    pins = pinned()
    for package, tested in versions.TESTED.items():
        assert pins[package] == tested, f"constraints.txt pins {package} {pins[package]}"
        assert version(package) == tested, (
            f"{package} {version(package)} is installed, the suite is pinned to {tested}: "
            "install with -c constraints.txt (README) or upgrade deliberately"
        )
    assert versions.version_warning() is None


def test_every_installed_distribution_of_the_lock_matches_it():
    """What the README's command installed is what constraints.txt says, package by package
    (a lock that drifted from the venv the suite ran in would pin untested versions)."""
    from importlib.metadata import distributions

    pins = pinned()
    differ = {}
    for dist in distributions():
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in pins and pins[name] != dist.version:
            differ[name] = (dist.version, pins[name])
    assert not differ, f"installed vs constraints.txt: {differ}"


def test_an_untested_release_is_named_in_one_line(monkeypatch):
    monkeypatch.setitem(versions.TESTED, "ray", "0.0.1")
    line = versions.version_warning()
    assert line is not None and "\n" not in line
    assert f"ray {version('ray')}" in line and "tested on ray 0.0.1" in line
    assert "mlflow" not in line  # only what differs
