"""SBAM and AMR (Choi et al., ECCV 2024, "Salience-Based Adaptive Masking").

SBAM replaces MAE's random mask with a salience-ordered one. Token salience comes from the
patch embeddings (+ positions) before any block: with X (B, L, D), A = softmax(X Xᵀ) row-wise,
and S = per-image min-max of A's column sums, i.e. how much attention each token receives.
The score S + U[0, 0.5) ranks tokens and the top ceil(L·γ) are masked, so salient tokens are
hidden more often but not always. AMR (Δr > 0) adapts the ratio to the content:
R = r − Δr + 2Δr·mean(1[S > δ]), with r = γ. The encoder, decoder and masked MSE are MAE's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from workloads.losses import masked_mse
from workloads.masking import MaskIndices, gather_tokens
from workloads.methods import register_method
from workloads.methods.base import Method, MethodKnobs, MethodOutput, no_decay_names
from workloads.models.mae import MAEDecoder, mae_from_spec
from workloads.models.vit import ViTEncoder
from workloads.patches import patchify


class SBAMKnobs(MethodKnobs):
    name: str = "sbam"
    gamma: float = Field(0.75, gt=0.0, lt=1.0, description="masking ratio γ (r of AMR)")
    delta_r: float = Field(0.0, ge=0.0, description="AMR ratio swing Δr; 0 = plain SBAM")
    delta: float = Field(0.5, ge=0.0, le=1.0, description="AMR salience threshold δ")
    noise: float = Field(
        0.5, ge=0.0, description="upper bound of the U[0, noise) added to S; 0 = deterministic"
    )
    norm_pix_loss: bool = Field(True, description="per-patch normalised pixel targets")

    @model_validator(mode="after")
    def _ratio_range_inside_unit_interval(self) -> SBAMKnobs:
        # AMR's ratio sweeps [γ − Δr, γ + Δr]; it must stay a valid masking ratio.
        low, high = self.gamma - self.delta_r, self.gamma + self.delta_r
        if self.delta_r > 0 and not (0.0 < low and high < 1.0):
            limit = min(self.gamma, 1.0 - self.gamma)
            raise ValueError(
                f"delta_r: gamma ± delta_r = {self.gamma:g} ± {self.delta_r:g} leaves (0, 1); "
                f"allowed: 0 <= delta_r < min(gamma, 1 - gamma) = {limit:g}"
            )
        return self


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


def salient_masking(
    saliency: Tensor,
    mask_ratio: float,
    noise: float = 0.5,
    generator: torch.Generator | None = None,
) -> MaskIndices:
    """Mask the ceil(L·ratio) tokens with the highest S + U[0, noise); keep the rest."""
    batch, num_tokens = saliency.shape
    score = saliency
    if noise > 0:
        uniform = torch.rand(
            batch, num_tokens, device=saliency.device, generator=generator, dtype=saliency.dtype
        )
        score = saliency + noise * uniform  # (B, L)
    # Ascending: the least salient come first and stay visible, the decoder's expected order.
    ids_shuffle = torch.argsort(score, dim=1)
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
    """AMR: R = r − Δr + 2Δr·mean(1[S > δ]), in [r − Δr, r + Δr].

    The paper adapts R per image; one R per batch keeps every image's mask the same size, so
    visible tokens stay one rectangular (B, K, D) tensor.
    """
    return r - delta_r + 2.0 * delta_r * salient_share(saliency, delta)


# --------------------------------------------------------------------------------- model


class SBAM(nn.Module):
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
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.gamma = gamma
        self.delta_r = delta_r
        self.delta = delta
        self.noise = noise
        self.norm_pix_loss = norm_pix_loss

    def forward(self, imgs: Tensor, generator: torch.Generator | None = None) -> MethodOutput:
        tokens = self.encoder.embed_patches(imgs)  # (B, L, D)
        # Salience only orders tokens; no gradient flows through the choice of mask.
        with torch.no_grad():
            saliency = token_saliency(tokens.detach())  # (B, L)
        share = salient_share(saliency, self.delta)
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

    def no_weight_decay(self) -> set[str]:
        return no_decay_names(encoder=self.encoder, decoder=self.decoder)


def build(model: Mapping[str, Any], knobs: SBAMKnobs) -> nn.Module:
    mae = mae_from_spec(model, mask_ratio=knobs.gamma, norm_pix_loss=knobs.norm_pix_loss)
    return SBAM(
        mae.encoder,
        mae.decoder,
        gamma=knobs.gamma,
        delta_r=knobs.delta_r,
        delta=knobs.delta,
        noise=knobs.noise,
        norm_pix_loss=knobs.norm_pix_loss,
    )


METHOD = register_method(
    Method(
        name="sbam",
        summary="Salience-based masking (top ceil(L·γ) by S + noise); AMR ratio when delta_r > 0",
        knobs=SBAMKnobs,
        build=build,
    )
)
