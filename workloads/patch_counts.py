"""Patch counts that masking (torch) and the methods' knob checks (torch-free) share, so a
config is refused by the same arithmetic the model then uses, without importing torch."""

from __future__ import annotations


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Number of visible patches, int(N * (1 - r)) as in MAE, never fewer than one."""
    # The epsilon stops float error from dropping a patch, e.g. 10 * (1 - 0.9) = 0.99999...
    return max(1, int(num_patches * (1.0 - mask_ratio) + 1e-6))


def gap_grid_side(grid_size: int, patch_size: int, gap: int) -> int:
    """Side of the image a gap grid is cut from at native resolution: g·(p+gap)."""
    return grid_size * (patch_size + gap)
