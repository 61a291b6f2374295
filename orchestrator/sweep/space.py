"""Tune's view of a sweep: the knobs as its `param_space`, and the searcher that runs the trials.

Every knob a trial sets (`method.k`, `train.seed`, ...) is a key of Tune's `param_space`, so
Tune's ResultGrid carries a `config/method.k` column per knob, and each trial builds its run
spec from those values (`trial.py`): grid values as `tune.grid_search`, random-search
knobs as their Tune distributions, the values of explicit points as `tune.choice`. For grid and
random search the trials are mimray's (validated and named before Tune starts): a
`BasicVariantGenerator` is handed each trial's values, in order, as a point to evaluate, so
Tune runs exactly those trials and restores them with its state. For Optuna the space is the
same distributions, and Tune's `OptunaSearch` suggests each trial's values as it starts.
`trial` (the trial's index in the sweep) travels in the config too: it names the trial.
"""

from __future__ import annotations

import sys
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher

from orchestrator.config import SweepSpec, Trial
from orchestrator.config.search_space import Distribution

# Tune's config key of a trial's index in the sweep (planned trials are numbered in order,
# suggested ones as they are suggested: `NumberedSearch`).
TRIAL_KEY = "trial"


def knob_keys(trials: list[Trial]) -> list[str]:
    """Every dotted key some trial sets, in first-seen order."""
    return list(dict.fromkeys(key for trial in trials for key in trial.values))


def trial_configs(trials: list[Trial]) -> list[dict[str, Any]]:
    """Each trial's Tune config: its knob values (None for a knob only other points set)."""
    keys = knob_keys(trials)
    return [
        {TRIAL_KEY: trial.index, **{key: trial.values.get(key) for key in keys}} for trial in trials
    ]


def param_space(sweep: SweepSpec, trials: list[Trial]) -> dict[str, Any]:
    """The sweep's search space in Tune's terms, one entry per knob."""
    from ray import tune

    section = sweep.sweep
    distributions = section.distributions()
    if not section.planned:  # Optuna: the distributions alone; it suggests every value
        return {key: _tune_domain(distribution) for key, distribution in distributions.items()}
    space: dict[str, Any] = {TRIAL_KEY: tune.grid_search([t.index for t in trials])}
    for key in knob_keys(trials):
        values = _distinct(t.values.get(key) for t in trials)
        if key in distributions:
            space[key] = _tune_domain(distributions[key])
        elif key in section.grid or key == "train.seed":
            space[key] = tune.grid_search(values)
        else:  # a key of explicit points: the values they take (None where a point lacks it)
            space[key] = tune.choice(values)
    return space


def searcher(sweep: SweepSpec, trials: list[Trial]) -> Any:
    """Tune's searcher: for grid and random search, exactly the sweep's trials in their order;
    for Optuna, its suggestions, numbered, `max_concurrent_trials` at a time."""
    section = sweep.sweep
    if section.planned:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(
            points_to_evaluate=trial_configs(trials), max_concurrent=section.max_concurrent_trials
        )
    from ray.tune.search.optuna import OptunaSearch

    goal = section.goal()
    optuna = OptunaSearch(metric=goal.metric, mode=goal.mode, seed=section.sample_seed)
    return ConcurrencyLimiter(NumberedSearch(optuna), section.max_concurrent_trials)


class NumberedSearch(Searcher):
    """Numbers the trials another searcher suggests: `trial` = 0, 1, ... in their config, so a
    suggested trial has a stable index and name. The count is saved with Tune's searcher
    state (`get_state`), so a restored sweep goes on numbering where it stopped."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher  # the name Tune's search-state saving walks wrappers by
        self.next_index = 0
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | None:
        config = self.searcher.suggest(trial_id)
        if not isinstance(config, dict):  # None (not now) or Searcher.FINISHED
            return config
        index, self.next_index = self.next_index, self.next_index + 1
        return {TRIAL_KEY: index, **config}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        return {"next_index": self.next_index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.next_index = state["next_index"]


def _distinct(values: Any) -> list[Any]:
    # Not dict.fromkeys: a knob's value may be a list (e.g. pcae's drop_after), unhashable.
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _tune_domain(distribution: Distribution) -> Any:
    from ray import tune

    make = {
        "choice": lambda args: tune.choice(list(args)),
        "uniform": lambda args: tune.uniform(*args),
        "loguniform": lambda args: tune.loguniform(*args),
        "randint": lambda args: tune.randint(*args),
    }[distribution.kind]
    return make(distribution.args)


# Tune pickles NumberedSearch (Optuna sweeps) into a sweep's saved state by module name. Sweeps
# saved before the sweep modules became a package name it by this module's old name, and
# must still restore.
sys.modules.setdefault("orchestrator.sweep_space", sys.modules[__name__])
