"""Random search and Tune's view of a sweep, without starting Ray: the drawn trials follow the
stated distributions and are the same on every load; the knobs are Tune's param_space."""

from __future__ import annotations

import math

import pytest

from orchestrator.config import ConfigError, load_sweep
from orchestrator.sweep.space import param_space, searcher, trial_configs

RANDOM = """
name: rs
base: demo
sweep:
  search: random
  num_samples: 40
  sample_seed: 3
  seeds: 2
  space:
    method.mask_ratio: {uniform: [0.5, 0.9]}
    train.blr: {loguniform: [1.0e-5, 1.0e-2]}
    model.depth: {randint: [2, 4]}
    train.warmup_epochs: {choice: [0, 0.5]}
"""


def _write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_random_search_draws_from_the_stated_distributions(tmp_path):
    sweep, trials = load_sweep(_write(tmp_path, RANDOM))
    assert len(trials) == 40 * 2
    assert trials[0].name == "rs-sample-0_seed-0" and trials[1].name == "rs-sample-0_seed-1"
    ratios = [t.spec.method.mask_ratio for t in trials]
    blrs = [t.spec.train.blr for t in trials]
    assert all(0.5 <= r <= 0.9 for r in ratios)
    assert all(1e-5 <= b <= 1e-2 for b in blrs)
    assert {t.spec.model.depth for t in trials} == {2, 3}  # randint excludes its upper bound
    assert {t.spec.train.warmup_epochs for t in trials} == {0.0, 0.5}
    # Log-uniform: about as many draws per decade in each of the three decades.
    decades = [math.floor(math.log10(b)) for b in blrs[::2]]
    assert all(6 <= decades.count(d) <= 22 for d in (-5, -4, -3)), decades
    # Seeds repeat a drawn point; different samples differ.
    assert trials[0].values["method.mask_ratio"] == trials[1].values["method.mask_ratio"]
    assert len({t.values["method.mask_ratio"] for t in trials}) == 40
    # The same spec draws the same trials (a restore finds them); another seed does not.
    again = load_sweep(_write(tmp_path, RANDOM, "again.yaml"))[1]
    assert [(t.name, t.values) for t in again] == [(t.name, t.values) for t in trials]
    other = load_sweep(_write(tmp_path, RANDOM), ["sweep.sample_seed=4"])[1]
    assert other[0].values != trials[0].values


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sweep.space.method.mask_ratio={uniform: [0.9, 0.5]}", "needs low < high"),
        ("sweep.space.train.blr={loguniform: [0, 1]}", "loguniform needs 0 < low"),
        ("sweep.space.model.depth={randint: [1.5, 3]}", "randint takes whole numbers"),
        ("sweep.space.x={normal: [0, 1]}", "unknown distribution 'normal'"),
        ("sweep.space.x=3", "expected a distribution"),
        ("sweep.num_samples=0", "sweep.num_samples"),
        ("sweep.grid.method.k=[2]", "no grid or points"),
        ("sweep.space.method.mask_ratio={uniform: [0.5, 1.5]}", "(sample "),
    ],
)
def test_bad_random_search_is_one_line_naming_the_key(tmp_path, override, expected):
    with pytest.raises(ConfigError) as caught:
        load_sweep(_write(tmp_path, RANDOM), [override])
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_grid_sweep_refuses_random_search_settings(tmp_path):
    grid = "name: g\nbase: demo\nsweep:\n  grid: {method.mask_ratio: [0.5]}\n  num_samples: 3\n"
    with pytest.raises(ConfigError, match="^sweep.search: space and num_samples are for random"):
        load_sweep(_write(tmp_path, grid))


def test_knobs_are_tunes_param_space(tmp_path):
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer

    sweep, trials = load_sweep(_write(tmp_path, RANDOM), ["sweep.num_samples=2"])
    space = param_space(sweep, trials)
    assert isinstance(space["method.mask_ratio"], Float)
    assert (space["method.mask_ratio"].lower, space["method.mask_ratio"].upper) == (0.5, 0.9)
    assert isinstance(space["model.depth"], Integer)
    assert isinstance(space["train.warmup_epochs"], Categorical)
    assert space["train.seed"] == tune.grid_search([0, 1])
    configs = trial_configs(trials)
    assert [c["trial"] for c in configs] == [0, 1, 2, 3]
    assert configs[3]["method.mask_ratio"] == trials[3].values["method.mask_ratio"]

    points = """
name: p
base: demo
sweep:
  points: [{method.name: mae, method.mask_ratio: 0.75}, {method.name: emae, method.k: 4}]
  grid: {train.blr: [1.0e-4, 2.0e-4]}
"""
    sweep, trials = load_sweep(_write(tmp_path, points, "points.yaml"))
    space = param_space(sweep, trials)
    assert space["train.blr"] == tune.grid_search([1e-4, 2e-4])
    assert set(space["method.k"].categories) == {None, 4}  # only the emae point sets k
    assert [c["method.k"] for c in trial_configs(trials)] == [None, None, 4, 4]


OPTUNA = """
name: opt
base: demo
sweep:
  search: optuna
  num_samples: 3
  space:
    method.mask_ratio: {uniform: [0.5, 0.9]}
    model.depth: {randint: [2, 4]}
"""


def test_optuna_trials_are_named_before_they_start_and_their_space_is_checked(tmp_path):
    sweep, trials = load_sweep(_write(tmp_path, OPTUNA))
    assert [t.name for t in trials] == [
        "opt-sample-0_seed-0",
        "opt-sample-1_seed-0",
        "opt-sample-2_seed-0",
    ]
    # Their values are Optuna's to suggest: none yet, and the spec is the base's.
    assert all(t.values == {} and t.spec == trials[0].spec for t in trials)
    space = param_space(sweep, trials)
    assert sorted(space) == ["method.mask_ratio", "model.depth"]  # no trial list, no grid
    # A range the spec refuses fails at load, as for random search, naming the key.
    with pytest.raises(ConfigError, match=r"method.mask_ratio.*\(space point 0: "):
        load_sweep(
            _write(tmp_path, OPTUNA), ["sweep.space.method.mask_ratio={uniform: [0.5, 1.5]}"]
        )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sweep.seeds=2", "sweep.seeds: Optuna suggests one trial per point"),
        (
            "sweep.objective={metric: knn/top1, mode: max}",
            "sweep.objective.metric: knn/top1 is only",
        ),
        ("sweep.objective={metric: loss, mode: up}", "sweep.objective.mode: Input should be"),
        ("sweep.num_samples=null", "num_samples: optuna search needs the number"),
    ],
)
def test_bad_optuna_search_is_one_line_naming_the_key(tmp_path, override, expected):
    with pytest.raises(ConfigError) as caught:
        load_sweep(_write(tmp_path, OPTUNA), [override])
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_an_objective_is_refused_for_searches_that_do_not_learn(tmp_path):
    with pytest.raises(ConfigError, match="objective: is what Optuna optimises"):
        load_sweep(_write(tmp_path, RANDOM), ["sweep.objective={metric: loss}"])


def test_optuna_suggestions_are_numbered_and_numbering_survives_tunes_restore(tmp_path):
    """Tune's own search generator around mimray's searcher: each suggestion carries its trial
    index; saved and restored the way a restored sweep's is, the next one goes on counting."""
    from ray.tune.search import SearchGenerator

    sweep, trials = load_sweep(_write(tmp_path, OPTUNA))
    generator = SearchGenerator(searcher(sweep, trials))
    generator.set_search_properties(None, None, param_space(sweep, trials))
    first = generator.searcher.suggest("a")
    assert first["trial"] == 0 and 0.5 <= first["method.mask_ratio"] <= 0.9
    assert first["model.depth"] in (2, 3)
    assert generator.searcher.suggest("b") is None  # one at a time (max_concurrent_trials)
    generator.on_trial_complete("a", {"loss": 1.0, "config": first})
    second = generator.searcher.suggest("b")
    assert second["trial"] == 1 and second != {**first, "trial": 1}
    generator.save_to_dir(str(tmp_path), session_str="first")

    restored = SearchGenerator(searcher(sweep, trials))
    restored.set_search_properties(None, None, param_space(sweep, trials))
    restored.restore_from_dir(str(tmp_path))
    restored.on_trial_complete("b", {"loss": 0.5, "config": second})
    assert restored.searcher.suggest("c")["trial"] == 2


def test_optuna_dry_run_says_how_many_trials_and_starts_nothing(workdir):
    from click.testing import CliRunner

    from orchestrator.cli.main import main

    result = CliRunner().invoke(main, ["sweep", _write(workdir, OPTUNA), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "3 trials, 1 at a time" in result.output
    assert "optuna search: 3 trials, each point suggested as its trial starts, towards the " in (
        " ".join(result.output.split())
    )
    assert "opt-sample-2_seed-0" in result.output
    assert not (workdir / "mimray-runs").exists()
