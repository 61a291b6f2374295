"""Latent MIM (Wei et al., ECCV 2024, "Towards Latent Masked Image Modeling for
Self-Supervised Visual Representation Learning").

MIM in latent space: the online encoder sees the visible patches, a cross-attention decoder
predicts features at the masked positions, and the targets are the features an EMA copy of
the encoder (momentum cosine 0.99 -> 1) computes from the masked patches alone. Three parts
keep the jointly learned targets from collapsing: PatchDisc (within-image InfoNCE, τ = 0.2,
× 2τ) instead of regression; a non-contiguous grid (the image resized to g·(p+gap) per side,
one random p×p crop per cell) so neighbouring patches do not give each other away; and a
similarity regulariser on the mean pairwise cosine between an image's patch features.

The regulariser follows the authors' code: sim_coeff·[(s_pred − t)² + (s_vis − t)²], s the
mean cosine over distinct patch pairs of the decoder's predictions and of the online
encoder's visible features, t decaying (half cosine) from 0.75 to 0.25 over training. Both
sides are penalised, so similarity is held near a falling target: high early, while the
features are still forming, and pushed down later, which stops every patch collapsing onto
one vector. Distinct pairs only (the authors also average the self-similarities of 1), so
t means the same thing at every patch count and mask ratio.

Non-contiguous grid at native resolution. The authors' data pipeline resizes (RandomResized
Crop) each image straight to g·(p+gap) and the model cuts one p×p crop per (p+gap)² cell
with no further resampling; evaluation sees g·p images and plain patches. Resizing belongs
to the data side, so the method states the size it wants, `train_img_size` (g·(p+gap); the
registry's `train_img_size(spec)` answers for any run), and whoever builds the training
stream asks for it (`orchestrator/pretrain/trainer.py:training_stream` does). Given g·(p+gap) images
the crops are exact pixel copies. Given model.img_size (g·p) images, e.g.
from a stream that did not ask, the method first resizes them bilinearly to g·(p+gap) — an
upsampling that blurs every patch and confounds the gap ablation — and logs
`grid_resampled` = 1 so such runs are visible.

Projection head (`projector`). The authors' code puts its 3-layer MLP (`_build_mlp`, depth
3, out_norm) on the online encoder, whose projected tokens feed the decoder and the visible
side of the regulariser, and an EMA copy on the target encoder. Default `mlp`: the paper's
ablation prefers the head, and the released code always builds it (its `use_proj: False`
config key is read nowhere). Evaluation drops the head, as theirs does (`encoder.head =
Identity` in eval_knn): only `encoder` is the representation.

Choices the paper leaves open (or where mimray departs from the released code):
- Projector hidden width 4·D (the authors use 4096 for every backbone, 5.3·D at ViT-B);
  4096 would dwarf the small ViTs mimray runs locally.
- Grid offsets uniform over all (gap+1)² windows of a cell (see `gap_grid_offsets`); the
  code's `randint(0, gap)` leaves out the last one.
- Mask ratio: the authors' config keeps a fixed 20 of 196 patches visible (≈ 0.9 masked);
  the default here is MAE's 0.75; `method.mask_ratio=0.9` gives theirs.
- sim_coeff defaults to 0.1; the released config has `avg_sim_coeff: 0` (regulariser off).
- The EMA step runs after each optimizer step; the code updates the target at the start
  of the next forward with the same momentum, which is the same sequence of weights.
- Weight decay follows mimray's recipe (none on biases, norms, cls and positions); the
  code also exempts every parameter whose name contains "embed", patch embeddings included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from workloads.ema import EMATeacher
from workloads.masking import MaskIndices, gather_tokens, random_masking
from workloads.methods import register_method
from workloads.methods._latent_mim_parts import (
    CrossAttentionDecoder,
    gap_grid_crops,
    mean_pairwise_cosine,
    needs_resampling,
    patch_disc_loss,
    projection_head,
)
from workloads.methods.base import (
    Method,
    MethodOutput,
    PretrainModel,
    no_decay_names,
)
from workloads.methods.latent_mim_knobs import (  # noqa: F401 - re-exported
    CARD,
    LatentMIMKnobs,
    check,
    train_img_size,
)
from workloads.models.vit import ViTEncoder, encoder_from_spec

# Similarity target of the regulariser, from the start to the end of training.
SIM_TARGET_START, SIM_TARGET_END = 0.75, 0.25


def sim_target(progress: float) -> float:
    """Regulariser target, a half cosine from SIM_TARGET_START to SIM_TARGET_END."""
    progress = min(max(progress, 0.0), 1.0)
    weight = 0.5 * (1.0 + math.cos(math.pi * progress))
    return SIM_TARGET_END + (SIM_TARGET_START - SIM_TARGET_END) * weight


class LatentMIM(PretrainModel):
    """Online encoder + EMA target encoder + cross-attention decoder, PatchDisc loss."""

    def __init__(
        self,
        encoder: ViTEncoder,
        decoder: CrossAttentionDecoder,
        mask_ratio: float = 0.75,
        gap: int = 0,
        tau: float = 0.2,
        sim_coeff: float = 0.1,
        momentum_base: float = 0.99,
        projector: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.ema = EMATeacher(momentum_base, final_momentum=1.0)
        self.target_encoder = self.ema.follow(encoder)
        self.decoder = decoder
        # Per-token head after each encoder; the target's is the EMA of the online one.
        self.projector = projector if projector is not None else nn.Identity()
        self.target_projector = self.ema.follow(self.projector)
        self.mask_ratio = mask_ratio
        self.gap = gap
        self.tau = tau
        self.sim_coeff = sim_coeff
        self.momentum_base = momentum_base
        self.progress = 0.0  # share of training done; set after every optimizer step

    def forward(
        self,
        imgs: Tensor,
        masks: MaskIndices | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        patch, grid = self.encoder.patch_size, self.encoder.grid_size
        resampled = self.gap > 0 and needs_resampling(imgs, grid, patch, self.gap)
        crops = gap_grid_crops(imgs, patch, self.gap, grid, generator)  # (B, C, g·p, g·p)
        if masks is None:
            masks = random_masking(
                imgs.shape[0], self.encoder.num_patches, self.mask_ratio, imgs.device, generator
            )
        tokens = self.encoder.embed_patches(crops)  # (B, N, D)
        visible = gather_tokens(tokens, masks.idx_keep)  # (B, K, D)
        latent = self.projector(self.encoder.forward_visible(visible))  # (B, 1+K, D)
        pred = self.decoder(latent, masks.idx_keep, masks.idx_mask)  # (B, M, D)
        target = self.targets(crops, masks.idx_mask)  # (B, M, D)

        loss_patchdisc = patch_disc_loss(pred, target, self.tau)
        target_sim = sim_target(self.progress)
        sim_pred = mean_pairwise_cosine(pred)
        sim_visible = mean_pairwise_cosine(latent[:, 1:, :])
        loss_sim = self.sim_coeff * ((sim_pred - target_sim) ** 2 + (sim_visible - target_sim) ** 2)
        loss = loss_patchdisc + loss_sim

        # One host sync for all the logged scalars.
        names = ["loss_patchdisc", "loss_sim", "sim_pred", "sim_visible"]
        logged = torch.stack([loss_patchdisc, loss_sim, sim_pred, sim_visible]).tolist()
        metrics = dict(zip(names, logged, strict=True))
        metrics |= {
            "ema_momentum": self.ema.momentum(self.progress),
            "sim_target": target_sim,
            "mask_ratio": masks.idx_mask.shape[1] / self.encoder.num_patches,
            "grid_resampled": float(resampled),
        }
        return MethodOutput(loss=loss, metrics=metrics)

    @torch.no_grad()
    def targets(self, crops: Tensor, idx_mask: Tensor) -> Tensor:
        """Target-encoder (+ target projector) features of the masked patches, encoded on
        their own (no context from the visible ones): (B, C, H, W), (B, M) -> (B, M, D)."""
        tokens = gather_tokens(self.target_encoder.embed_patches(crops), idx_mask)  # (B, M, D)
        return self.target_projector(self.target_encoder.forward_visible(tokens)[:, 1:, :])

    def after_optimizer_step(self, progress: float) -> None:
        """Target encoder and projector take their EMA step (momentum cosine from
        momentum_base to 1); the progress also drives the similarity target."""
        self.ema.step(progress)
        self.progress = progress

    # The schedule position is state: a resumed run must continue the sim target, not restart.
    def get_extra_state(self) -> dict[str, float]:
        return {"progress": self.progress}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.progress = float(state["progress"])

    def no_weight_decay(self) -> set[str]:
        return no_decay_names(encoder=self.encoder, decoder=self.decoder)


def build(model: Mapping[str, Any], knobs: LatentMIMKnobs) -> LatentMIM:
    encoder = encoder_from_spec(model)
    decoder = CrossAttentionDecoder(
        num_patches=encoder.num_patches,
        encoder_dim=model["embed_dim"],
        decoder_dim=model["decoder_dim"],
        depth=model["decoder_depth"],
        num_heads=model["decoder_num_heads"],
    )
    return LatentMIM(
        encoder,
        decoder,
        mask_ratio=knobs.mask_ratio,
        gap=knobs.gap,
        tau=knobs.tau,
        sim_coeff=knobs.sim_coeff,
        momentum_base=knobs.momentum_base,
        projector=(
            projection_head(model["embed_dim"], 4 * model["embed_dim"])
            if knobs.projector == "mlp"
            else None
        ),
    )


METHOD = register_method(Method(CARD, build=build, model=LatentMIM))
