"""Masked MSE against hand arithmetic, and the patch layout MAE's targets use."""

import math

import pytest
import torch

from workloads.losses import masked_mse, normalize_patches
from workloads.patches import patchify, unpatchify

PRED = [[0.0, 0.0], [1.0, 2.0], [9.0, 9.0], [3.0, 1.0]]
TARGET = [[1.0, 1.0], [2.0, 4.0], [5.0, 5.0], [1.0, 3.0]]
MASKED = [1, 3]


def _loss(pred, norm_pix_loss):
    return masked_mse(
        torch.tensor([pred]), torch.tensor([TARGET]), torch.tensor([MASKED]), norm_pix_loss
    ).item()


def test_masked_mse_raw_pixels():
    # patch 1: ((1-2)^2 + (2-4)^2) / 2 = 2.5; patch 3: ((3-1)^2 + (1-3)^2) / 2 = 4
    assert _loss(PRED, norm_pix_loss=False) == pytest.approx((2.5 + 4.0) / 2)


def test_masked_mse_with_per_patch_normalisation():
    # Both masked targets are (m - 1, m + 1): unbiased variance 2, so they become (-s, +s).
    s = 1.0 / math.sqrt(2.0 + 1e-6)
    patch1 = ((1.0 + s) ** 2 + (2.0 - s) ** 2) / 2
    patch3 = ((3.0 + s) ** 2 + (1.0 - s) ** 2) / 2
    assert _loss(PRED, norm_pix_loss=True) == pytest.approx((patch1 + patch3) / 2, rel=1e-6)


def test_visible_patches_do_not_count():
    changed = [row[:] for row in PRED]
    changed[0] = [100.0, -100.0]
    changed[2] = [-7.0, 42.0]
    assert _loss(changed, norm_pix_loss=False) == pytest.approx(_loss(PRED, norm_pix_loss=False))


def test_normalize_patches_gives_zero_mean_unit_variance():
    normed = normalize_patches(torch.randn(2, 5, 48) * 3 + 1)
    assert torch.allclose(normed.mean(dim=-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(normed.var(dim=-1), torch.ones(2, 5), atol=1e-4)


def test_patch_content_is_row_major_with_channels_last():
    imgs = torch.arange(2 * 4 * 4).float().reshape(1, 2, 4, 4)  # value = c*16 + h*4 + w
    patches = patchify(imgs, 2)
    assert patches.shape == (1, 4, 8)
    # Patch 1 is the top-right 2x2 block; pixels (h, w) in order, both channels per pixel.
    assert patches[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]
    # Patch 2 is the bottom-left block.
    assert patches[0, 2].tolist() == [8, 24, 9, 25, 12, 28, 13, 29]


def test_patchify_round_trip():
    imgs = torch.randn(3, 3, 32, 32)
    patches = patchify(imgs, 4)
    assert patches.shape == (3, 64, 48)
    assert torch.equal(unpatchify(patches, 4, channels=3), imgs)
