"""Sweep specs: a base run spec plus the points of an ablation grid.

```yaml
name: emae-k                       # default: the preset name or the file's stem
base: {method: {name: mae}, ...}   # a run spec, or the name of a preset / path to one
sweep:
  points:                          # explicit points (e.g. MAE r vs EMAE K side by side) ...
    - {method.name: mae, method.mask_ratio: 0.75}
    - {method.name: emae, method.k: 4}
  grid: {method.gamma: [0.5, 0.75]}  # ... crossed with the cartesian product of a grid
  seeds: 2                         # every point repeated with train.seed = base seed + i
```

Instead of points and grid, `search: random` draws `num_samples` points from per-knob
distributions (`orchestrator.config.search_space`), and `search: optuna` lets Optuna's
sampler suggest `num_samples` points from the same distributions, one per trial as trials
start, towards `objective` (default: the lowest final loss).

Every trial is validated as a run spec before anything starts; an error names the key and
the grid point it came from.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.config.base import NAME_RULE, ConfigError, name_problem
from orchestrator.config.run import RunSpec, check_custom_resources
from orchestrator.config.search_space import Distribution, draw_samples, parse_distribution
from orchestrator.config.validation_message import describe_validation_error


class EarlyStop(BaseModel):
    """ASHA on a per-epoch metric: trials behind the others at each rung stop early."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1, description="epochs before a trial may be stopped")
    reduction_factor: float = Field(2.0, gt=1)


class Objective(BaseModel):
    """What a searcher that learns from results (Optuna) optimises: a per-epoch metric's value
    when the trial ends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = "loss"
    mode: Literal["min", "max"] = "min"


# Searches whose every trial is drawn or listed before anything starts.
PLANNED_SEARCHES = ("grid", "random")


class SweepSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    points: list[dict[str, Any]] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: int = Field(1, ge=1)
    # One at a time by default: three concurrent trials peaked at 6.5 GB on a 2-core machine.
    max_concurrent_trials: int = Field(1, ge=1)
    early_stop: EarlyStop | None = None
    # Custom resources of each trial's driver, e.g. {on_demand: 0.01} keeps drivers off spot
    # nodes: a preempted driver takes its trial's whole worker group down with it.
    driver_resources: dict[str, float] = Field(default_factory=dict)
    # grid: every point x grid combination. random: `num_samples` points drawn from `space`.
    # optuna: `num_samples` points suggested by Optuna from `space`, towards `objective`.
    search: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int | None = Field(None, ge=1, description="random/optuna: points drawn")
    space: dict[str, Any] = Field(default_factory=dict, description="knob -> distribution")
    sample_seed: int = Field(0, description="random/optuna: the generator's seed")
    objective: Objective | None = Field(None, description="optuna: the metric to optimise")

    @field_validator("driver_resources")
    @classmethod
    def _custom_resources_only(cls, resources: dict[str, float]) -> dict[str, float]:
        return check_custom_resources(resources, instead="a trial driver reserves 0.01 CPU")

    @field_validator("space")
    @classmethod
    def _known_distributions(cls, space: dict[str, Any]) -> dict[str, Any]:
        for key, raw in space.items():
            parse_distribution(key, raw)
        return space

    @model_validator(mode="after")
    def _search_settings_fit(self) -> SweepSection:
        if self.objective is not None and self.search != "optuna":
            raise ValueError(
                "objective: is what Optuna optimises; allowed with search: optuna (ASHA's "
                "metric is early_stop.metric)"
            )
        if self.search == "grid":
            if self.space or self.num_samples is not None:
                raise ValueError(
                    "search: space and num_samples are for random or optuna search; allowed: "
                    "search: random, search: optuna, or the values as a grid"
                )
            return self
        if not self.space:
            raise ValueError(
                f"space: {self.search} search needs knob distributions; allowed: e.g. "
                "{method.mask_ratio: {uniform: [0.5, 0.9]}}"
            )
        if self.num_samples is None:
            raise ValueError(
                f"num_samples: {self.search} search needs the number of points to draw"
            )
        if self.grid or self.points:
            raise ValueError(
                f"search: {self.search} search draws every point from `space`; allowed: no "
                "grid or points (a fixed set of values is {choice: [...]})"
            )
        if self.search == "optuna" and self.seeds != 1:
            raise ValueError(
                "seeds: Optuna suggests one trial per point, each with the base seed; "
                "allowed: 1 (vary train.seed in `space` to include it in the search)"
            )
        return self

    @property
    def planned(self) -> bool:
        """Whether every trial's knob values are known before anything starts (grid, random);
        Optuna suggests each as its trial starts."""
        return self.search in PLANNED_SEARCHES

    def goal(self) -> Objective:
        return self.objective or Objective()

    def distributions(self) -> dict[str, Distribution]:
        return {key: parse_distribution(key, raw) for key, raw in self.space.items()}


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    sweep: SweepSection = Field(default_factory=SweepSection)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        # Trial names extend it, and the sweep's Tune experiment is a folder of that name.
        problem = name_problem(name)
        if problem:
            raise ValueError(f"{problem}; allowed: {NAME_RULE}")
        return name


@dataclass(frozen=True)
class Trial:
    index: int
    name: str  # deterministic: sweep name + point values, so a re-run finds the same trial
    values: dict[str, Any]  # dotted key -> value this trial sets (seed included)
    spec: RunSpec


def is_sweep(raw: Mapping[str, Any]) -> bool:
    return "sweep" in raw


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree[a][b][c] = value for key 'a.b.c', creating sections on the way."""
    node = tree
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: depth + 1])}: is a value, not a section")
        node = child
    node[leaf] = value


def parse_sweep(raw: Mapping[str, Any], default_name: str) -> SweepSpec:
    try:
        return SweepSpec.model_validate({"name": default_name, **raw})
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, raw, SweepSpec)) from None


def point_values(sweep: SweepSection) -> list[dict[str, Any]]:
    """Points crossed with the grid's cartesian product (YAML order kept), or for random
    search the points drawn from the space. Optuna's points are suggested as trials start:
    these are the points it is checked with before anything starts (`expand_trials`)."""
    if sweep.search != "grid":
        return draw_samples(sweep.distributions(), sweep.num_samples or 0, sweep.sample_seed)
    points = sweep.points or [{}]
    keys = list(sweep.grid)
    combos = [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*sweep.grid.values())
    ]
    return [{**point, **combo} for point in points for combo in combos]


def trial_spec(
    sweep: SweepSpec, values: Mapping[str, Any], validate: Callable[[dict[str, Any]], RunSpec]
) -> RunSpec:
    """The run spec of a trial: the sweep's base with `values` (dotted knob -> value) set.

    A None value is a knob this trial leaves at the base's value: Tune's config of a trial
    holds every knob that some trial of the sweep sets."""
    raw = _deep_copy(sweep.base)
    for key, value in values.items():
        if value is not None:
            set_dotted(raw, key, value)
    return validate(raw)


def expand_trials(spec: SweepSpec, validate: Callable[[dict[str, Any]], RunSpec]) -> list[Trial]:
    """Every trial of the sweep as a validated run spec; `validate(raw) -> RunSpec`.

    Optuna's trials are suggested as they start: they are listed by name with no knob values
    (their spec is the base's), after every point that random search would draw from the same
    space and seed validated, so a bad key or range fails here, before anything starts."""
    trials: list[Trial] = []
    base_seed = int(spec.base.get("train", {}).get("seed", 0))
    search = spec.sweep.search
    for point_index, values in enumerate(point_values(spec.sweep)):
        for seed_offset in range(spec.sweep.seeds):
            trial_values = {**values, "train.seed": base_seed + seed_offset}
            try:
                run = trial_spec(spec, trial_values, validate)
            except ConfigError as err:
                label = {"grid": "grid point", "random": "sample"}.get(search, "space point")
                raise ConfigError(f"{err} ({label} {point_index}: {_describe(values)})") from None
            if search == "grid":
                slug = trial_slug(trial_values)
            else:  # drawn floats make poor names: number them
                slug = f"sample-{point_index}_{trial_slug({'train.seed': base_seed + seed_offset})}"
            name = f"{spec.name}-{slug}"
            if search == "optuna":
                trial_values, run = {}, trial_spec(spec, {}, validate)
            trials.append(Trial(len(trials), name, trial_values, run))
    return trials


def check_early_stop(spec: SweepSpec, trials: list[Trial]) -> None:
    """ASHA (and Optuna) on kNN accuracy need the kNN computed while training, and it is
    higher-better."""
    watched = [("early_stop", spec.sweep.early_stop)]
    if spec.sweep.search == "optuna":
        watched.append(("objective", spec.sweep.goal()))
    for section, goal in watched:
        if goal is None or not goal.metric.startswith("knn/"):
            continue
        if any(trial.spec.knn_monitor() is None for trial in trials):
            raise ConfigError(
                f"sweep.{section}.metric: {goal.metric} is only measured during training by a "
                "chained kNN evaluation with `every`; allowed: add `eval: [{protocol: knn, "
                "every: 1}]` to the base spec, or metric: loss"
            )
        if goal.mode != "max":
            raise ConfigError(
                f"sweep.{section}.mode: {goal.metric} is an accuracy (higher is better); "
                "allowed: max"
            )


def trial_slug(values: Mapping[str, Any]) -> str:
    """'method.k': 4, 'train.seed': 0 -> 'k-4_seed-0' (safe in paths and MLflow names)."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in values.items()]
    return re.sub(r"[^A-Za-z0-9_.-]", "", "_".join(parts))


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items()) or "base"


def _deep_copy(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
