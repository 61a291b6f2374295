"""What every spec shares: frozen sections that reject unknown keys, the error type, and the
rules for names and storage locations that become paths."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from orchestrator.errors import ConfigError  # noqa: F401 - defined there, re-exported here


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Run and sweep names become folder names in Ray storage (local or s3://) and MLflow keys:
# no separators or leading dot, so a name can never point outside the store or hide itself.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 100
NAME_RULE = (
    f"letters, digits, '.', '_' and '-', not starting with '.', at most {MAX_NAME_LENGTH} "
    "characters"
)

# Where Ray may keep checkpoints: a local folder, or object storage that mimray can reach.
STORAGE_SCHEMES = ("s3",)


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a run or sweep, or None when it can."""
    if len(name) > MAX_NAME_LENGTH:
        return f"{len(name)} characters is too long"
    if not NAME_PATTERN.fullmatch(name):
        return f"{name!r} is not allowed"
    return None


def check_name(name: str, key: str = "name") -> str:
    """`name` unchanged, or a ConfigError naming `key` and what a name may be."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{key}: {problem}; allowed: {NAME_RULE}")
    return name


def check_storage_path(path: str) -> str:
    """A local folder or an `s3://bucket/prefix`; any other URI scheme is refused."""
    scheme, sep, rest = path.partition("://")
    if not sep:
        return path
    allowed = ", ".join(f"{s}://bucket/prefix" for s in STORAGE_SCHEMES)
    if scheme.lower() not in STORAGE_SCHEMES:
        # GCS has no filesystem of its own here; its S3-compatible API serves s3:// paths.
        gcs = " (GCS: s3:// with AWS_ENDPOINT_URL=https://storage.googleapis.com and an HMAC key)"
        raise ValueError(
            f"scheme {scheme}:// is not supported; allowed: a local folder or {allowed}"
            + (gcs if scheme.lower() == "gs" else "")
        )
    if not rest.strip("/"):
        raise ValueError(f"no bucket after {scheme}://; allowed: a local folder or {allowed}")
    return path
