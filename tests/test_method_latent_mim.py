"""Latent MIM: gap-grid crops, EMA target, PatchDisc, visual cues, knobs and that it learns."""

import math

import pytest
import torch
from tiny_model import TINY_MODEL as TINY_OVERRIDES
from tiny_model import tiny_model
from torch import nn

from orchestrator.config import ConfigError, load_spec
from workloads.ema import ema_update, frozen_copy
from workloads.evaluation.heads import encoder_prefix, load_encoder
from workloads.masking import gather_tokens, random_masking
from workloads.methods import get_method, train_img_size
from workloads.methods._latent_mim_parts import (
    crop_cells,
    gap_grid_crops,
    gap_grid_offsets,
    gap_grid_patches,
    mean_pairwise_cosine,
    patch_disc_loss,
    projection_head,
    visual_cues,
)
from workloads.methods.latent_mim import LatentMIM, LatentMIMKnobs
from workloads.optim import build_optimizer
from workloads.patches import patchify, unpatchify
from workloads.pretrain import build_model

TINY_MODEL = tiny_model()


def _tiny(**knobs) -> LatentMIM:
    torch.manual_seed(0)
    return get_method("latent_mim").build(TINY_MODEL, LatentMIMKnobs(**knobs))


# ----------------------------------------------------------------------------- gap grid


def test_crops_stay_inside_their_cells():
    patch, gap, grid = 4, 3, 3
    cell, side = patch + gap, grid * (patch + gap)
    # Every pixel stores its own (row, col) in the resized image, so a crop tells where it
    # was cut from.
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    cells = torch.stack([rows, cols]).float().expand(5, -1, -1, -1)  # (B, 2, S, S)
    offsets = gap_grid_offsets(5, grid, gap, generator=torch.Generator().manual_seed(1))
    crops = crop_cells(cells, patch, gap, offsets)
    assert crops.shape == (5, 2, grid * patch, grid * patch)
    for b in range(5):
        for i in range(grid):
            for j in range(grid):
                block = crops[b, :, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
                top, left = int(block[0, 0, 0]), int(block[1, 0, 0])
                # A contiguous p×p window of the resized image...
                expected_rows = torch.arange(top, top + patch).float().unsqueeze(1)
                expected_cols = torch.arange(left, left + patch).float().unsqueeze(0)
                assert torch.equal(block[0], expected_rows.expand(patch, patch))
                assert torch.equal(block[1], expected_cols.expand(patch, patch))
                # ...wholly inside cell (i, j).
                assert i * cell <= top and top + patch <= (i + 1) * cell
                assert j * cell <= left and left + patch <= (j + 1) * cell
    # Offsets differ between images and cells (random, not one shared shift).
    assert len(set(map(tuple, offsets.flatten(0, 2).tolist()))) > 1


def test_offsets_cover_zero_to_gap_inclusive():
    offsets = gap_grid_offsets(400, 2, 4, generator=torch.Generator().manual_seed(0))
    assert offsets.shape == (400, 2, 2, 2)
    assert set(offsets.unique().tolist()) == {0, 1, 2, 3, 4}


def test_gap_zero_is_plain_patchify():
    imgs = torch.randn(2, 3, 16, 16)
    assert torch.equal(gap_grid_patches(imgs, 4, 0, 4), patchify(imgs, 4))
    assert torch.equal(gap_grid_crops(imgs, 4, 0, 4), imgs)


def window_found_in_cell(source, block, top, left, patch, gap) -> bool:
    """Is `block` (C, p, p) exactly one of the (gap+1)² p×p windows of the source's cell?"""
    return any(
        torch.equal(source[:, top + dy : top + dy + patch, left + dx : left + dx + patch], block)
        for dy in range(gap + 1)
        for dx in range(gap + 1)
    )


def test_native_resolution_cells_are_exact_pixel_copies_of_the_source():
    # Per-pixel random values: any resampling (bilinear, bicubic, area) would mix
    # neighbouring pixels into values that appear nowhere in the source image.
    patch, gap, grid = 4, 3, 8
    side = grid * (patch + gap)  # 56: the image the data side delivers for this grid
    imgs = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(0))
    crops = gap_grid_crops(imgs, patch, gap, grid, torch.Generator().manual_seed(1))
    assert crops.shape == (3, 3, grid * patch, grid * patch)
    for b in range(3):
        for i in range(grid):
            for j in range(grid):
                block = crops[b, :, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
                top, left = i * (patch + gap), j * (patch + gap)
                assert window_found_in_cell(imgs[b], block, top, left, patch, gap), (b, i, j)


def test_checkerboard_survives_native_cropping_and_not_resampling():
    # A one-pixel checkerboard is the highest frequency an image holds; crops of the
    # native image keep exact 0/1 alternation, a resampled one turns it grey.
    patch, gap, grid = 4, 2, 8
    side = grid * (patch + gap)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    board = ((rows + cols) % 2).float().expand(2, 3, -1, -1)
    crops = gap_grid_crops(board, patch, gap, grid, torch.Generator().manual_seed(0))
    assert set(crops.unique().tolist()) == {0.0, 1.0}
    blocks = patchify(crops, patch).view(2, grid * grid, patch, patch, 3)
    # Inside every crop neighbours differ: the pattern is intact, only its phase varies.
    assert (blocks[:, :, 1:] != blocks[:, :, :-1]).all()
    small = board[..., : grid * patch, : grid * patch]  # the same board at model.img_size
    blurred = gap_grid_crops(small, patch, gap, grid, torch.Generator().manual_seed(0))
    assert not set(blurred.unique().tolist()) <= {0.0, 1.0}


def test_img_size_images_are_resized_first_and_other_sizes_refused():
    # Bilinear resizing of a constant image is constant, so every crop is too.
    imgs = torch.full((2, 3, 16, 16), 0.25)
    crops = gap_grid_crops(imgs, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 16, 16)
    assert torch.allclose(crops, imgs)
    assert gap_grid_patches(torch.randn(2, 3, 16, 16), 4, 4, 4).shape == (2, 16, 48)
    with pytest.raises(ValueError, match="needs square images of side 32"):
        gap_grid_crops(torch.randn(2, 3, 24, 24), 4, 4, 4)


def test_method_asks_the_stream_for_native_size_and_logs_resampling():
    spec = load_spec("demo", ["method.name=latent_mim", "method.gap=2", *TINY_OVERRIDES])
    assert train_img_size(spec.model_dump(mode="json")) == 8 * (4 + 2)
    assert train_img_size(load_spec("demo", TINY_OVERRIDES).model_dump(mode="json")) == 32
    model = _tiny(gap=2)
    seen = []
    model.encoder.patch_embed.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    native = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    out = model(native, generator=torch.Generator().manual_seed(1))
    assert out.metrics["grid_resampled"] == 0.0
    crops = seen[0]  # what the encoder embeds: exact copies of the native image
    for i in range(8):
        for j in range(8):
            block = crops[0, :, i * 4 : (i + 1) * 4, j * 4 : (j + 1) * 4]
            assert window_found_in_cell(native[0], block, i * 6, j * 6, 4, 2)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.metrics["grid_resampled"] == 1.0
    assert _tiny(gap=0)(torch.randn(2, 3, 32, 32)).metrics["grid_resampled"] == 0.0


# ---------------------------------------------------------------------------- projector


def test_projection_head_is_the_authors_three_layer_mlp():
    head = projection_head(8, 16)
    kinds = [type(layer).__name__ for layer in head]
    assert kinds == ["Linear", "LayerNorm", "GELU"] * 2 + ["Linear", "LayerNorm"]
    linears = [layer for layer in head if isinstance(layer, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(8, 16), (16, 16), (16, 8)]
    assert all(lin.bias is None for lin in linears)
    assert head(torch.randn(2, 5, 8)).shape == (2, 5, 8)  # per token


def test_projector_defaults_to_mlp_on_both_encoders():
    model = _tiny()
    assert LatentMIMKnobs().projector == "mlp"
    assert isinstance(model.projector, nn.Sequential)
    online, target = model.projector.state_dict(), model.target_projector.state_dict()
    assert online and online.keys() == target.keys()
    assert all(torch.equal(online[k], target[k]) for k in online)  # starts as a copy
    assert not any(p.requires_grad for p in model.target_projector.parameters())


def test_decoder_and_regulariser_see_projected_latent_and_targets_are_projected():
    model = _tiny().eval()
    captured = {}
    model.projector.register_forward_hook(lambda _m, _a, out: captured.update(projected=out))
    model.decoder.register_forward_hook(lambda _m, args, _o: captured.update(decoded=args[0]))
    model(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert captured["decoded"] is captured["projected"]

    with torch.no_grad():
        model.target_projector[-1].bias.fill_(3.0)  # make the target head visible
    masks = random_masking(2, 64, 0.75, generator=torch.Generator().manual_seed(0))
    imgs = torch.randn(2, 3, 32, 32)
    tokens = gather_tokens(model.target_encoder.embed_patches(imgs), masks.idx_mask)
    unprojected = model.target_encoder.forward_visible(tokens)[:, 1:, :]
    expected = model.target_projector(unprojected)
    torch.testing.assert_close(model.targets(imgs, masks.idx_mask), expected)
    assert not torch.allclose(expected, unprojected)


def test_target_projector_follows_the_online_one_by_ema():
    model = _tiny()
    before = model.target_projector[0].weight.clone()
    with torch.no_grad():
        model.projector[0].weight.add_(1.0)
    model.after_optimizer_step(0.0)  # m = 0.99
    torch.testing.assert_close(model.target_projector[0].weight, before + 0.01)


def test_projector_gets_gradients_and_none_adds_no_parameters():
    model = _tiny()
    model(torch.randn(2, 3, 32, 32)).loss.backward()
    assert model.projector[0].weight.grad is not None
    plain = _tiny(projector="none")
    assert isinstance(plain.projector, nn.Identity)
    assert not any("projector" in name for name in plain.state_dict())
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    # Two heads (online + target) of 32·128 + 128·128 + 128·32 weights and 3 LayerNorms.
    assert extra == 2 * (32 * 128 + 128 * 128 + 128 * 32 + 2 * (128 + 128 + 32))


def test_evaluation_takes_the_encoder_without_the_projector():
    model = _tiny()
    state = model.state_dict()
    assert encoder_prefix(state) == "encoder."
    encoder = load_encoder(TINY_MODEL, state)
    assert all(torch.equal(v, state[f"encoder.{k}"]) for k, v in encoder.state_dict().items())


# ---------------------------------------------------------------------------------- EMA


def test_ema_update_matches_formula_on_tiny_module():
    online = nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        online.bias.fill_(0.5)
    target = frozen_copy(online)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[3.0, -2.0]]))
        online.bias.fill_(1.5)
    ema_update(target, online, 0.9)
    # 0.9·1 + 0.1·3 = 1.2, 0.9·2 + 0.1·(−2) = 1.6, 0.9·0.5 + 0.1·1.5 = 0.6
    assert torch.allclose(target.weight, torch.tensor([[1.2, 1.6]]))
    assert torch.allclose(target.bias, torch.tensor([0.6]))
    assert not any(p.requires_grad for p in target.parameters())


def test_method_ema_step_uses_cosine_momentum():
    model = _tiny()
    before = model.target_encoder.cls_token.clone()
    assert torch.equal(before, model.encoder.cls_token)  # starts as a copy
    with torch.no_grad():
        model.encoder.cls_token.add_(1.0)
    model.after_optimizer_step(0.0)  # m = 0.99: target moves 1% of the way
    assert torch.allclose(model.target_encoder.cls_token, before + 0.01, atol=1e-6)
    model.after_optimizer_step(1.0)  # m = 1: frozen
    assert torch.allclose(model.target_encoder.cls_token, before + 0.01, atol=1e-6)


def test_target_gets_no_gradients_and_online_does():
    model = _tiny()
    out = model(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target_encoder.parameters())
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.decoder.mask_token.grad is not None


def test_targets_see_only_masked_patches():
    model = _tiny().eval()
    masks = random_masking(2, 64, 0.75, generator=torch.Generator().manual_seed(0))
    imgs = torch.randn(2, 3, 32, 32)
    changed = patchify(imgs, 4)
    for b in range(2):
        changed[b, masks.idx_keep[b]] += 5.0  # alter the visible patches only
    a = model.targets(imgs, masks.idx_mask)
    b = model.targets(unpatchify(changed, 4), masks.idx_mask)
    assert a.shape == (2, 48, 32)
    assert torch.allclose(a, b, atol=1e-5)


def test_schedules_logged_per_step_and_saved():
    model = _tiny(momentum_base=0.99)
    model.after_optimizer_step(0.5)
    out = model(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    # Half cosine at the midpoint: m = 1 − 0.01·0.5, target = 0.25 + 0.5·0.5.
    assert out.metrics["ema_momentum"] == pytest.approx(0.995)
    assert out.metrics["sim_target"] == pytest.approx(0.5)
    assert out.metrics["mask_ratio"] == pytest.approx(0.75)
    assert {"loss_patchdisc", "loss_sim"} <= out.metrics.keys()
    restored = _tiny()
    restored.load_state_dict(model.state_dict())
    assert restored.progress == 0.5


# ------------------------------------------------------------------------------- losses


def test_patch_disc_matches_hand_computed_cross_entropy():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]])  # (B=1, M=3, D=2)
    target = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])
    # Per channel both columns of pred have mean 0 and (unbiased) std 1, so standardising
    # leaves the directions; unit rows: (1,0), (0,1), (−1,−1)/√2 and (1,0), (0,1), (1,1)/√2.
    tau, r = 0.2, 1 / math.sqrt(2)
    cos = [[1.0, 0.0, r], [0.0, 1.0, r], [-r, -r, -1.0]]
    # Cross-entropy of row i with label i: −cos_ii/τ + log Σ_j exp(cos_ij/τ).
    per_row = [
        -cos[i][i] / tau + math.log(sum(math.exp(c / tau) for c in cos[i])) for i in range(3)
    ]
    expected = sum(per_row) / 3 * 2 * tau
    assert patch_disc_loss(pred, target, tau).item() == pytest.approx(expected, rel=1e-5)


def test_patch_disc_ignores_content_shared_by_all_patches():
    pred, target = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    shifted = pred * 3.0 + torch.randn(2, 1, 8)  # same shift and scale for every patch
    assert torch.allclose(patch_disc_loss(pred, target), patch_disc_loss(shifted, target))


def test_losses_stay_fp32_under_autocast():
    pred, target = torch.randn(2, 6, 16).bfloat16(), torch.randn(2, 6, 16).bfloat16()
    plain = patch_disc_loss(pred, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(patch_disc_loss(pred, target), plain)
        assert mean_pairwise_cosine(pred).dtype == torch.float32


def test_mean_pairwise_cosine_skips_self_pairs():
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])
    # pairs: (0,1) 0, (0,2) 1, (1,2) 0 -> mean 1/3
    assert mean_pairwise_cosine(x).item() == pytest.approx(1 / 3)


def test_visual_cues_weight_visible_tokens_by_position():
    visible = torch.tensor([[[2.0, 0.0], [0.0, 4.0]]])  # (1, K=2, 2)
    pe_k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # Equal similarity to both keys -> plain average; nearer key -> softmax weights.
    assert torch.allclose(
        visual_cues(torch.zeros(1, 1, 2), pe_k, visible), torch.tensor([1.0, 2.0])
    )
    w = 1 / (1 + math.exp(-3 / math.sqrt(2)))  # softmax([3/√2, 0])[0]
    expected = torch.tensor([[[2.0 * w, 4.0 * (1 - w)]]])
    assert torch.allclose(visual_cues(torch.tensor([[[3.0, 0.0]]]), pe_k, visible), expected)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("gap", [0, 2])
def test_a_few_steps_lower_the_loss(gap):
    model = _tiny(gap=gap)
    optimizer = build_optimizer(model, lr=3e-3)
    imgs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    losses = []
    for step in range(10):
        # Same crops and masks every step: the fixed batch is a fixed problem.
        out = model(imgs, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        model.after_optimizer_step(step / 10)
        losses.append(out.loss.item())
    assert losses[-1] < 0.9 * losses[0]


# --------------------------------------------------------------------------------- spec


def test_spec_accepts_knobs_and_builds_model():
    spec = load_spec(
        "demo",
        [
            "method.name=latent_mim",
            "method.gap=4",
            "method.mask_ratio=0.9",
            "method.projector=none",
            *TINY_OVERRIDES,
        ],
    )
    assert spec.method.gap == 4 and spec.method.mask_ratio == 0.9
    assert spec.flat_params()["method.projector"] == "none"
    model = build_model(spec.model_dump(mode="json"))
    assert isinstance(model, LatentMIM) and model.gap == 4
    assert isinstance(model.projector, nn.Identity)
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= names.keys()
    out = model(torch.randn(2, 3, 32, 32))
    out.loss.backward()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "override",
    [
        "method.gap=-1",
        "method.mask_ratio=1.0",
        "method.mask_ratio=0",
        "method.tau=0",
        "method.sim_coeff=-0.1",
        "method.momentum_base=1.5",
        "method.projector=linear",
    ],
)
def test_spec_rejects_bad_knobs(override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError) as err:
        load_spec("demo", ["method.name=latent_mim", override])
    assert str(err.value).startswith(f"{key}:")


def test_spec_rejects_ratio_masking_fewer_than_two_patches():
    # 8x8 image, patch 4: 4 patches; ratio 0.2 keeps 3 and masks 1.
    with pytest.raises(ConfigError) as err:
        load_spec(
            "demo",
            ["method.name=latent_mim", "method.mask_ratio=0.2", "model.img_size=8"],
        )
    assert str(err.value).startswith("method.mask_ratio:")
