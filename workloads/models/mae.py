"""Masked autoencoder (He et al. 2022): encode visible patches, decode all, MSE on the masked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from workloads.losses import masked_mse
from workloads.masking import MaskIndices, gather_tokens, random_masking
from workloads.models.decoder import SinCosDecoder
from workloads.models.vit import ViTEncoder, init_linear_and_norm
from workloads.patches import patchify


class MAEDecoder(SinCosDecoder):
    """Light decoder: mask tokens fill the hidden slots, then Blocks predict all patches."""

    def __init__(
        self,
        num_patches: int,
        encoder_dim: int,
        decoder_dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        patch_dim: int = 48,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__(num_patches, encoder_dim, decoder_dim)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.norm = norm_layer(decoder_dim)
        self.pred = nn.Linear(decoder_dim, patch_dim)
        self.apply(init_linear_and_norm)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """(B, 1+K, De) latent, (B, N) ids_restore -> (B, N, patch_dim) predictions."""
        x = self.embed(latent)  # (B, 1+K, Dd)
        cls, visible = x[:, :1, :], x[:, 1:, :]
        num_masked = ids_restore.shape[1] - visible.shape[1]
        mask_tokens = self.mask_token.expand(x.shape[0], num_masked, -1)
        # Visible tokens come first in shuffled order, so ids_restore puts all back in place.
        tokens = gather_tokens(torch.cat([visible, mask_tokens], dim=1), ids_restore)  # (B, N, Dd)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:, :]


@dataclass
class MAEOutput:
    loss: Tensor  # scalar
    pred: Tensor  # (B, N, P) predicted patches, all positions
    masks: MaskIndices


class MaskedAutoencoder(nn.Module):
    """Random masking -> encoder on visible patches -> decoder -> masked MSE."""

    def __init__(
        self,
        encoder: ViTEncoder,
        decoder: MAEDecoder,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

    def forward(self, imgs: Tensor, generator: torch.Generator | None = None) -> MAEOutput:
        masks = random_masking(
            imgs.shape[0], self.encoder.num_patches, self.mask_ratio, imgs.device, generator
        )
        latent = self.encoder(imgs, masks.idx_keep)  # (B, 1+K, De)
        pred = self.decoder(latent, masks.ids_restore)  # (B, N, P)
        target = patchify(imgs, self.encoder.patch_size)  # (B, N, P)
        loss = masked_mse(pred, target, masks.idx_mask, self.norm_pix_loss)
        return MAEOutput(loss=loss, pred=pred, masks=masks)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()} | {
            f"decoder.{name}" for name in self.decoder.no_weight_decay()
        }


def build_mae(
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    decoder_dim: int,
    decoder_depth: int,
    decoder_num_heads: int,
    mask_ratio: float,
    norm_pix_loss: bool,
    in_chans: int = 3,
) -> MaskedAutoencoder:
    """Encoder and decoder sized to each other from the usual recipe knobs."""
    encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads)
    decoder = MAEDecoder(
        num_patches=encoder.num_patches,
        encoder_dim=embed_dim,
        decoder_dim=decoder_dim,
        depth=decoder_depth,
        num_heads=decoder_num_heads,
        patch_dim=patch_size**2 * in_chans,
    )
    return MaskedAutoencoder(encoder, decoder, mask_ratio, norm_pix_loss)


def mae_from_spec(
    model: Mapping[str, Any], mask_ratio: float, norm_pix_loss: bool
) -> MaskedAutoencoder:
    """MAE sized by a run spec's `model` section; methods that only change masking reuse it."""
    return build_mae(
        img_size=model["img_size"],
        patch_size=model["patch_size"],
        embed_dim=model["embed_dim"],
        depth=model["depth"],
        num_heads=model["num_heads"],
        decoder_dim=model["decoder_dim"],
        decoder_depth=model["decoder_depth"],
        decoder_num_heads=model["decoder_num_heads"],
        mask_ratio=mask_ratio,
        norm_pix_loss=norm_pix_loss,
        in_chans=model.get("in_chans", 3),
    )
