"""The Ray and MLflow releases mimray was tested on, and the one line it prints when it runs
on others (`constraints.txt` installs the tested ones)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# What the suite passed on; `constraints.txt` pins the same (tests/test_versions.py checks).
TESTED = {"ray": "2.60.0", "mlflow": "3.17.2"}


def untested_versions() -> dict[str, str]:
    """Package -> installed version, for each tested package installed at another version."""
    found = {}
    for package, tested in TESTED.items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            installed = "not installed"
        if installed != tested:
            found[package] = installed
    return found


def version_warning() -> str | None:
    """One line naming what differs from the tested releases, or None when nothing does."""
    found = untested_versions()
    if not found:
        return None
    running = ", ".join(f"{p} {v}" for p, v in found.items())
    tested = ", ".join(f"{p} {TESTED[p]}" for p in found)
    return (
        f"mimray: warning: running {running}; tested on {tested} "
        "(pip install -c constraints.txt -e . installs the tested versions)"
    )
