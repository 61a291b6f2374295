"""Sweep specs: points x grid x seeds expand to validated, stably named trials."""

from __future__ import annotations

import pytest

from orchestrator.config import ConfigError, load_spec, load_sweep, preset_names

SWEEP = """
name: ksweep
base: demo
sweep:
  points:
    - {method.mask_ratio: 0.5}
    - {method.mask_ratio: 0.75}
  grid:
    train.blr: [1.0e-4, 2.0e-4]
  seeds: 2
"""


def _write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


def test_points_times_grid_times_seeds(tmp_path):
    sweep, trials = load_sweep(_write(tmp_path, SWEEP))
    assert sweep.name == "ksweep"
    assert len(trials) == 2 * 2 * 2
    combos = {(t.spec.method.mask_ratio, t.spec.train.blr, t.spec.train.seed) for t in trials}
    assert len(combos) == 8
    assert len({t.name for t in trials}) == 8
    assert trials[0].name == "ksweep-mask_ratio-0.5_blr-0.0001_seed-0"
    # The base preset's other values are kept in every trial.
    assert all(t.spec.model.img_size == 32 and t.spec.train.epochs == 8 for t in trials)
    # Names are a pure function of the spec: a second load gives the same trials.
    assert [t.name for t in load_sweep(_write(tmp_path, SWEEP))[1]] == [t.name for t in trials]


def test_overrides_edit_base_and_sweep(tmp_path):
    sweep, trials = load_sweep(_write(tmp_path, SWEEP), ["train.epochs=1", "sweep.seeds=1"])
    assert sweep.sweep.seeds == 1 and len(trials) == 4
    assert {t.spec.train.epochs for t in trials} == {1}


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        ("model.widht: [1, 2]", "model.widht: unknown key"),
        ("method.mask_ratio: [0.5, 1.5]", "method.mask_ratio: Input should be less than 1"),
    ],
)
def test_bad_grid_names_key_and_point(tmp_path, grid, expected):
    text = f"base: demo\nsweep:\n  grid:\n    {grid}\n"
    with pytest.raises(ConfigError) as caught:
        load_sweep(_write(tmp_path, text))
    message = str(caught.value)
    assert message.startswith(expected)
    assert "(grid point" in message


def test_pretrain_runs_one_point_of_a_sweep(tmp_path):
    config = _write(tmp_path, SWEEP)
    spec = load_spec(config, point=3)
    assert (spec.method.mask_ratio, spec.train.blr, spec.train.seed) == (0.5, 2.0e-4, 1)
    with pytest.raises(ConfigError, match=r"^point: .* sweep of 8 trials; pick one with --point"):
        load_spec(config)
    with pytest.raises(ConfigError, match=r"^point: 8 is out of range; allowed: 0..7"):
        load_spec(config, point=8)


def test_every_builtin_preset_expands():
    sweeps = [name for name in preset_names() if name != "demo"]
    assert {"emae-k", "sbam-gamma", "amr-delta-r", "latent-gap"} <= set(sweeps)
    for name in sweeps:
        _, trials = load_sweep(name)
        assert trials, name


def test_asha_on_knn_accuracy_needs_the_in_loop_knn_and_mode_max(tmp_path):
    path = _write(tmp_path, SWEEP)
    knn = ["sweep.early_stop={metric: knn/top1, mode: max}"]
    with pytest.raises(ConfigError, match=r"sweep.early_stop.metric: knn/top1 is only measured"):
        load_sweep(path, knn)
    monitored = [*knn, "eval=[{protocol: knn, every: 1, data: {source: colors}}]"]
    sweep, trials = load_sweep(path, monitored)
    assert all(t.spec.knn_monitor().every == 1 for t in trials)

    from orchestrator.sweep.runner import _scheduler

    scheduler = _scheduler(sweep, max_epochs=4)
    assert (scheduler._metric, scheduler._mode) == ("knn/top1", "max")
    with pytest.raises(ConfigError, match=r"sweep.early_stop.mode: .*allowed: max"):
        load_sweep(path, ["sweep.early_stop={metric: knn/top1, mode: min}", *monitored[1:]])
