"""What a pretraining method is to mimray: its knobs and how to build its model.

A method is a plug-in. Its module declares a `MethodKnobs` subclass (the knobs a sweep can
vary, with defaults and bounds) and a builder that turns the model section of a run spec plus
those knobs into an `nn.Module` whose forward pass returns a `MethodOutput`. The pretrain loop
only ever sees that interface, so a new method never touches the loop or the orchestrator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class MethodKnobs(BaseModel):
    """Base of every method's knobs; `name` selects the method in the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str


@dataclass
class MethodOutput:
    """One forward pass of a method: the loss to minimise and scalars worth logging."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


ModelBuilder = Callable[[Mapping[str, Any], MethodKnobs], nn.Module]
# Cross-checks between knobs and the model section (e.g. K must divide the patch count).
# Raise ValueError("key: what is wrong; what is allowed") to reject a combination.
SpecCheck = Callable[[Mapping[str, Any], MethodKnobs], None]
# Side of the training images the method wants from the data stream, when it is not
# model.img_size (Latent MIM's gap grid is cut from g·(p+gap) images at native resolution).
TrainImageSize = Callable[[Mapping[str, Any], MethodKnobs], int]


def no_decay_names(**parts: nn.Module) -> set[str]:
    """Parameter names without weight decay, e.g. no_decay_names(encoder=..., decoder=...)."""
    return {f"{prefix}.{name}" for prefix, part in parts.items() for name in part.no_weight_decay()}


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    knobs: type[MethodKnobs]
    build: ModelBuilder
    check: SpecCheck | None = None
    train_img_size: TrainImageSize | None = None
