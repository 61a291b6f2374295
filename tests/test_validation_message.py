"""Run, eval and sweep specs say a validation error the same way: one line, the dotted key,
and for an unknown key the keys that are allowed there (one builder,
`orchestrator/config/validation_message.py`)."""

from __future__ import annotations

import pytest

from orchestrator.config import ConfigError, load_eval_spec, load_spec, load_sweep


def _sweep_error(tmp_path, text: str) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_sweep(str(path))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_unknown_sweep_key_names_the_allowed_ones(tmp_path):
    message = _sweep_error(tmp_path, "base: demo\nsweep:\n  gird: {method.mask_ratio: [0.5]}\n")
    assert message.startswith("sweep.gird: unknown key; allowed: points, grid, seeds, ")


def test_unknown_early_stop_key_names_the_allowed_ones(tmp_path):
    text = "base: demo\nsweep:\n  grid: {train.seed: [0]}\n  early_stop: {metrc: loss}\n"
    assert _sweep_error(tmp_path, text) == (
        "sweep.early_stop.metrc: unknown key; allowed: metric, mode, grace_period, reduction_factor"
    )


def test_a_bad_sweep_value_is_shown_like_a_bad_run_value(tmp_path):
    sweep = _sweep_error(tmp_path, "base: demo\nsweep:\n  seeds: 0\n")
    with pytest.raises(ConfigError) as run:
        load_spec("demo", ["train.epochs=0"])
    assert sweep == "sweep.seeds: Input should be greater than or equal to 1 (got 0)"
    assert str(run.value) == "train.epochs: Input should be greater than or equal to 1 (got 0)"


def test_eval_spec_unknown_key_names_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"^knn\.kk: unknown key; allowed: k, temperature, "):
        load_eval_spec("knn", ["knn.kk=3"])
