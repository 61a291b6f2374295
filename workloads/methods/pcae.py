"""PCAE (Li et al., ICLR 2023): Progressively Compressed Auto-Encoder.

The student is MAE's: a ViT on the visible patches and a light decoder. The target is not
pixels but the features of an EMA teacher that sees the *masked* patches and, after chosen
blocks, drops the tokens most similar (cosine) to the sequence mean: those carry the redundant
content (background, repeated texture). The student decodes only the positions that survive,
so it recovers the key information and skips the rest; the loss is 1 - cos(pred, LN(target)).

Choices the paper leaves open, and what this module does:
- Rank direction: redundancy is cosine similarity to the mean token of the current
  (already compressed) sequence, and the tokens *most* similar to it are dropped, i.e. the
  least similar are kept as the key information. The opposite reading (keep the tokens that
  agree with the consensus) would also fit "similarity"; this one follows "redundant".
- Where: after the teacher blocks listed in `drop_after` (default [0], after the first
  block), on the block output before the next block's norm, in fp32; each stage keeps
  floor(M·keep_ratio) tokens, at least one. Ties keep the lower index (stable sort).
- Teacher input: only the masked patches with their positions, no cls token; its final
  LayerNorm is applied, then an affine-free LayerNorm on the target in the loss.
- Student: MAE's decoder with mask tokens placed only at the kept positions; dropped
  positions take no part in the decoder's attention (they are neither queries nor context).
- Teacher: an EMA of the student encoder (base momentum 0.996, cosine to 1), not a
  separately pretrained network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from workloads.ema import EMATeacher
from workloads.masking import gather_tokens, random_masking
from workloads.methods import register_method
from workloads.methods.base import (
    Method,
    MethodOutput,
    PretrainModel,
    no_decay_names,
)
from workloads.methods.pcae_knobs import CARD, PCAEKnobs, check  # noqa: F401 - re-exported
from workloads.models.mae import MAEDecoder
from workloads.models.vit import ViTEncoder, encoder_from_spec


def kept_count(num_tokens: int, keep_ratio: float) -> int:
    """Tokens left after one drop stage: floor(M * keep_ratio), never fewer than one."""
    # The epsilon stops float error from dropping a token, e.g. 10 * 0.3 = 2.9999...
    return max(1, int(num_tokens * keep_ratio + 1e-6))


def keep_least_redundant(tokens: Tensor, keep: int) -> Tensor:
    """(B, M, D) tokens -> (B, keep) indices of those least cosine-similar to the mean token.

    A token close to the sequence mean repeats what the others already say, so it is dropped.
    Indices come least redundant first.
    """
    mean = tokens.mean(dim=1, keepdim=True)  # (B, 1, D)
    similarity = F.cosine_similarity(tokens, mean, dim=-1)  # (B, M)
    return torch.argsort(similarity, dim=1, stable=True)[:, :keep]


@torch.no_grad()
def teacher_forward(
    teacher: ViTEncoder,
    imgs: Tensor,
    idx_mask: Tensor,
    drop_after: Sequence[int],
    keep_ratio: float,
) -> tuple[Tensor, Tensor]:
    """Run the teacher on the masked patches, compressing after the blocks in `drop_after`.

    Returns (B, M_final, D) features after the teacher's final norm and (B, M_final) the
    original patch index of each surviving token.
    """
    x = gather_tokens(teacher.embed_patches(imgs), idx_mask)  # (B, M, D), no cls token
    positions = idx_mask  # (B, M)
    for index, block in enumerate(teacher.blocks):
        x = block(x)
        if index in drop_after:
            keep = keep_least_redundant(x.float(), kept_count(x.shape[1], keep_ratio))
            x = gather_tokens(x, keep)  # (B, M', D)
            positions = torch.gather(positions, 1, keep)  # (B, M')
    return teacher.norm(x), positions


class KeptPositionDecoder(MAEDecoder):
    """MAE's decoder, but mask tokens are placed only at the positions the teacher kept.

    Self-attention runs over [cls, visible, queries]; each token carries its own position, so
    the sequence needs no restoring to image order.
    """

    def forward(self, latent: Tensor, idx_keep: Tensor, idx_target: Tensor) -> Tensor:
        """(B, 1+K, De) latent, (B, K) visible, (B, T) target indices -> (B, T, out_dim)."""
        x = self.embed(latent)  # (B, 1+K, Dd)
        batch = x.shape[0]
        patch_pos = self.patch_positions(batch)  # (B, N, Dd)
        cls = x[:, :1, :] + self.cls_position()
        visible = x[:, 1:, :] + gather_tokens(patch_pos, idx_keep)  # (B, K, Dd)
        queries = self.mask_token + gather_tokens(patch_pos, idx_target)  # (B, T, Dd)
        x = torch.cat([cls, visible, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x[:, -idx_target.shape[1] :, :]))


def cosine_feature_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over tokens of 1 - cos(pred, LayerNorm(target)); LN has no affine (fixed target)."""
    target = F.layer_norm(target.float(), target.shape[-1:])
    return (1.0 - F.cosine_similarity(pred.float(), target, dim=-1)).mean()


class PCAE(PretrainModel):
    """Student (encoder + decoder) regressing an EMA teacher's progressively compressed tokens."""

    def __init__(
        self,
        encoder: ViTEncoder,
        decoder: KeptPositionDecoder,
        mask_ratio: float = 0.75,
        keep_ratio: float = 0.5,
        drop_after: Sequence[int] = (0,),
        momentum: float = 0.996,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.ema = EMATeacher(momentum, final_momentum=1.0)
        self.teacher = self.ema.follow(encoder)
        self.mask_ratio = mask_ratio
        self.keep_ratio = keep_ratio
        self.drop_after = tuple(drop_after)
        self.base_momentum = momentum
        self.ema_momentum = self.ema.momentum(0.0)

    def forward(self, imgs: Tensor, generator: torch.Generator | None = None) -> MethodOutput:
        masks = random_masking(
            imgs.shape[0], self.encoder.num_patches, self.mask_ratio, imgs.device, generator
        )
        target, positions = teacher_forward(
            self.teacher, imgs, masks.idx_mask, self.drop_after, self.keep_ratio
        )  # (B, T, D), (B, T)
        latent = self.encoder(imgs, masks.idx_keep)  # (B, 1+K, D)
        pred = self.decoder(latent, masks.idx_keep, positions)  # (B, T, D)
        loss = cosine_feature_loss(pred, target)
        metrics = {
            "teacher_tokens": float(positions.shape[1]),
            "ema_momentum": self.ema_momentum,
            "mask_ratio": self.mask_ratio,
        }
        return MethodOutput(loss=loss, metrics=metrics)

    def after_optimizer_step(self, progress: float) -> None:
        """Teacher <- EMA of the student encoder, momentum on a cosine from base to 1."""
        self.ema_momentum = self.ema.step(progress)

    def no_weight_decay(self) -> set[str]:
        return no_decay_names(encoder=self.encoder, decoder=self.decoder)


def build(model: Mapping[str, Any], knobs: PCAEKnobs) -> PCAE:
    encoder = encoder_from_spec(model)
    decoder = KeptPositionDecoder(
        num_patches=encoder.num_patches,
        encoder_dim=model["embed_dim"],
        decoder_dim=model["decoder_dim"],
        depth=model["decoder_depth"],
        num_heads=model["decoder_num_heads"],
        patch_dim=model["embed_dim"],  # predicts teacher features, not pixels
    )
    return PCAE(
        encoder,
        decoder,
        mask_ratio=knobs.mask_ratio,
        keep_ratio=knobs.keep_ratio,
        drop_after=knobs.drop_after,
        momentum=knobs.momentum,
    )


METHOD = register_method(Method(CARD, build=build, model=PCAE))
