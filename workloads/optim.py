"""MAE's optimizer: AdamW with selective weight decay, and setting a step's learning rate
(the schedule itself is `workloads.schedule`, free of torch for the drivers that plan runs)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class ExemptsFromDecay(Protocol):
    """What the optimizer needs of a model: every method's `PretrainModel` keeps it, and so do
    MAE's MaskedAutoencoder and the encoders and decoders they are built of."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names (as in `named_parameters`) that take no weight decay."""
        ...


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: no decay on biases, norms and the names in `model.no_weight_decay()`
    (a plain module, e.g. a probe head, names none)."""
    skip = model.no_weight_decay() if isinstance(model, ExemptsFromDecay) else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:  # fixed pos embeds
            continue
        if param.ndim <= 1 or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups_weight_decay(model, weight_decay), lr=lr, betas=betas)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR, scaled by its optional "lr_scale" (layer-wise decay in fine-tuning)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
