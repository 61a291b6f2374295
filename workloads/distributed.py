"""What every worker of a data-parallel group agrees on: totals over ranks, and the method's
own module inside the wrappers (DDP, torch.compile) that data-parallel training adds."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def global_sum(values: list[int], device: torch.device) -> list[int]:
    """Element-wise sum over every worker (all ranks get the same totals)."""
    totals = torch.tensor(values, device=device, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    return [int(v) for v in totals.tolist()]


def global_mean(values: list[float], device: torch.device) -> float:
    """Mean over every worker's values (the epoch loss every rank saw, not rank 0's only)."""
    totals = torch.tensor([sum(values), float(len(values))], device=device, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    return (totals[0] / totals[1].clamp(min=1)).item()


def unwrap(model: nn.Module) -> nn.Module:
    """The method's own module inside torch.compile's and DDP's wrappers (their state_dict
    keys carry `_orig_mod.`/`module.` prefixes that checkpoints must not)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
