"""A pydantic ValidationError as the one line mimray prints: `dotted.key: what is wrong; allowed:`.

Run specs, eval specs and sweep specs all say their errors this way (exit 2, before Ray).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from workloads.methods import method_card


def describe_validation_error(
    err: ValidationError, raw: Mapping[str, Any], root: type[BaseModel]
) -> str:
    """First error of validating `raw` as `root`, as one line."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    kind = first["type"]
    # A validator that names a sub-key ("patch_size: ...") extends the location.
    head, sep, rest = message.partition(": ")
    if sep and " " not in head:
        loc, message = [*loc, head], rest
    key = ".".join(loc) or "config"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], raw, root)
        return f"{key}: unknown key; allowed: {', '.join(allowed)}"
    if "input" in first and kind != "missing" and not isinstance(first["input"], dict):
        return f"{key}: {message} (got {first['input']!r})"
    return f"{key}: {message}"


def _allowed_keys(section: list[str], raw: Mapping[str, Any], root: type[BaseModel]) -> list[str]:
    model: type[BaseModel] = root
    for part in section:
        if part.isdigit():  # an item of a list section, e.g. eval.0
            continue
        if part == "method":
            name = (
                raw.get("method", {}).get("name", "mae")
                if isinstance(raw.get("method"), Mapping)
                else "mae"
            )
            model = method_card(name).knobs
            continue
        annotation = model.model_fields[part].annotation
        # list[EvalSpec] names its item type as the annotation's argument
        for candidate in (annotation, *get_args(annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
    return list(model.model_fields)
