"""Model FLOPs of one pretraining step per image, counted analytically, and device peaks.

Only matrix products are counted (Linear layers, the patch-embedding convolution, attention's
QKᵀ and AV, and the few explicit batched products some methods add); norms, softmax, GELU
and losses are a rounding error next to them. A product of (L, a) by (a, b) costs 2·L·a·b.

One pre-norm transformer block of width D, MLP ratio r, on L tokens (timm's `Block`):

    qkv 6·L·D²  +  QKᵀ and AV 4·L²·D  +  out-proj 2·L·D²  +  MLP 4·r·L·D²
    = (8 + 4r)·L·D² + 4·L²·D                                   (r = 4: 24·L·D² + 4·L²·D)

Per image and step, each product is counted as forward × its backward multiplier:

    × 3  the usual forward + backward: the gradient of the input and of the weights
         (encoder blocks on the visible tokens, decoder blocks on all tokens, ...)
    × 2  forward + one gradient: the patch embedding (its input, the image, needs no
         gradient) and products with one frozen operand (fixed positions, EMA targets)
    × 1  forward only: no-grad parts (EMA target encoder / teacher, SBAM's saliency)

MAE ViT-B/16, 224 px, 75% masking (N = 196 patches, 49 visible + cls = 50 encoder tokens,
decoder 512-d × 8 blocks on 197 tokens): encoder 12 × (24·50·768² + 4·50²·768) = 8.59 GFLOP,
decoder 8 × (24·197·512² + 4·197²·512) = 10.55 GFLOP, embeddings and prediction head 0.42
GFLOP; forward 19.6, step (× 3, the patch embedding × 2) ≈ 58.5 GFLOP per image, the ~58
GFLOP usually quoted. MFU = FLOPs per image × images/s ÷ the device's dense bf16 peak.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# MAE's ViT-B/16 recipe (512-d, 8-block decoder): the model the GPU figures are quoted for.
VIT_B = dict(
    img_size=224,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    decoder_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
)

# Dense (not 2:4 sparse) bf16 tensor-core peaks from the vendors' data sheets, in FLOP/s.
# Matched against torch.cuda.get_device_name() in order: the first substring found wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM; NVL is quoted at 835e12, pass --peak-tflops for it
    ("A100", 312e12),
)


def peak_flops_for(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named like torch.cuda.get_device_name(), else None."""
    for needle, peak in PEAK_BF16_FLOPS:
        if needle.lower() in device_name.lower():
            return peak
    return None


@dataclass
class StepFlops:
    """Forward FLOPs per image, split by how many times the backward pass repeats them."""

    full: float = 0.0  # × 3
    one_grad: float = 0.0  # × 2
    forward_only: float = 0.0  # × 1

    @property
    def per_image(self) -> float:
        return 3 * self.full + 2 * self.one_grad + self.forward_only


def matmul(rows: int, inner: int, cols: int) -> float:
    return 2.0 * rows * inner * cols


def block_flops(tokens: int, dim: int, mlp_ratio: float = 4.0) -> float:
    """One self-attention transformer block's forward, per sequence."""
    return (8 + 4 * mlp_ratio) * tokens * dim**2 + 4 * tokens**2 * dim


def cross_block_flops(queries: int, context: int, dim: int, mlp_ratio: float = 4.0) -> float:
    """Latent MIM's decoder block: self-attention over the queries, cross-attention from the
    queries to the context (q and out projections on the queries, k and v on the context),
    MLP on the queries."""
    self_attention = 8 * queries * dim**2 + 4 * queries**2 * dim
    cross_attention = 4 * queries * dim**2 + 4 * context * dim**2 + 4 * queries * context * dim
    return self_attention + cross_attention + 4 * mlp_ratio * queries * dim**2


def _kept(num_patches: int, mask_ratio: float) -> int:
    """Visible patches of MAE-style random masking, int(N·(1 − r)), as workloads.masking."""
    return max(1, int(num_patches * (1.0 - mask_ratio) + 1e-6))


def _salient_kept(num_patches: int, gamma: float) -> int:
    """Visible patches of SBAM: it masks ceil(N·γ), at least one masked and one visible."""
    masked = min(num_patches - 1, max(1, math.ceil(num_patches * gamma - 1e-6)))
    return num_patches - masked


class _Shape:
    """The sizes a formula needs, from a run spec's `model` section."""

    def __init__(self, model: Mapping[str, Any]) -> None:
        self.patches = (model["img_size"] // model["patch_size"]) ** 2
        self.patch_dim = model["patch_size"] ** 2 * model.get("in_chans", 3)
        self.dim, self.depth = model["embed_dim"], model["depth"]
        self.dec_dim, self.dec_depth = model["decoder_dim"], model["decoder_depth"]

    def patch_embed(self) -> float:
        return matmul(self.patches, self.patch_dim, self.dim)  # every patch is embedded

    def encoder(self, tokens: int) -> float:
        return self.depth * block_flops(tokens, self.dim)

    def pixel_decoder(self, visible: int) -> float:
        """MAE's decoder: embed 1+K latent tokens, blocks and head on all 1+N tokens."""
        return (
            matmul(1 + visible, self.dim, self.dec_dim)
            + self.dec_depth * block_flops(1 + self.patches, self.dec_dim)
            + matmul(1 + self.patches, self.dec_dim, self.patch_dim)
        )


def mae_flops(model: Mapping[str, Any], knobs: Mapping[str, Any]) -> StepFlops:
    shape = _Shape(model)
    visible = _kept(shape.patches, knobs.get("mask_ratio", 0.75))
    return StepFlops(
        full=shape.encoder(1 + visible) + shape.pixel_decoder(visible),
        one_grad=shape.patch_embed(),
    )


def emae_flops(model: Mapping[str, Any], knobs: Mapping[str, Any]) -> StepFlops:
    """K parts of N/K visible patches each: K encoder and K decoder passes per image, one
    patch embedding shared by all parts."""
    shape = _Shape(model)
    k = knobs.get("k", 4)
    visible = shape.patches // k
    return StepFlops(
        full=k * (shape.encoder(1 + visible) + shape.pixel_decoder(visible)),
        one_grad=shape.patch_embed(),
    )


def sbam_flops(model: Mapping[str, Any], knobs: Mapping[str, Any]) -> StepFlops:
    """MAE's work at ratio γ plus the no-grad saliency X·Xᵀ over all N patch tokens.
    (With AMR, Δr > 0, the ratio moves around γ; γ is counted.)"""
    shape = _Shape(model)
    visible = _salient_kept(shape.patches, knobs.get("gamma", 0.75))
    return StepFlops(
        full=shape.encoder(1 + visible) + shape.pixel_decoder(visible),
        one_grad=shape.patch_embed(),
        forward_only=matmul(shape.patches, shape.dim, shape.patches),
    )


def latent_mim_flops(model: Mapping[str, Any], knobs: Mapping[str, Any]) -> StepFlops:
    """Online encoder (+ projector) on the visible patches; cross-attention decoder
    predicting the M masked positions' features; EMA target encoder (+ projector) on the M
    masked patches alone (no grad). At gap 0 the images are the model size; with a gap the
    encoder still sees N patches, so the count is the same."""
    shape = _Shape(model)
    visible = _kept(shape.patches, knobs.get("mask_ratio", 0.75))
    masked = shape.patches - visible
    dim, dec = shape.dim, shape.dec_dim
    decoder = (
        matmul(1 + visible, dim, dec)
        + shape.dec_depth * cross_block_flops(masked, 1 + visible, dec)
        + matmul(masked, dec, dim)
    )
    # Mean pairwise cosine of predictions and of visible latents: Gram products, both
    # operands trainable.
    similarity = matmul(masked, dim, masked) + matmul(visible, dim, visible)
    # The projector (default `mlp`: D -> 4D -> 4D -> D per token) after the online encoder
    # on 1+K tokens, and its EMA copy after the target encoder on the M masked tokens.
    head = 0.0 if knobs.get("projector", "mlp") == "none" else 2 * 24 * dim**2
    return StepFlops(
        full=shape.encoder(1 + visible) + head * (1 + visible) + decoder + similarity,
        one_grad=(
            shape.patch_embed()
            + matmul(masked, dec, visible)  # visual cues: weights (fixed positions) @ visible
            + matmul(masked, dim, masked)  # PatchDisc logits against detached targets
        ),
        forward_only=(
            matmul(masked, dec, visible)  # visual-cue weights from fixed positions
            + shape.patch_embed()  # target encoder
            + shape.encoder(1 + masked)
            + head * masked
        ),
    )


def pcae_flops(model: Mapping[str, Any], knobs: Mapping[str, Any]) -> StepFlops:
    """Student encoder on the visible patches; decoder on cls + visible + the T positions the
    teacher kept; the EMA teacher (no grad) on the masked patches, shrinking after the blocks
    in `drop_after` to floor(tokens·keep_ratio)."""
    shape = _Shape(model)
    visible = _kept(shape.patches, knobs.get("mask_ratio", 0.75))
    tokens = shape.patches - visible
    keep_ratio = knobs.get("keep_ratio", 0.5)
    drop_after = set(knobs.get("drop_after", [0]))
    teacher = shape.patch_embed()
    for index in range(shape.depth):
        teacher += block_flops(tokens, shape.dim)
        if index in drop_after:
            tokens = max(1, int(tokens * keep_ratio + 1e-6))
    decoder = (
        matmul(1 + visible, shape.dim, shape.dec_dim)
        + shape.dec_depth * block_flops(1 + visible + tokens, shape.dec_dim)
        + matmul(tokens, shape.dec_dim, shape.dim)
    )
    return StepFlops(
        full=shape.encoder(1 + visible) + decoder,
        one_grad=shape.patch_embed(),
        forward_only=teacher,
    )


FLOPS_BY_METHOD: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], StepFlops]] = {
    "mae": mae_flops,
    "emae": emae_flops,
    "sbam": sbam_flops,
    "latent_mim": latent_mim_flops,
    "pcae": pcae_flops,
}


def step_flops_per_image(
    method: str, model: Mapping[str, Any], knobs: Mapping[str, Any] | None = None
) -> float | None:
    """Model FLOPs of one training step per image, or None for a method with no formula."""
    formula = FLOPS_BY_METHOD.get(method)
    return None if formula is None else formula(model, knobs or {}).per_image
