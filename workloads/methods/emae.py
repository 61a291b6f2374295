"""EMAE (Li et al., TPAMI 2024, "Efficient Masked Autoencoders with Self-Consistency").

Parallel masks: one random permutation of the N patches of an image is cut into K disjoint
parts of N/K patches. Part k shows the encoder its N/K patches and hides the other N − N/K
(mask ratio 1 − 1/K), so across the K parts every patch is seen exactly once per step and
every patch is a reconstruction target K − 1 times. The K parts of a batch go through the
shared MAE encoder and decoder as ONE batch of K·B sequences.

Losses, with pred_k (B, N, P) the decoder output of part k and M_k its masked positions:

    whole       = 1/K Σ_k masked_mse(pred_k, target, M_k)          (MAE's loss on every part)
    consistency = mean over positions p, ordered pairs (i, j), i ≠ j, that both mask p, of
                  mse(pred_i[p], sg(pred_j[p]))
    loss        = whole + consistency_weight · consistency

Position p is visible in exactly one part, so it has K − 1 predictions and (K−1)(K−2) ordered
pairs; both orders of a pair appear, each with the stop-gradient on its second member, which
is the paper's symmetrised form. With K = 2 no position is masked twice: the term is 0.

Choices the paper leaves open (no reference code was released), and what this module does:
- Consistency distance: squared error averaged over a patch's pixels, then over positions,
  images and pairs (an L1 or per-patch L2 norm would fit the paper's description as well).
  Being an MSE like the whole loss, one weight balances the two at the same scale.
- Space: raw decoder outputs are compared with each other, i.e. in the per-patch
  normalised pixel space when norm_pix_loss is on; the targets take no part in the term.
- Weighting: consistency_weight λ = 1.0, constant over training (no warm-up or ramp); the
  whole loss is the mean over the K parts, not their sum, so its scale is MAE's.
- Pairs: every ordered pair of the K − 1 predictions of a position, averaged; positions
  are those hidden in both parts of a pair (the part that sees a patch predicts nothing
  for it: its decoder output there is unused, as in MAE).
- Partition: one random permutation per image cut into K contiguous slices of N/K, so K
  must divide N (other K are rejected by the spec rather than given uneven parts).
- Learning rate: the MAE scaling rule counts images per batch (B), not the K·B sequences
  the encoder sees, so EMAE and MAE arms of an ablation share a learning rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from workloads.losses import masked_mse, normalize_patches
from workloads.masking import MaskIndices
from workloads.methods import register_method
from workloads.methods.base import (
    Method,
    MethodOutput,
    PretrainModel,
    no_decay_names,
)
from workloads.methods.emae_knobs import CARD, EMAEKnobs, check  # noqa: F401 - re-exported
from workloads.models.mae import MAEDecoder, mae_from_spec
from workloads.models.vit import ViTEncoder
from workloads.patches import patchify

# ------------------------------------------------------------------------------- masking


def parallel_masks(
    batch_size: int,
    num_patches: int,
    k: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> MaskIndices:
    """K complementary masks cut from one random permutation per image.

    Returns MaskIndices with a leading part axis: idx_keep (K, B, N/K), the patches part k
    shows; idx_mask (K, B, N − N/K), the patches it hides; ids_restore (K, B, N), which puts
    cat([visible, mask tokens]) of part k back in patch order (MAEDecoder's contract).
    """
    if k < 2 or num_patches % k:
        raise ValueError(f"k: K={k} must be >= 2 and divide the {num_patches} patches")
    per_part = num_patches // k
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)  # (B, N)
    ids_shuffle = torch.argsort(noise, dim=1)  # (B, N) one permutation per image
    # Part k's order is the permutation rotated to start at its own slice: visible first.
    start = torch.arange(k, device=ids_shuffle.device).unsqueeze(1) * per_part  # (K, 1)
    offsets = (start + torch.arange(num_patches, device=ids_shuffle.device)) % num_patches
    part_shuffle = ids_shuffle[:, offsets].transpose(0, 1)  # (K, B, N)
    return MaskIndices(
        idx_keep=part_shuffle[..., :per_part],
        idx_mask=part_shuffle[..., per_part:],
        ids_restore=torch.argsort(part_shuffle, dim=-1),
    )


def visible_part(masks: MaskIndices, num_patches: int) -> Tensor:
    """(B, N) index of the one part in which each patch is visible."""
    k, batch_size, per_part = masks.idx_keep.shape
    idx = masks.idx_keep.transpose(0, 1).reshape(batch_size, k * per_part)  # (B, N)
    part = torch.arange(k, device=idx.device).repeat_interleave(per_part)  # (N,)
    owner = torch.empty(batch_size, num_patches, dtype=torch.long, device=idx.device)
    return owner.scatter_(1, idx, part.expand(batch_size, -1))


def masked_predictions(pred: Tensor, owner: Tensor) -> Tensor:
    """(K, B, N, P) predictions, (B, N) visible part -> (K−1, B, N, P) the masked ones.

    Row t holds, for every position, the prediction of part (owner + 1 + t) mod K: the K − 1
    parts that had to guess that patch, never the part that saw it.
    """
    k = pred.shape[0]
    shift = torch.arange(1, k, device=owner.device).view(-1, 1, 1)  # (K−1, 1, 1)
    others = (owner.unsqueeze(0) + shift) % k  # (K−1, B, N)
    return torch.gather(pred, 0, others.unsqueeze(-1).expand(-1, -1, -1, pred.shape[-1]))


# ------------------------------------------------------------------------------- losses


def self_consistency_loss(online: Tensor, target: Tensor) -> Tensor:
    """Mean over ordered pairs i ≠ j of mse(online[i], sg(target[j])); both (M, B, N, P).

    Row i of both holds the i-th of M predictions of the same positions. Pass the same tensor
    twice for EMAE's symmetrised loss: pair (i, j) pulls i towards j and pair (j, i) pulls j
    towards i, each through its non-detached side only. Fewer than two rows: 0.
    """
    target = target.detach()
    num_rows = online.shape[0]
    if num_rows < 2:
        return online.sum() * 0.0
    # Rolling the target by s pairs row i with row i − s; s = 1..M−1 visits each pair once.
    pair_losses = [
        ((online - target.roll(shift, dims=0)) ** 2).mean() for shift in range(1, num_rows)
    ]
    return torch.stack(pair_losses).mean()


# ------------------------------------------------------------------------------- model


class EMAE(PretrainModel):
    """MAE encoder and decoder shared by K parallel parts; whole + self-consistency loss."""

    def __init__(
        self,
        encoder: ViTEncoder,
        decoder: MAEDecoder,
        k: int = 4,
        consistency_weight: float = 1.0,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        if encoder.num_patches % k:
            raise ValueError(f"k: K={k} does not divide the {encoder.num_patches} patches")
        self.encoder = encoder
        self.decoder = decoder
        self.k = k
        self.consistency_weight = consistency_weight
        self.norm_pix_loss = norm_pix_loss

    @property
    def mask_ratio(self) -> float:
        return 1.0 - 1.0 / self.k

    def make_masks(self, imgs: Tensor, generator: torch.Generator | None = None) -> MaskIndices:
        return parallel_masks(
            imgs.shape[0], self.encoder.num_patches, self.k, imgs.device, generator
        )

    def predict(self, imgs: Tensor, masks: MaskIndices) -> Tensor:
        """All K parts as one batch of K·B sequences -> (K, B, N, P) predictions."""
        tokens = self.encoder.embed_patches(imgs)  # (B, N, D), embedded once for all parts
        rows = torch.arange(imgs.shape[0], device=imgs.device).unsqueeze(-1)  # (B, 1)
        visible = tokens[rows, masks.idx_keep]  # (K, B, N/K, D)
        latent = self.encoder.forward_visible(visible.flatten(0, 1))  # (K·B, 1+N/K, D)
        pred = self.decoder(latent, masks.ids_restore.flatten(0, 1))  # (K·B, N, P)
        return pred.unflatten(0, (self.k, imgs.shape[0]))

    def predict_loop(self, imgs: Tensor, masks: MaskIndices) -> Tensor:
        """Same maths as `predict`, one forward per part; the baseline the batch must beat."""
        return torch.stack(
            [
                self.decoder(self.encoder(imgs, masks.idx_keep[part]), masks.ids_restore[part])
                for part in range(self.k)
            ]
        )

    def forward(
        self,
        imgs: Tensor,
        generator: torch.Generator | None = None,
        masks: MaskIndices | None = None,
    ) -> MethodOutput:
        masks = masks if masks is not None else self.make_masks(imgs, generator)
        return self.objective(imgs, self.predict(imgs, masks), masks)

    def forward_loop(
        self,
        imgs: Tensor,
        generator: torch.Generator | None = None,
        masks: MaskIndices | None = None,
    ) -> MethodOutput:
        """`forward` with a Python loop over the K parts (for the batched-vs-loop benchmark)."""
        masks = masks if masks is not None else self.make_masks(imgs, generator)
        return self.objective(imgs, self.predict_loop(imgs, masks), masks)

    def objective(self, imgs: Tensor, pred: Tensor, masks: MaskIndices) -> MethodOutput:
        """(K, B, N, P) predictions -> whole + weighted self-consistency loss."""
        target = patchify(imgs, self.encoder.patch_size)  # (B, N, P)
        if self.norm_pix_loss:
            target = normalize_patches(target)  # once, not once per part
        targets = target.unsqueeze(0).expand(self.k, -1, -1, -1)  # (K, B, N, P)
        # Every part masks N − N/K patches, so the flat mean is the mean over parts.
        whole = masked_mse(
            pred.flatten(0, 1), targets.flatten(0, 1), masks.idx_mask.flatten(0, 1), False
        )
        loss = whole
        consistency = torch.zeros((), device=imgs.device)
        if self.consistency_weight > 0 and self.k > 2:
            owner = visible_part(masks, self.encoder.num_patches)  # (B, N)
            guesses = masked_predictions(pred, owner)  # (K−1, B, N, P)
            consistency = self_consistency_loss(guesses, guesses)
            loss = whole + self.consistency_weight * consistency
        return MethodOutput(
            loss=loss,
            metrics={
                "mask_ratio": self.mask_ratio,
                "loss_whole": float(whole.detach()),
                "loss_consistency": float(consistency.detach()),
            },
        )

    def no_weight_decay(self) -> set[str]:
        return no_decay_names(encoder=self.encoder, decoder=self.decoder)


# ------------------------------------------------------------------------------- plug-in


def build(model: Mapping[str, Any], knobs: EMAEKnobs) -> EMAE:
    mae = mae_from_spec(model, mask_ratio=1.0 - 1.0 / knobs.k, norm_pix_loss=knobs.norm_pix_loss)
    return EMAE(mae.encoder, mae.decoder, knobs.k, knobs.consistency_weight, knobs.norm_pix_loss)


METHOD = register_method(Method(CARD, build=build, model=EMAE))
