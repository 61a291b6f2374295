"""Spec loading and validation: every bad input is one line naming the key, exit 2, no Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_checks import assert_refused
from click.testing import CliRunner
from conftest import PROBE

from orchestrator.cli.main import main
from orchestrator.config import (
    ConfigError,
    apply_overrides,
    load_spec,
    preset_names,
    read_spec_source,
)

BAD_INPUTS = [
    # (overrides, key that the message must name, a word of what is allowed)
    (["model.colour=3"], "model.colour", "allowed"),
    (["train.epochs=many"], "train.epochs", "integer"),
    (["method.mask_ratio=1.5"], "method.mask_ratio", "less than 1"),
    (["method.mask_ratio=0"], "method.mask_ratio", "greater than 0"),
    (["model.patch_size=5"], "model.patch_size", "divisor"),
    (["scaling.num_workers=0"], "scaling.num_workers", "greater than or equal to 1"),
    (["method.name=simclr"], "method.name", "mae"),
    (["data.source=imagenet-not-here"], "data.source", "shapes"),
    (["method.k=4"], "method.k", "mask_ratio"),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), BAD_INPUTS)
def test_bad_input_names_the_key(overrides, key, allowed):
    with pytest.raises(ConfigError) as caught:
        load_spec("demo", overrides)
    message = str(caught.value)
    assert message.startswith(f"{key}:"), message
    assert allowed in message
    assert "\n" not in message


@pytest.mark.parametrize(("overrides", "key", "allowed"), BAD_INPUTS)
def test_cli_exits_2_and_writes_nothing(overrides, key, allowed, workdir):
    args = ["pretrain", "demo"] + [f"--set={o}" for o in overrides]
    assert_refused(CliRunner().invoke(main, args), f"{key}:", at_start=True)
    assert not (workdir / "mimray-runs").exists()  # nothing half-written


def test_cli_rejects_bad_input_before_ray_starts(workdir):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "pretrain", "demo", "--set", "method.mask_ratio=1.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "ray started: False" in proc.stdout
    assert proc.stderr.strip().startswith("mimray: error: method.mask_ratio:")


def test_missing_config_file_exits_2_from_the_console_script(workdir):
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "pretrain", "no-such-file.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]] and "no-such-file.yaml" in lines[0] and "presets" in lines[0]
    assert not (workdir / "mimray-runs").exists()


def test_yaml_file_and_overrides_resolve(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: {img_size: 64, patch_size: 8}\ntrain: {epochs: 3}\n")
    spec = load_spec(str(config), ["train.epochs=7", "method.mask_ratio=0.9"])
    assert (spec.model.img_size, spec.model.patch_size, spec.model.num_patches) == (64, 8, 64)
    assert spec.train.epochs == 7
    assert spec.method.mask_ratio == 0.9
    flat = spec.flat_params()
    assert flat["method.mask_ratio"] == 0.9 and flat["train.epochs"] == 7
    assert flat["method.name"] == "mae"


def test_fingerprint_changes_with_the_config_only():
    base = load_spec("demo")
    assert base.fingerprint() == load_spec("demo").fingerprint()
    assert base.fingerprint() != load_spec("demo", ["train.seed=1"]).fingerprint()


def test_override_of_a_value_as_a_section_is_refused():
    with pytest.raises(ConfigError, match=r"^train.epochs: is a value, not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_run_presets_validate():
    assert "demo" in preset_names()
    for name in preset_names():
        if "sweep" not in read_spec_source(name):
            load_spec(name)


def test_method_can_be_switched_from_the_demo_preset():
    spec = load_spec("demo", ["method.name=sbam"])
    assert spec.method.name == "sbam" and spec.model.embed_dim == 96
