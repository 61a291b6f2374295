"""Exponential-moving-average targets (Latent MIM's target encoder, PCAE's teacher)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(online: nn.Module) -> nn.Module:
    """A copy of `online` that receives no gradients: updated only by `ema_update`."""
    target = copy.deepcopy(online)
    for param in target.parameters():
        param.requires_grad_(False)
    return target


def cosine_momentum(progress: float, base: float = 0.99, final: float = 1.0) -> float:
    """Momentum rising from `base` to `final` on a half cosine over training (progress 0..1)."""
    progress = min(max(progress, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """θ_target ← m·θ_target + (1 − m)·θ_online, parameter by parameter; buffers are copied."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


class EMATeacher:
    """Frozen EMA copies of online modules, stepped together on one momentum schedule.

    `follow(online)` returns the copy; the method registers it under its own attribute, so
    the copy's checkpoint keys are the method's (`target_encoder.*`, `teacher.*`). This
    object only remembers the pairs and the schedule (cosine from `base_momentum` to
    `final_momentum`); it is no nn.Module and holds no state of its own: the momentum is a
    function of progress, which the method keeps.
    """

    def __init__(self, base_momentum: float, final_momentum: float = 1.0) -> None:
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self._pairs: list[tuple[nn.Module, nn.Module]] = []

    def follow(self, online: nn.Module) -> nn.Module:
        """A frozen copy of `online` that `step` keeps as its moving average."""
        target = frozen_copy(online)
        self._pairs.append((target, online))
        return target

    def targets(self) -> list[nn.Module]:
        """The frozen copies, in the order they were made."""
        return [target for target, _ in self._pairs]

    def momentum(self, progress: float) -> float:
        return cosine_momentum(progress, self.base_momentum, self.final_momentum)

    @torch.no_grad()
    def step(self, progress: float) -> float:
        """θ_target ← m·θ_target + (1 − m)·θ_online for every pair; returns m."""
        momentum = self.momentum(progress)
        for target, online in self._pairs:
            ema_update(target, online, momentum)
        return momentum
