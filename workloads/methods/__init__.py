"""Registry of pretraining methods, timm-style.

A method is one module in this package that calls `register_method(Method(...))` at import;
the package imports every module in it, so adding a method touches nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

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


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "MethodKnobs", "MethodOutput", "get_method", "method_names", "register_method"]
