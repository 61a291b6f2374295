"""What a pretraining method is to mimray: its knobs, how to build its model, and the
contract that model keeps.

A method is a plug-in: a torch-free `<method>_knobs.py` declares its card (a `MethodKnobs`
subclass with the knobs a sweep can vary, defaults and bounds, and its checks; see `knobs.py`),
and `<method>.py` a builder that turns the model section of a run spec plus those knobs into a
`PretrainModel`. The pretrain loop, the optimizer and evaluation only ever
use that contract, so a new method never touches the loop, evaluation or the orchestrator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from workloads.methods.knobs import (  # noqa: F401 - re-exported: the knobs' torch-free home
    MethodCard,
    MethodKnobs,
    SpecCheck,
    TrainImageSize,
)
from workloads.models.vit import ViTEncoder


@dataclass
class MethodOutput:
    """One forward pass of a method: the loss to minimise and scalars worth logging."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class PretrainModel(nn.Module):
    """The contract of every method's model; the loop, optimizer and evaluation call only this.

    - `encoder`: the online ViTEncoder, the representation evaluation loads. Its weights sit
      under the state-dict key prefix `encoder_key` (a submodule named `encoder` unless the
      class says otherwise); EMA copies live under other names.
    - `forward(imgs)`: (B, C, H, W) normalised images -> `MethodOutput`, a scalar loss and
      plain-float metrics.
    - `after_optimizer_step(progress)`: called after every optimizer step with the share of
      training done (0..1); EMA targets follow the online weights here. No-op by default.
    - `no_weight_decay()`: names (as in `named_parameters`) kept out of weight decay besides
      biases and norms.
    """

    encoder: ViTEncoder
    # State-dict prefix of `encoder` (no trailing dot); evaluation reads the weights under it.
    encoder_key: ClassVar[str] = "encoder"

    def forward(self, imgs: torch.Tensor) -> MethodOutput:
        raise NotImplementedError

    def after_optimizer_step(self, progress: float) -> None:
        """Nothing to update by default: only methods with EMA targets override this."""

    def no_weight_decay(self) -> set[str]:
        raise NotImplementedError


ModelBuilder = Callable[[Mapping[str, Any], MethodKnobs], PretrainModel]


def no_decay_names(**parts: nn.Module) -> set[str]:
    """Parameter names without weight decay, e.g. no_decay_names(encoder=..., decoder=...)."""
    return {f"{prefix}.{name}" for prefix, part in parts.items() for name in part.no_weight_decay()}


@dataclass(frozen=True)
class Method:
    """A method's card (knobs, checks, summary: its `<method>_knobs.py`) and its model."""

    card: MethodCard
    build: ModelBuilder
    # The class `build` returns: evaluation reads its `encoder_key` without building a model.
    model: type[PretrainModel] = PretrainModel

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def summary(self) -> str:
        return self.card.summary

    @property
    def knobs(self) -> type[MethodKnobs]:
        return self.card.knobs

    @property
    def check(self) -> SpecCheck | None:
        return self.card.check

    @property
    def train_img_size(self) -> TrainImageSize | None:
        return self.card.train_img_size
