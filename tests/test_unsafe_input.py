"""Input the CLI refuses before anything runs: names that would escape the store, config files
that are not UTF-8 YAML, storage locations mimray cannot use. One line, exit 2, nothing written."""

from __future__ import annotations

import pytest
from cli_checks import assert_refused
from click.testing import CliRunner

from orchestrator.cli.main import main
from orchestrator.config import ConfigError, check_name

SWEEP = """
name: {name}
base: {{data: {{source: shapes, num_images: 64}}, train: {{epochs: 1, batch_size: 32}}}}
sweep: {{grid: {{method.mask_ratio: [0.5, 0.75]}}}}
"""


@pytest.mark.parametrize("name", ["mae-r90", "emae_k-4_seed-0.v2", "_x", "a" * 100, "7"])
def test_safe_names_pass(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["../../escape", "a/b", "a\\b", ".hidden", "..", "", "a b", "é", "a" * 101]
)
def test_unsafe_names_are_refused(name):
    with pytest.raises(ConfigError, match=r"^name: .*; allowed: letters, digits"):
        check_name(name)


def _refused(workdir, args: list[str], expected: str) -> None:
    """The command exits 2 with one line that says `expected`, and writes nothing anywhere."""
    before = {p for p in workdir.parent.rglob("*")}
    assert_refused(CliRunner().invoke(main, args), expected)
    assert {p for p in workdir.parent.rglob("*")} == before  # no ./mimray-runs, no escape


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pretrain", "demo", "--name", "../../escape"], "--name: '../../escape' is not allowed"),
        (["demo", "--name", "../escape"], "--name: '../escape' is not allowed"),
        (["pretrain", "demo", "--name", ".hidden"], "not starting with '.'"),
        (["pretrain", "demo", "--name", "x" * 101], "101 characters is too long"),
        (["pretrain", "demo", "--set", "storage.path=gs://b/p"], "storage.path: scheme gs://"),
        (["pretrain", "demo", "--set", "storage.path=ftp://h/p"], "allowed: a local folder or s3"),
        (["pretrain", "demo", "--set", "storage.path=s3://"], "storage.path: no bucket after"),
    ],
)
def test_cli_refuses_unsafe_run_input(args, expected, workdir):
    _refused(workdir, args, expected)


def test_sweep_names_are_refused_from_flag_and_file(workdir):
    (workdir / "ok.yaml").write_text(SWEEP.format(name="fine"))
    _refused(workdir, ["sweep", "ok.yaml", "--name", "../up"], "name: '../up' is not allowed")
    (workdir / "bad.yaml").write_text(SWEEP.format(name="'a/b'"))
    _refused(workdir, ["sweep", "bad.yaml"], "name: 'a/b' is not allowed")
    _refused(
        workdir,
        ["pretrain", "ok.yaml", "--point", "0", "--set", "storage.path=gs://b"],
        "storage.path: scheme gs://",
    )


def test_config_that_is_not_utf8_yaml_is_refused(workdir):
    (workdir / "latin1.yaml").write_bytes("train: {epochs: 2}  # caf\xe9\n".encode("latin-1"))
    _refused(workdir, ["pretrain", "latin1.yaml"], "latin1.yaml is not UTF-8 text (byte 0xe9")
    (workdir / "binary.yaml").write_bytes(b"\x00\x01\x02garbage")
    _refused(workdir, ["pretrain", "binary.yaml"], "binary.yaml is not valid YAML")
    _refused(workdir, ["sweep", "latin1.yaml"], "is not UTF-8 text")
