"""Registry of pretraining methods, timm-style.

A method is one module in this package that calls `register_method(Method(...))` at import;
the package imports every module in it, so adding a method touches nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from workloads.methods.base import Method, MethodKnobs, MethodOutput

_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; allowed: {', '.join(method_names())}") from None


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def train_img_size(spec: Mapping[str, Any]) -> int:
    """Side of the images a run's training stream should deliver, from a resolved spec dict:
    model.img_size unless the method asks for another (evaluation always uses img_size)."""
    method = get_method(spec["method"]["name"])
    if method.train_img_size is None:
        return spec["model"]["img_size"]
    return method.train_img_size(spec["model"], method.knobs.model_validate(spec["method"]))


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Method",
    "MethodKnobs",
    "MethodOutput",
    "get_method",
    "method_names",
    "register_method",
    "train_img_size",
]
