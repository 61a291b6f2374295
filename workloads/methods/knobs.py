"""What the control plane needs to know about a method, without importing torch.

A method's knobs (a pydantic model: the fields a sweep varies as `method.<field>`), its
one-line summary, its cross-checks against the model section and the image side it wants are
declared in a `<method>_knobs.py` module beside the method, as one `MethodCard`. Specs are
validated, `mimray methods` lists the methods and a bad config is refused from these cards
alone: importing torch (and timm) took seconds before the CLI could say a line. The method's
model (`Method`, in `base.py`) is imported only where a model is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


class MethodKnobs(BaseModel):
    """Base of every method's knobs; `name` selects the method in the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str


# Cross-checks between knobs and the model section (e.g. K must divide the patch count).
# Raise ValueError("key: what is wrong; what is allowed") to reject a combination.
SpecCheck = Callable[[Mapping[str, Any], MethodKnobs], None]
# Side of the training images the method wants from the data stream, when it is not
# model.img_size (Latent MIM's gap grid is cut from g·(p+gap) images at native resolution).
TrainImageSize = Callable[[Mapping[str, Any], MethodKnobs], int]


@dataclass(frozen=True)
class MethodCard:
    """A method as configuration sees it. `module` is where its model lives: imported, it
    registers the `Method` that builds it."""

    name: str
    summary: str
    knobs: type[MethodKnobs]
    module: str
    check: SpecCheck | None = None
    train_img_size: TrainImageSize | None = None


_CARDS: dict[str, MethodCard] = {}


def register_card(card: MethodCard) -> MethodCard:
    if card.name in _CARDS:
        raise ValueError(f"method {card.name!r} is already registered")
    _CARDS[card.name] = card
    return card


def method_card(name: str) -> MethodCard:
    try:
        return _CARDS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; allowed: {', '.join(method_names())}") from None


def method_names() -> list[str]:
    return sorted(_CARDS)
