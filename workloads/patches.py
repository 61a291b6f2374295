"""Image <-> patch-sequence conversion, in the layout MAE uses for its pixel targets."""

from __future__ import annotations

from torch import Tensor


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches row-major, pixels inside a patch ordered (p, p, C)."""
    p = patch_size
    batch, channels, height, width = imgs.shape
    if height % p or width % p:
        raise ValueError(f"image {height}x{width} is not divisible by patch size {p}")
    h, w = height // p, width // p
    x = imgs.reshape(batch, channels, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(batch, h * w, p * p * channels)


def unpatchify(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """(B, N, p*p*C) -> (B, C, H, W), the inverse of `patchify` for square images."""
    p = patch_size
    batch, num_patches, _ = patches.shape
    h = w = int(round(num_patches**0.5))
    if h * w != num_patches:
        raise ValueError(f"{num_patches} patches do not form a square grid")
    x = patches.reshape(batch, h, w, p, p, channels)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(batch, channels, h * p, w * p)
