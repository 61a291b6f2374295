"""Tune's view of a sweep: the knobs as its `param_space`, and the searcher that runs the trials.

Every knob a trial sets (`method.k`, `train.seed`, ...) is a key of Tune's `param_space`, so
Tune's ResultGrid carries a `config/method.k` column per knob: grid values as
`tune.grid_search`, random-search knobs as their Tune distributions, the values of explicit
points as `tune.choice`. The trials themselves are mimray's (validated, named and recorded in
MLflow before Tune starts): a `BasicVariantGenerator` is handed each trial's values, in order,
as a point to evaluate, so Tune runs exactly those trials and restores them with its state.
`trial` (the index into the sweep's trial list) travels in the config too; trial drivers and
sweeps recorded before the knobs were in the config find their run by it.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import SweepSpec, Trial
from orchestrator.config.search_space import Distribution

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


def searcher(trials: list[Trial], max_concurrent: int) -> Any:
    """Tune's searcher that runs exactly the sweep's trials, in their order."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(
        points_to_evaluate=trial_configs(trials), max_concurrent=max_concurrent
    )


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
