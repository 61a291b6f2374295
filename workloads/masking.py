"""Random masking as in MAE: a mask is a pair of index tensors plus the inverse permutation.

Masks stay plain index tensors (as in lightly) so other strategies only need to return indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workloads.patch_counts import num_kept


@dataclass(frozen=True)
class MaskIndices:
    """Which patches the encoder sees and how to put tokens back in image order.

    idx_keep: (B, N_keep) visible patch indices; idx_mask: (B, N_mask) hidden ones;
    ids_restore: (B, N) such that gathering cat([keep, mask]) with it restores patch order.
    """

    idx_keep: Tensor
    idx_mask: Tensor
    ids_restore: Tensor


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> MaskIndices:
    """Per-sample uniform random mask: sort uniform noise, keep the first N_keep (MAE)."""
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)  # (B, N)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = num_kept(num_patches, mask_ratio)
    return MaskIndices(
        idx_keep=ids_shuffle[:, :keep],
        idx_mask=ids_shuffle[:, keep:],
        ids_restore=ids_restore,
    )


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """Select tokens per sample: (B, N, D), (B, K) -> (B, K, D)."""
    return torch.gather(x, dim=1, index=idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
