"""What every mimray decoder starts from: the encoder-to-decoder embedding, a mask token and
fixed 2-D sin-cos positions (MAE's decoder set-up). MAE's, PCAE's and Latent MIM's decoders
subclass it and add their own blocks and head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workloads.models.pos_embed import sincos_pos_embed_2d


class SinCosDecoder(nn.Module):
    """`embed` (encoder width -> decoder width), `mask_token`, and `pos_embed` (1, 1+N, Dd),
    a frozen Parameter with a zero cls row first (frozen, yet a Parameter: the checkpoint
    key names stay MAE's). Subclasses create their layers after calling this __init__, so
    parameter order, names and the random draws of initialisation are those of MAE."""

    def __init__(self, num_patches: int, encoder_dim: int, decoder_dim: int) -> None:
        super().__init__()
        grid_size = int(round(num_patches**0.5))
        if grid_size**2 != num_patches:
            raise ValueError(f"{num_patches} patches do not form a square grid")
        self.embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = sincos_pos_embed_2d(decoder_dim, grid_size, cls_token=True)
        self.pos_embed = nn.Parameter(pos.unsqueeze(0), requires_grad=False)  # (1, 1+N, Dd)

    def cls_position(self) -> Tensor:
        """(1, 1, Dd) position of the cls token."""
        return self.pos_embed[:, :1, :]

    def patch_positions(self, batch_size: int) -> Tensor:
        """(B, N, Dd) positions of the patches in image order, one view per image."""
        return self.pos_embed[:, 1:, :].expand(batch_size, -1, -1)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "pos_embed"}
