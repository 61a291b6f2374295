"""ViT encoder for masked image modelling: it runs its blocks on the visible tokens only."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from workloads.masking import gather_tokens
from workloads.models.pos_embed import sincos_pos_embed_2d


def init_linear_and_norm(module: nn.Module) -> None:
    """xavier-uniform Linear weights, zero biases, unit LayerNorm; use with `module.apply`."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTEncoder(nn.Module):
    """Patch embedding + fixed 2-D sin-cos positions + cls token + timm Blocks + LayerNorm."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 4,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed, not learned (MAE); a frozen Parameter keeps MAE's state_dict key names.
        pos = sincos_pos_embed_2d(embed_dim, self.grid_size, cls_token=True)
        self.pos_embed = nn.Parameter(pos.unsqueeze(0), requires_grad=False)  # (1, 1+N, D)
        # timm's Attention uses F.scaled_dot_product_attention (fused) by default.
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        self.apply(init_linear_and_norm)
        # Treat the patch conv like a Linear over the flattened patch (MAE).
        weight = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def embed_patches(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, D) patch tokens with their positions, no cls token."""
        return self.patch_embed(imgs) + self.pos_embed[:, 1:, :]

    def forward_visible(self, tokens: Tensor) -> Tensor:
        """(B, K, D) embedded tokens -> (B, 1+K, D): prepend cls, run blocks and final norm."""
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)  # (B, 1+K, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, imgs: Tensor, idx_keep: Tensor | None = None) -> Tensor:
        """(B, C, H, W), optional (B, K) visible indices -> (B, 1+K, D) latent."""
        tokens = self.embed_patches(imgs)  # (B, N, D)
        if idx_keep is not None:
            tokens = gather_tokens(tokens, idx_keep)  # (B, K, D)
        return self.forward_visible(tokens)

    def forward_features(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D) mean of the patch tokens of the whole, unmasked image."""
        return self.forward(imgs)[:, 1:, :].mean(dim=1)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}


def encoder_from_spec(model: Mapping[str, Any]) -> ViTEncoder:
    """The encoder sized by a run spec's `model` section."""
    return ViTEncoder(
        model["img_size"],
        model["patch_size"],
        model.get("in_chans", 3),
        model["embed_dim"],
        model["depth"],
        model["num_heads"],
    )
