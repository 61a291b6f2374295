"""Specs: the one place that parses and validates configuration.

A spec is YAML (a file or a built-in preset) plus `--set dotted.key=value` overrides, checked
by pydantic before any Ray resource is used. Every error becomes a `ConfigError` whose message
is one line naming the dotted key and what is allowed, so the CLI can print it and exit 2.
A sweep spec is a base run spec plus the grid of points to vary.
"""

from orchestrator.config.base import ConfigError, check_name
from orchestrator.config.evaluation import PROTOCOLS, EvalSpec
from orchestrator.config.loading import (
    apply_overrides,
    load_eval_spec,
    load_spec,
    load_sweep,
    preset_names,
    read_spec_source,
    validate_spec,
)
from orchestrator.config.run import RunSpec, flatten
from orchestrator.config.sweep import SweepSpec, Trial

__all__ = [
    "ConfigError",
    "EvalSpec",
    "PROTOCOLS",
    "RunSpec",
    "apply_overrides",
    "check_name",
    "flatten",
    "SweepSpec",
    "Trial",
    "load_eval_spec",
    "load_spec",
    "load_sweep",
    "preset_names",
    "read_spec_source",
    "validate_spec",
]
