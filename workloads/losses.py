"""Pixel reconstruction loss of MAE: MSE on masked patches, optionally per-patch normalised."""

from __future__ import annotations

from torch import Tensor

from workloads.masking import gather_tokens


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalise each patch to zero mean, unit variance over its pixels (MAE norm_pix_loss)."""
    mean = target.mean(dim=-1, keepdim=True)
    # Unbiased variance, as MAE's `target.var(dim=-1)`, so results match the reference recipe.
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(
    pred: Tensor, target_patches: Tensor, idx_mask: Tensor, norm_pix_loss: bool
) -> Tensor:
    """Mean over masked patches of the per-patch MSE; pred and target are (B, N, P)."""
    target = normalize_patches(target_patches) if norm_pix_loss else target_patches
    per_patch = ((pred - target) ** 2).mean(dim=-1, keepdim=True)  # (B, N, 1)
    # Every sample masks the same number of patches, so a flat mean equals MAE's weighted sum.
    return gather_tokens(per_patch, idx_mask).mean()
