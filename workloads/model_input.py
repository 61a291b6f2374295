"""What a batch from Ray Data becomes before a model sees it: its decodable rows, as
normalised float images on the worker's device; and the check that not too many rows were
undecodable."""

from __future__ import annotations

from collections.abc import Mapping

import torch

# ImageNet statistics, as in the MAE recipe; targets are normalised per patch anyway.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, C) from Ray Data -> normalised float (B, C, H, W) on device."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def select_decodable(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, int]:
    """The batch's decodable images and how many were not (sources mark them `ok=False`).

    None when nothing in the batch decoded; the caller then steps with zero weight.
    """
    if "ok" not in batch:
        return batch["image"], 0
    ok = batch["ok"].bool()
    corrupt = int((~ok).sum())
    if corrupt == len(ok):
        return None, corrupt
    return (batch["image"][ok] if corrupt else batch["image"]), corrupt


class DataQualityError(RuntimeError):
    """Too many undecodable images: the source is broken, not just a few bad records."""


def check_skipped_share(skipped: int, seen: int, threshold: float, epoch: int) -> None:
    if seen and skipped / seen > threshold:
        raise DataQualityError(
            f"data: {skipped} of {seen} images ({skipped / seen:.1%}) in epoch {epoch} could "
            f"not be decoded, above data.max_skipped_share={threshold:.1%}; fix the source "
            "or raise the threshold"
        )
