"""Registry of pretraining methods, timm-style.

A method is two modules in this package: `<method>_knobs.py` registers its card (knobs,
checks, summary; torch-free, see `knobs.py`) and `<method>.py` registers the `Method` that
builds its model. The package imports every `*_knobs` module, so adding a method touches
nothing else; a method's model module (and torch) is imported by the first `get_method`.
Specs are validated and methods listed from the cards alone (`method_card`, `method_names`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from workloads.methods.knobs import MethodCard, MethodKnobs, method_card, method_names

if TYPE_CHECKING:
    from workloads.methods.base import Method, MethodOutput

_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    if method_card(method.name) is not method.card:
        raise ValueError(f"method {method.name!r}: its card is not the registered one")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The method with its model builder (imports its module, and torch)."""
    card = method_card(name)  # KeyError naming the allowed methods
    if name not in _REGISTRY:
        importlib.import_module(card.module)
    return _REGISTRY[name]


def train_img_size(spec: Mapping[str, Any]) -> int:
    """Side of the images a run's training stream should deliver, from a resolved spec dict:
    model.img_size unless the method asks for another (evaluation always uses img_size)."""
    card = method_card(spec["method"]["name"])
    if card.train_img_size is None:
        return spec["model"]["img_size"]
    return card.train_img_size(spec["model"], card.knobs.model_validate(spec["method"]))


def __getattr__(name: str) -> Any:
    # The model side of the contract needs torch: imported when first asked for.
    if name in ("Method", "MethodOutput"):
        from workloads.methods import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _module in pkgutil.iter_modules(__path__):
    if _module.name.endswith("_knobs"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Method",
    "MethodCard",
    "MethodKnobs",
    "MethodOutput",
    "get_method",
    "method_card",
    "method_names",
    "register_method",
    "train_img_size",
]
