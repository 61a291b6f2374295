"""Building blocks of Latent MIM (Wei et al., ECCV 2024, "Towards Latent Masked Image Modeling
for Self-Supervised Visual Representation Learning"): the gap-grid patchify, the projection
head, the cross-attention decoder with visual cues, the PatchDisc loss and the similarity
measure of its regulariser. Plain torch functions and modules; `latent_mim.py` wires them.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import Tensor, nn

from workloads.masking import gather_tokens
from workloads.models.decoder import SinCosDecoder
from workloads.models.vit import init_linear_and_norm
from workloads.patch_counts import gap_grid_side
from workloads.patches import patchify

# ----------------------------------------------------------------------- gap-grid patchify


def gap_grid_offsets(
    batch_size: int,
    grid_size: int,
    gap: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, g, g, 2) integer (row, col) offsets of each crop inside its (p+gap)² cell.

    Uniform in [0, gap] on each axis, independent per image and cell: every p×p window of
    the cell is equally likely, so crops never overlap and lie gap pixels apart on average
    (two neighbours can still touch: offset gap in one cell, 0 in the next). The authors'
    `torch.randint(0, gap)` never draws the last window (with gap 1, never moves a crop).
    """
    shape = (batch_size, grid_size, grid_size, 2)
    return torch.randint(0, gap + 1, shape, device=device, generator=generator)


def crop_cells(cells: Tensor, patch_size: int, gap: int, offsets: Tensor) -> Tensor:
    """(B, C, g·(p+gap), g·(p+gap)) image, (B, g, g, 2) offsets -> (B, C, g·p, g·p) crops.

    The p×p crop of cell (i, j) starts at (i·(p+gap) + dy, j·(p+gap) + dx); the crops are
    laid side by side, so a stride-p patch embedding sees each crop as one patch.
    """
    batch, channels, side, _ = cells.shape
    p, cell = patch_size, patch_size + gap
    grid = side // cell
    within = torch.arange(p, device=cells.device)
    starts = torch.arange(grid, device=cells.device) * cell  # (g,)
    rows = starts.view(1, grid, 1, 1) + offsets[..., 0:1] + within  # (B, g, g, p)
    cols = starts.view(1, 1, grid, 1) + offsets[..., 1:2] + within  # (B, g, g, p)
    flat = rows.unsqueeze(-1) * side + cols.unsqueeze(-2)  # (B, g, g, p, p) pixel index
    index = flat.reshape(batch, 1, -1).expand(-1, channels, -1)
    crops = cells.flatten(2).gather(2, index).view(batch, channels, grid, grid, p, p)
    return crops.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, grid * p, grid * p)


def needs_resampling(imgs: Tensor, grid_size: int, patch_size: int, gap: int) -> bool:
    """True when the images are g·p (model.img_size) rather than the g·(p+gap) grid needs.

    Raises ValueError for any other size.
    """
    side, native = imgs.shape[-1], gap_grid_side(grid_size, patch_size, gap)
    if imgs.shape[-2] == side == native:
        return False
    if imgs.shape[-2] == side == grid_size * patch_size:
        return True
    raise ValueError(
        f"gap grid of {grid_size}x{grid_size} cells (patch {patch_size}, gap {gap}) needs "
        f"square images of side {native} (or {grid_size * patch_size}, resampled); "
        f"got {tuple(imgs.shape[-2:])}"
    )


def gap_grid_crops(
    imgs: Tensor,
    patch_size: int,
    gap: int,
    grid_size: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, C, S, S) -> (B, C, g·p, g·p): one random p×p crop per (p+gap)² cell.

    S = g·(p+gap), as the authors' data pipeline delivers (RandomResizedCrop straight to
    that size): the crops are exact pixel copies of the image, never resampled. S = g·p
    (a stream that delivers model.img_size): the image is first resized bilinearly to
    g·(p+gap), an upsampling that blurs every patch; `needs_resampling` tells the caller.
    gap 0 returns the image itself.
    """
    if gap == 0:
        return imgs
    cells = imgs
    if needs_resampling(imgs, grid_size, patch_size, gap):
        side = gap_grid_side(grid_size, patch_size, gap)
        cells = F.interpolate(imgs, size=(side, side), mode="bilinear", align_corners=False)
    offsets = gap_grid_offsets(imgs.shape[0], grid_size, gap, imgs.device, generator)
    return crop_cells(cells, patch_size, gap, offsets)


def gap_grid_patches(
    imgs: Tensor,
    patch_size: int,
    gap: int,
    grid_size: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, C, S, S) -> (B, N, p·p·C) non-contiguous patches; gap 0 is plain `patchify`."""
    return patchify(gap_grid_crops(imgs, patch_size, gap, grid_size, generator), patch_size)


# ------------------------------------------------------------------------ projection head


def projection_head(dim: int, hidden_dim: int) -> nn.Sequential:
    """The authors' 3-layer MLP on encoder outputs (`_build_mlp` with mlp_depth 3, out_norm):
    Linear → LN → GELU → Linear → LN → GELU → Linear → LN, linears without bias, per token.
    """
    layers: list[nn.Module] = []
    widths = [dim, hidden_dim, hidden_dim, dim]
    for index, (width_in, width_out) in enumerate(zip(widths, widths[1:], strict=False)):
        layers += [nn.Linear(width_in, width_out, bias=False), nn.LayerNorm(width_out)]
        if index < 2:
            layers.append(nn.GELU())
    head = nn.Sequential(*layers)
    head.apply(init_linear_and_norm)
    return head


# ------------------------------------------------------------------------------- decoder


def visual_cues(pe_q: Tensor, pe_k: Tensor, visible: Tensor) -> Tensor:
    """softmax(pe_q·pe_kᵀ/√d)·visible: each masked position's position-weighted mix of the
    visible tokens, so a query starts from what is seen near it, not from a bare mask token.
    (B, M, D), (B, K, D), (B, K, D) -> (B, M, D)."""
    weights = (pe_q @ pe_k.transpose(1, 2) * pe_q.shape[-1] ** -0.5).softmax(dim=-1)
    return weights @ visible


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, M, D) over keys/values (B, L, D)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        batch, num_q, dim = queries.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q(queries).view(batch, num_q, heads, head_dim).transpose(1, 2)  # (B, h, M, d)
        k, v = self.kv(context).view(batch, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, M, d)
        return self.proj(out.transpose(1, 2).reshape(batch, num_q, dim))


class CrossBlock(nn.Module):
    """Pre-norm block: self-attention among the queries, cross-attention to the visible
    latent, MLP. Visible tokens are never updated, so only masked positions are decoded."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm_layer(dim)
        self.self_attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm_q, self.norm_kv = norm_layer(dim), norm_layer(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        queries = queries + self.self_attn(self.norm1(queries))
        queries = queries + self.cross_attn(self.norm_q(queries), self.norm_kv(context))
        return queries + self.mlp(self.norm2(queries))


class CrossAttentionDecoder(SinCosDecoder):
    """Predicts the target encoder's features at the masked positions from the visible latent.

    queries = mask token + visual cues + pos(masked); keys/values = latent + pos(visible).
    """

    def __init__(
        self,
        num_patches: int,
        encoder_dim: int,
        decoder_dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__(num_patches, encoder_dim, decoder_dim)
        self.blocks = nn.ModuleList(
            CrossBlock(decoder_dim, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        # Back to the encoder's width: the targets are target-encoder features.
        self.pred = nn.Linear(decoder_dim, encoder_dim)
        self.apply(init_linear_and_norm)

    def forward(self, latent: Tensor, idx_keep: Tensor, idx_mask: Tensor) -> Tensor:
        """(B, 1+K, De) latent with cls, (B, K) visible, (B, M) masked -> (B, M, De)."""
        x = self.embed(latent)  # (B, 1+K, Dd)
        cls, visible = x[:, :1, :], x[:, 1:, :]
        patch_pos = self.patch_positions(x.shape[0])  # (B, N, Dd)
        pe_k = gather_tokens(patch_pos, idx_keep)  # (B, K, Dd)
        pe_q = gather_tokens(patch_pos, idx_mask)  # (B, M, Dd)
        queries = self.mask_token + visual_cues(pe_q, pe_k, visible) + pe_q  # (B, M, Dd)
        context = torch.cat([cls + self.cls_position(), visible + pe_k], dim=1)
        for block in self.blocks:
            queries = block(queries, context)
        return self.pred(self.norm(queries))


# -------------------------------------------------------------------------------- losses


def patch_disc_loss(pred: Tensor, target: Tensor, tau: float = 0.2) -> Tensor:
    """PatchDisc: within-image InfoNCE between predicted and target features, × 2τ.

    pred, target (B, M, D) over the same M masked positions. Predictions are standardised
    over the patches of each image (per channel) so that the content shared by all patches
    cannot identify any one of them; each prediction must pick its own target among the
    image's other patches, which is what keeps the latent targets from collapsing.
    """
    # fp32 even under autocast: bf16 logits/τ would blur the small gaps between patches.
    with torch.autocast(device_type=pred.device.type, enabled=False):
        pred, target = pred.float(), target.float()
        pred = (pred - pred.mean(dim=1, keepdim=True)) / (pred.std(dim=1, keepdim=True) + 1e-4)
        pred, target = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
        logits = pred @ target.transpose(1, 2) / tau  # (B, M, M); row i's positive is column i
    batch, num_masked, _ = logits.shape
    labels = torch.arange(num_masked, device=logits.device).repeat(batch)
    return F.cross_entropy(logits.flatten(0, 1), labels) * (2 * tau)


def mean_pairwise_cosine(x: Tensor) -> Tensor:
    """(B, L, D) -> scalar: cosine similarity of distinct patch pairs of an image, averaged
    over pairs and images. 0 when an image has fewer than two patches."""
    batch, length, _ = x.shape
    if length < 2:
        return x.new_zeros((), dtype=torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = F.normalize(x.float(), dim=-1)
        gram = x @ x.transpose(1, 2)  # (B, L, L)
    off_diagonal = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=-1)
    return off_diagonal.mean() / (length * (length - 1))
