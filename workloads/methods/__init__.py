"""Registry of pretraining methods, timm-style: `register_method` + `get_method(name)`."""

from __future__ import annotations

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


# Importing a method module registers it; one line per method.
from workloads.methods import mae  # noqa: E402

register_method(mae.METHOD)

__all__ = ["Method", "MethodKnobs", "MethodOutput", "get_method", "method_names", "register_method"]
