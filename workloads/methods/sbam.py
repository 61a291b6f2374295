"""SBAM and AMR (Choi et al., ECCV 2024, "Salience-Based Adaptive Masking").

SBAM replaces MAE's random mask with a salience-ordered one. Token salience comes from the
patch embeddings (+ positions) before any block: with X (B, L, D), A = softmax(X Xᵀ) row-wise,
and S = per-image min-max of A's column sums, i.e. how much attention each token receives.
The score S + U[0, 0.5) ranks tokens and the top ceil(L·γ) are masked, so salient tokens are
hidden more often but not always. AMR (Δr > 0) adapts the ratio to the content:
R = r − Δr + 2Δr·mean(1[S > δ]), with r = γ. The encoder, decoder and masked MSE are MAE's.

`amr_scope` says over what the mean is taken. `batch` (default): one R for the whole batch,
which is what the authors' code (doihye/SBAM, `saliency_guided_masking`) computes:
`y.float().mean()` over the batch and one `len_keep`. `image`: R_i per image, the reading
the paper's motivation and the repository's README ("per image") suggest: an image with
more salient content is masked more. Masks then differ in size within a batch, which
`_ragged_masks` batches by padding (padding hidden from attention, mask tokens in the
decoder, loss averaged over all masked patches).

Choices the paper leaves open, and what this module does:
- X Xᵀ is unscaled (no 1/√D) and includes the positional embedding, as in the authors' code;
  it is computed in fp32 even under autocast (bf16 would tie near-equal scores) and with no
  gradient (the mask is a choice, as in the code, where only argsort indices leave it).
- An image whose tokens are all equal has max = min: S = 0 everywhere (the code's min-max
  would give 0/0 = NaN there).
- Masked count ceil(L·R), at least 1 masked and 1 visible; the code's L − int(L·(1 − R)) is
  the same count up to float error.
- r of AMR is γ: the code's formula reads a name `mask_ratio` that its function never defines
  (its `base_mask_ratio` argument is unused), and its training loop calls the model with
  different arguments than `forward` takes, so the released code does not run as published;
  its formulas are followed, not its wiring. Its argument parser has no Δr or δ, so their
  defaults here (Δr = 0: plain SBAM; δ = 0.5) are mimray's; the noise bound 0.5 is the
  code's `torch.rand(...) / 2`.
- The repository's README calls S "outgoing attention"; the code's column sums of the
  row-softmax are the attention each token *receives*. The code is followed.
- Per-image AMR's loss weights every masked patch of the batch equally, (loss·mask).sum() /
  mask.sum() as in MAE's code, so images with a larger R_i weigh more (see _ragged_masks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from workloads.losses import masked_mse
from workloads.masking import MaskIndices, gather_tokens
from workloads.methods import register_method
from workloads.methods._ragged_masks import (
    PaddedMAEDecoder,
    RaggedMask,
    encode_padded,
    ragged_masked_mse,
    ragged_masking,
)
from workloads.methods.base import (
    Method,
    MethodOutput,
    PretrainModel,
    no_decay_names,
)
from workloads.methods.sbam_knobs import CARD, AMRScope, SBAMKnobs
from workloads.models.mae import MAEDecoder
from workloads.models.vit import ViTEncoder, encoder_from_spec
from workloads.patches import patchify

# ------------------------------------------------------------------------------- masking


def token_saliency(x: Tensor) -> Tensor:
    """(B, L, D) embedded tokens -> (B, L) salience S in [0, 1], min 0 and max 1 per image."""
    # Unscaled logits X Xᵀ are large; bf16 under autocast would tie near-equal scores.
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        attention = torch.softmax(x @ x.transpose(1, 2), dim=-1)  # (B, L, L), rows sum to 1
        received = attention.sum(dim=1)  # (B, L) column sums: attention each token receives
        low = received.min(dim=1, keepdim=True).values
        high = received.max(dim=1, keepdim=True).values
        # A flat image (all equal) has no salient token: S = 0 everywhere, not 0/0.
        return (received - low) / (high - low).clamp_min(1e-12)


def num_masked(num_tokens: int, mask_ratio: float) -> int:
    """ceil(L·ratio), at least one masked and one visible token."""
    # The epsilon stops float error from adding a token, e.g. ceil(10 * 0.7) = 8.
    return min(num_tokens - 1, max(1, math.ceil(num_tokens * mask_ratio - 1e-6)))


def salience_order(
    saliency: Tensor, noise: float = 0.5, generator: torch.Generator | None = None
) -> Tensor:
    """(B, L) -> (B, L) token ids by ascending S + U[0, noise): the least salient first."""
    batch, num_tokens = saliency.shape
    score = saliency
    if noise > 0:
        uniform = torch.rand(
            batch, num_tokens, device=saliency.device, generator=generator, dtype=saliency.dtype
        )
        score = saliency + noise * uniform  # (B, L)
    return torch.argsort(score, dim=1)


def salient_masking(
    saliency: Tensor,
    mask_ratio: float,
    noise: float = 0.5,
    generator: torch.Generator | None = None,
) -> MaskIndices:
    """Mask the ceil(L·ratio) tokens with the highest S + U[0, noise); keep the rest."""
    num_tokens = saliency.shape[1]
    # Ascending: the least salient come first and stay visible, the decoder's expected order.
    ids_shuffle = salience_order(saliency, noise, generator)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = num_tokens - num_masked(num_tokens, mask_ratio)
    return MaskIndices(
        idx_keep=ids_shuffle[:, :keep],
        idx_mask=ids_shuffle[:, keep:],
        ids_restore=ids_restore,
    )


def salient_share(saliency: Tensor, delta: float) -> float:
    """mean(1[S > δ]) over every image and token of the batch."""
    return (saliency > delta).float().mean().item()


def adaptive_ratio(saliency: Tensor, r: float, delta_r: float, delta: float) -> float:
    """AMR per batch: R = r − Δr + 2Δr·mean(1[S > δ]) over the whole batch, in [r − Δr, r + Δr].

    What the authors' code computes (`y.float().mean()` over the batch, one `len_keep`), so
    every image's mask has the same size.
    """
    return r - delta_r + 2.0 * delta_r * salient_share(saliency, delta)


def adaptive_ratios(saliency: Tensor, r: float, delta_r: float, delta: float) -> Tensor:
    """AMR per image: (B, L) -> (B,) R_i = r − Δr + 2Δr·mean_j(1[S_ij > δ]) (float64)."""
    return r - delta_r + 2.0 * delta_r * (saliency > delta).double().mean(dim=1)


def salient_masking_per_image(
    saliency: Tensor,
    ratios: Tensor,
    noise: float = 0.5,
    generator: torch.Generator | None = None,
) -> RaggedMask:
    """Image i masks its ceil(L·R_i) tokens with the highest S + U[0, noise)."""
    return ragged_masking(salience_order(saliency, noise, generator), ratios)


# --------------------------------------------------------------------------------- model


class SBAM(PretrainModel):
    """Salience-ordered mask (optionally AMR ratio) -> MAE encoder/decoder -> masked MSE."""

    def __init__(
        self,
        encoder: ViTEncoder,
        decoder: MAEDecoder,
        gamma: float = 0.75,
        delta_r: float = 0.0,
        delta: float = 0.5,
        noise: float = 0.5,
        norm_pix_loss: bool = True,
        amr_scope: AMRScope = "batch",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.gamma = gamma
        self.delta_r = delta_r
        self.delta = delta
        self.noise = noise
        self.norm_pix_loss = norm_pix_loss
        self.amr_scope = amr_scope

    def forward(self, imgs: Tensor, generator: torch.Generator | None = None) -> MethodOutput:
        tokens = self.encoder.embed_patches(imgs)  # (B, L, D)
        # Salience only orders tokens; no gradient flows through the choice of mask.
        with torch.no_grad():
            saliency = token_saliency(tokens.detach())  # (B, L)
        share = salient_share(saliency, self.delta)
        if self.delta_r > 0 and self.amr_scope == "image":
            return self.forward_per_image(imgs, tokens, saliency, share, generator)
        ratio = (
            adaptive_ratio(saliency, self.gamma, self.delta_r, self.delta)
            if self.delta_r > 0
            else self.gamma
        )
        masks = salient_masking(saliency, ratio, self.noise, generator)
        latent = self.encoder.forward_visible(gather_tokens(tokens, masks.idx_keep))  # (B, 1+K, D)
        pred = self.decoder(latent, masks.ids_restore)  # (B, L, P)
        target = patchify(imgs, self.encoder.patch_size)  # (B, L, P)
        loss = masked_mse(pred, target, masks.idx_mask, self.norm_pix_loss)
        return MethodOutput(loss=loss, metrics={"mask_ratio": ratio, "salient_share": share})

    def forward_per_image(
        self,
        imgs: Tensor,
        tokens: Tensor,
        saliency: Tensor,
        share: float,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        """AMR with one ratio per image: masks of different sizes, padded (see _ragged_masks)."""
        ratios = adaptive_ratios(saliency, self.gamma, self.delta_r, self.delta)  # (B,)
        masks = salient_masking_per_image(saliency, ratios, self.noise, generator)
        visible = gather_tokens(tokens, masks.idx_keep)  # (B, K_max, D)
        latent = encode_padded(self.encoder, visible, masks.visible_valid)  # (B, 1+K_max, D)
        pred = self.decoder(latent, masks.ids_restore, masks.visible_valid)  # (B, L, P)
        target = patchify(imgs, self.encoder.patch_size)  # (B, L, P)
        loss = ragged_masked_mse(pred, target, masks.masked, self.norm_pix_loss)
        low, mean, high = torch.stack([ratios.min(), ratios.mean(), ratios.max()]).tolist()
        metrics = {
            "mask_ratio": mean,
            "mask_ratio_min": low,
            "mask_ratio_max": high,
            "salient_share": share,
        }
        return MethodOutput(loss=loss, metrics=metrics)

    def no_weight_decay(self) -> set[str]:
        return no_decay_names(encoder=self.encoder, decoder=self.decoder)


def build(model: Mapping[str, Any], knobs: SBAMKnobs) -> SBAM:
    encoder = encoder_from_spec(model)
    # MAE's decoder (same weights and names) that also decodes per-image AMR's padded latents.
    decoder = PaddedMAEDecoder(
        num_patches=encoder.num_patches,
        encoder_dim=model["embed_dim"],
        decoder_dim=model["decoder_dim"],
        depth=model["decoder_depth"],
        num_heads=model["decoder_num_heads"],
        patch_dim=model["patch_size"] ** 2 * model.get("in_chans", 3),
    )
    return SBAM(
        encoder,
        decoder,
        gamma=knobs.gamma,
        delta_r=knobs.delta_r,
        delta=knobs.delta,
        noise=knobs.noise,
        norm_pix_loss=knobs.norm_pix_loss,
        amr_scope=knobs.amr_scope,
    )


METHOD = register_method(Method(CARD, build=build, model=SBAM))
