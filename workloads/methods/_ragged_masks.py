"""Masks whose size differs from image to image (AMR with one ratio per image), batched.

A batch stays rectangular: every image's visible tokens are padded to the largest visible
count of the batch. Padding is hidden everywhere it could leak or count:

- encoder: padded tokens are removed from every attention's keys, so an image's latent is
  what the encoder computes for that image alone (the padded rows themselves are discarded);
- decoder: an image's padded slots become mask tokens, so the decoder sees exactly MAE's
  input for that image (visible tokens + one mask token per hidden position);
- loss: the MSE is averaged over every masked patch of the batch, (loss·mask).sum() /
  mask.sum() as in MAE's reference code, so an image with more masked patches weighs more.
  (Averaging per image first is the other reading; the papers do not say. This one keeps
  every masked patch an equal target, as MAE's loss does when counts are equal.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workloads.losses import normalize_patches
from workloads.masking import gather_tokens
from workloads.models.mae import MAEDecoder
from workloads.models.vit import ViTEncoder


@dataclass(frozen=True)
class RaggedMask:
    """Per-image masks of different sizes.

    ids_shuffle (B, L): token ids in the order they are kept (image i shows the first
    num_visible[i]); ids_restore (B, L): its inverse; num_visible (B,).
    """

    ids_shuffle: Tensor
    ids_restore: Tensor
    num_visible: Tensor

    @property
    def idx_keep(self) -> Tensor:
        """(B, K_max) visible ids, padded with hidden ones past each image's own count."""
        return self.ids_shuffle[:, : int(self.num_visible.max())]

    @property
    def visible_valid(self) -> Tensor:
        """(B, K_max) True where idx_keep holds a truly visible token, False on padding."""
        slots = torch.arange(self.idx_keep.shape[1], device=self.num_visible.device)
        return slots.unsqueeze(0) < self.num_visible.unsqueeze(1)

    @property
    def masked(self) -> Tensor:
        """(B, L) True at the hidden tokens, in image order."""
        return self.ids_restore >= self.num_visible.unsqueeze(1)


def masked_counts(num_tokens: int, ratios: Tensor) -> Tensor:
    """(B,) ratios -> (B,) ceil(L·ratio), at least one masked and one visible token each."""
    # float64 and the epsilon stop float error from adding a token, e.g. ceil(10 * 0.7) = 8.
    counts = torch.ceil(num_tokens * ratios.double() - 1e-6)
    return counts.clamp(1, num_tokens - 1).long()


def ragged_masking(ids_shuffle: Tensor, ratios: Tensor) -> RaggedMask:
    """Keep the first L − ceil(L·R_i) tokens of row i of ids_shuffle (B, L); ratios (B,)."""
    num_tokens = ids_shuffle.shape[1]
    return RaggedMask(
        ids_shuffle=ids_shuffle,
        ids_restore=torch.argsort(ids_shuffle, dim=1),
        num_visible=num_tokens - masked_counts(num_tokens, ratios),
    )


def encode_padded(encoder: ViTEncoder, tokens: Tensor, valid: Tensor) -> Tensor:
    """ViTEncoder.forward_visible with padding: (B, K, D) tokens, (B, K) valid -> (B, 1+K, D).

    Padded tokens are keys of no attention (boolean mask: True takes part), so the cls and
    valid rows equal those of the image encoded alone; padded rows are left to be ignored.
    """
    batch = tokens.shape[0]
    cls = (encoder.cls_token + encoder.pos_embed[:, :1, :]).expand(batch, -1, -1)
    x = torch.cat([cls, tokens], dim=1)  # (B, 1+K, D)
    cls_valid = torch.ones(batch, 1, dtype=torch.bool, device=valid.device)
    attends = torch.cat([cls_valid, valid], dim=1)[:, None, None, :]  # (B, 1, 1, 1+K)
    for block in encoder.blocks:
        x = block(x, attn_mask=attends)
    return encoder.norm(x)


class PaddedMAEDecoder(MAEDecoder):
    """MAE's decoder that also takes padded latents: padded slots become mask tokens."""

    def forward(
        self, latent: Tensor, ids_restore: Tensor, visible_valid: Tensor | None = None
    ) -> Tensor:
        """(B, 1+K, De) latent, (B, N) ids_restore, optional (B, K) valid -> (B, N, P)."""
        if visible_valid is None:
            return super().forward(latent, ids_restore)
        x = self.embed(latent)  # (B, 1+K, Dd)
        cls, visible = x[:, :1, :], x[:, 1:, :]
        # Past its own visible count an image's slots are hidden patches: mask tokens there.
        visible = torch.where(visible_valid.unsqueeze(-1), visible, self.mask_token)
        num_masked = ids_restore.shape[1] - visible.shape[1]
        mask_tokens = self.mask_token.expand(x.shape[0], num_masked, -1)
        tokens = gather_tokens(torch.cat([visible, mask_tokens], dim=1), ids_restore)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed  # (B, 1+N, Dd)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:, :]


def ragged_masked_mse(
    pred: Tensor, target_patches: Tensor, masked: Tensor, norm_pix_loss: bool
) -> Tensor:
    """MSE over every masked patch of the batch: pred, target (B, N, P), masked (B, N) bool."""
    target = normalize_patches(target_patches) if norm_pix_loss else target_patches
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
    weights = masked.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum()
