"""Fixed sin-cos position embeddings, as MAE's get_2d_sincos_pos_embed (in torch)."""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_pos_embed_1d(embed_dim: int, positions: Tensor) -> Tensor:
    """(M,) positions -> (M, D): [sin(pos * omega), cos(pos * omega)], omega = 1/10000^(2i/D)."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    angles = torch.outer(positions.reshape(-1).to(torch.float64), omega)  # (M, D/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, cls_token: bool = False) -> Tensor:
    """(grid², D) float32, or (1 + grid², D) with a leading zero row for the cls token."""
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    # "xy" indexing mirrors MAE's np.meshgrid(grid_w, grid_h): the first half encodes the column.
    first, second = torch.meshgrid(coords, coords, indexing="xy")  # (G, G) each
    emb = torch.cat(
        [sincos_pos_embed_1d(embed_dim // 2, first), sincos_pos_embed_1d(embed_dim // 2, second)],
        dim=1,
    )  # (G*G, D)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
