"""Reading specs: YAML files or built-in presets, `--set` overrides, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.config.base import ConfigError
from orchestrator.config.evaluation import PROTOCOLS, EvalSpec
from orchestrator.config.run import RunSpec
from orchestrator.config.sweep import (
    SweepSpec,
    Trial,
    check_early_stop,
    expand_trials,
    is_sweep,
    parse_sweep,
    set_dotted,
)
from orchestrator.config.validation_message import describe_validation_error


def preset_names() -> list[str]:
    folder = resources.files("orchestrator") / "presets"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def read_spec_source(config: str) -> dict[str, Any]:
    """YAML from a file path, or from a built-in preset when no such file exists."""
    path = Path(config)
    if path.is_file():
        text = _read_utf8(path, config)
    elif config in preset_names():
        text = (resources.files("orchestrator") / "presets" / f"{config}.yaml").read_text()
    else:
        raise ConfigError(
            f"config: no file {config!r} and no preset of that name; "
            f"presets: {', '.join(preset_names())}"
        )
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        # A ReaderError (control characters, e.g. a binary file) has a reason, not a problem.
        why = getattr(err, "problem", None) or getattr(err, "reason", None) or "unreadable"
        raise ConfigError(f"config: {config} is not valid YAML ({why})") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config: {config} must be a mapping of sections, got {type(raw).__name__}"
        )
    return raw


def _read_utf8(path: Path, config: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config: cannot read {config} ({err.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config: {config} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
            f"{err.start}); allowed: a UTF-8 YAML file or a preset name"
        ) from None


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides; values are parsed as YAML (numbers, bools, lists)."""
    tree = json.loads(json.dumps(raw))  # deep copy, plain types
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        try:
            set_dotted(tree, key, yaml.safe_load(text) if text else "")
        except ConfigError as err:
            raise ConfigError(f"{err} (--set {item})") from None
    return tree


def load_spec(
    config: str | None = None, overrides: Iterable[str] = (), point: int | None = None
) -> RunSpec:
    """The run spec of CONFIG; for a sweep spec, that of its trial number `point`."""
    raw = read_spec_source(config) if config else {}
    if is_sweep(raw):
        trials = load_sweep(config, overrides)[1]
        if point is None:
            raise ConfigError(
                f"point: {config} is a sweep of {len(trials)} trials; pick one with "
                f"--point 0..{len(trials) - 1}"
            )
        if not 0 <= point < len(trials):
            raise ConfigError(f"point: {point} is out of range; allowed: 0..{len(trials) - 1}")
        return trials[point].spec
    if point is not None:
        raise ConfigError(f"point: {config} is a single run spec, not a sweep; drop --point")
    return validate_spec(apply_overrides(raw, overrides))


def load_sweep(config: str, overrides: Iterable[str] = ()) -> tuple[SweepSpec, list[Trial]]:
    """A sweep spec and its validated trials. `--set sweep.*`/`name` edit the sweep itself,
    any other key edits the base run spec."""
    raw = read_spec_source(config)
    if not is_sweep(raw):
        raise ConfigError(f"sweep: {config} has no `sweep:` section; it is a single run spec")
    base = raw.get("base", {})
    if isinstance(base, str):
        base = read_spec_source(base)
    own = [o for o in overrides if o.startswith(("sweep.", "name="))]
    # A grid or space key is itself dotted (`sweep.grid.method.k=[2, 4]`): keep it whole.
    knobs = [o for o in own if o.startswith(("sweep.grid.", "sweep.space."))]
    raw = apply_overrides({**raw, "base": base}, [o for o in own if o not in knobs])
    for item in knobs:
        section, _, rest = item.removeprefix("sweep.").partition(".")
        key, _, text = rest.partition("=")
        raw.setdefault("sweep", {}).setdefault(section, {})[key] = yaml.safe_load(text)
    raw["base"] = apply_overrides(raw["base"], [o for o in overrides if o not in own])
    sweep = parse_sweep(raw, default_name=Path(config).stem)
    trials = expand_trials(sweep, validate_spec)
    check_early_stop(sweep, trials)
    return sweep, trials


def validate_spec(raw: Mapping[str, Any]) -> RunSpec:
    try:
        return RunSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, raw, RunSpec)) from None


def load_eval_spec(protocol: str, overrides: Iterable[str] = ()) -> EvalSpec:
    """The eval spec of `protocol` with `--set` overrides (e.g. knn.k=10, linear.epochs=5)."""
    if protocol not in PROTOCOLS:
        allowed = ", ".join(PROTOCOLS)
        raise ConfigError(f"protocol: unknown protocol {protocol!r}; allowed: {allowed}")
    raw = apply_overrides({"protocol": protocol}, overrides)
    try:
        return EvalSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, raw, EvalSpec)) from None
