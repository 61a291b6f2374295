"""Tiny MAE: shapes, frozen positions, visible-only encoding, and that it learns."""

import math

import torch

from workloads.masking import gather_tokens, random_masking
from workloads.models import MaskedAutoencoder
from workloads.models.mae import build_mae
from workloads.models.pos_embed import sincos_pos_embed_2d
from workloads.optim import build_optimizer


def _tiny_mae(norm_pix_loss: bool = True) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return build_mae(32, 4, 32, 2, 2, 32, 1, 2, mask_ratio=0.75, norm_pix_loss=norm_pix_loss)


def test_output_shapes():
    model = _tiny_mae()
    imgs = torch.randn(3, 3, 32, 32)
    out = model(imgs, generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (3, 64, 48)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.masks.idx_keep.shape == (3, 16) and out.masks.idx_mask.shape == (3, 48)
    assert model.encoder.forward_features(imgs).shape == (3, 32)
    assert model.no_weight_decay() == {
        "encoder.cls_token",
        "encoder.pos_embed",
        "decoder.mask_token",
        "decoder.pos_embed",
    }


def test_encoder_sees_only_visible_tokens():
    encoder = _tiny_mae().encoder.eval()
    imgs = torch.randn(2, 3, 32, 32)
    masks = random_masking(2, encoder.num_patches, 0.75, generator=torch.Generator().manual_seed(3))
    latent = encoder(imgs, masks.idx_keep)
    assert latent.shape == (2, 1 + 16, 32)
    expected = encoder.forward_visible(gather_tokens(encoder.embed_patches(imgs), masks.idx_keep))
    assert torch.allclose(latent, expected)
    # Scribbling over the hidden patches must not change what the encoder produces.
    p = encoder.patch_size
    scribbled = imgs.clone()
    for row in range(2):
        for index in masks.idx_mask[row].tolist():
            r, c = divmod(index, encoder.grid_size)
            scribbled[row, :, r * p : (r + 1) * p, c * p : (c + 1) * p] = 5.0
    assert torch.allclose(encoder(scribbled, masks.idx_keep), latent, atol=1e-6)
    assert not torch.allclose(encoder(scribbled), encoder(imgs))


def test_pos_embed_is_fixed_sincos():
    model = _tiny_mae()
    for module in (model.encoder, model.decoder):
        assert not module.pos_embed.requires_grad
        assert module.pos_embed.shape == (1, 1 + 64, 32)
    assert torch.equal(model.encoder.pos_embed[0], sincos_pos_embed_2d(32, 8, cls_token=True))


def test_sincos_hand_check():
    dim, grid = 16, 3
    table = sincos_pos_embed_2d(dim, grid)
    assert table.shape == (9, 16) and table.dtype == torch.float32
    quarter = dim // 4
    zeros, ones = [0.0] * quarter, [1.0] * quarter
    assert table[0].tolist() == zeros + ones + zeros + ones
    # Patch 1 sits in column 1 of row 0: the first half encodes the column (MAE's meshgrid).
    omegas = [1.0 / 10000 ** (i / quarter) for i in range(quarter)]
    col_one = [math.sin(w) for w in omegas] + [math.cos(w) for w in omegas]
    assert torch.allclose(table[1], torch.tensor(col_one + zeros + ones))
    assert torch.allclose(table[grid], torch.tensor(zeros + ones + col_one))
    with_cls = sincos_pos_embed_2d(dim, grid, cls_token=True)
    assert with_cls.shape == (10, 16)
    assert torch.equal(with_cls[0], torch.zeros(16)) and torch.equal(with_cls[1:], table)


def test_a_few_steps_lower_the_loss():
    model = _tiny_mae(norm_pix_loss=False)
    imgs = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, lr=1e-3)
    pos_before = model.encoder.pos_embed.detach().clone()

    def loss_with_fixed_mask():
        return model(imgs, generator=torch.Generator().manual_seed(42)).loss

    start = loss_with_fixed_mask().item()
    for _ in range(15):
        optimizer.zero_grad()
        loss_with_fixed_mask().backward()
        optimizer.step()
    assert loss_with_fixed_mask().item() < 0.7 * start
    assert torch.equal(model.encoder.pos_embed, pos_before)
