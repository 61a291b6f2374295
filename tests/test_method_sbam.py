"""SBAM / AMR: salience from embeddings, top-salience masking, adaptive ratio, spec checks."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_model import TINY_MODEL as TINY_OVERRIDES
from tiny_model import tiny_model

from orchestrator.config import ConfigError, load_spec
from workloads.masking import gather_tokens
from workloads.methods._ragged_masks import encode_padded, ragged_masked_mse
from workloads.methods.sbam import (
    SBAM,
    SBAMKnobs,
    adaptive_ratio,
    adaptive_ratios,
    build,
    salient_masking,
    salient_masking_per_image,
    salient_share,
    token_saliency,
)
from workloads.pretrain import build_model

TINY_MODEL = tiny_model()


def tiny_sbam(**knobs) -> SBAM:
    torch.manual_seed(0)
    return build(TINY_MODEL, SBAMKnobs(**knobs))


def images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def diagonal_tokens(magnitudes: list[float]) -> torch.Tensor:
    """X = diag(a): X Xᵀ = diag(a²), so token j's column sum grows with |a_j| (see below)."""
    # Column j sum = e^{a_j²}/(e^{a_j²}+L-1) + sum_{i≠j} 1/(e^{a_i²}+L-1): the first term
    # rises with a_j and the term it replaces falls, so salience order = order of |a|.
    return torch.diag(torch.tensor(magnitudes)).unsqueeze(0)  # (1, L, L)


# ------------------------------------------------------------------------------ salience


def test_token_saliency_matches_hand_computed_softmax_column_sums():
    # L=3, D=1, x = (0, 1, 2): X Xᵀ = [[0,0,0],[0,1,2],[0,2,4]].
    logits = [[0.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 2.0, 4.0]]
    rows = []
    for row in logits:
        total = sum(math.exp(v) for v in row)
        rows.append([math.exp(v) / total for v in row])
    columns = [sum(rows[i][j] for i in range(3)) for j in range(3)]
    low, high = min(columns), max(columns)
    expected = torch.tensor([[(c - low) / (high - low) for c in columns]])

    saliency = token_saliency(torch.tensor([[[0.0], [1.0], [2.0]]]))
    torch.testing.assert_close(saliency, expected)
    # Token 2 receives the most attention, token 0 the least.
    assert saliency.argmax().item() == 2 and saliency.argmin().item() == 0


def test_min_max_puts_every_image_in_unit_interval_with_both_ends_hit():
    x = torch.randn(5, 16, 8, generator=torch.Generator().manual_seed(3)) * 0.3
    saliency = token_saliency(x)
    assert saliency.shape == (5, 16)
    assert (saliency >= 0).all() and (saliency <= 1).all()
    assert torch.equal(saliency.min(dim=1).values, torch.zeros(5))
    assert torch.equal(saliency.max(dim=1).values, torch.ones(5))


def test_identical_tokens_have_no_salient_token():
    saliency = token_saliency(torch.ones(2, 6, 4))
    assert torch.equal(saliency, torch.zeros(2, 6))


def test_saliency_ignores_autocast():
    x = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = token_saliency(x)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, token_saliency(x))


# ------------------------------------------------------------------------------- masking


@pytest.mark.parametrize(("gamma", "expected_masked"), [(0.75, 12), (0.7, 12), (0.5, 8)])
def test_noise_off_masks_exactly_the_most_salient_tokens(gamma, expected_masked):
    # 16 tokens with magnitudes 0.1..1.6 in a scrambled order; ceil(16 * 0.7) = 12.
    order = [7, 2, 12, 0, 15, 9, 4, 11, 1, 14, 6, 3, 10, 13, 5, 8]
    magnitudes = [0.1 * (rank + 1) for rank in order]
    saliency = token_saliency(diagonal_tokens(magnitudes))
    # The construction fixes the salience order to the magnitude order.
    assert torch.equal(saliency[0].argsort(), torch.tensor(magnitudes).argsort())

    masks = salient_masking(saliency, gamma, noise=0.0)
    top = sorted(range(16), key=lambda j: magnitudes[j], reverse=True)[:expected_masked]
    assert masks.idx_mask.shape == (1, expected_masked)
    assert set(masks.idx_mask[0].tolist()) == set(top)
    assert set(masks.idx_keep[0].tolist()) == set(range(16)) - set(top)


def test_mask_count_is_ceil_without_float_error():
    # 10 * 0.7 = 7.000000000000001 in floats; ceil must still give 7.
    masks = salient_masking(torch.linspace(0, 1, 10).unsqueeze(0), 0.7, noise=0.0)
    assert masks.idx_mask.shape == (1, 7)
    assert set(masks.idx_mask[0].tolist()) == set(range(3, 10))


def test_ids_restore_inverts_keep_then_mask_order():
    saliency = torch.rand(3, 16, generator=torch.Generator().manual_seed(5))
    masks = salient_masking(saliency, 0.75, noise=0.5, generator=torch.Generator().manual_seed(6))
    shuffled = torch.cat([masks.idx_keep, masks.idx_mask], dim=1)  # token ids in shuffled order
    restored = torch.gather(shuffled, 1, masks.ids_restore)
    assert torch.equal(restored, torch.arange(16).repeat(3, 1))


def test_noise_only_reorders_tokens_closer_than_its_bound():
    # S = 1 beats S = 0 by more than the noise bound 0.5: with ratio 0.5 the ones are masked.
    saliency = torch.tensor([[0.0, 1.0] * 8] * 4)
    for seed in range(5):
        masks = salient_masking(saliency, 0.5, 0.5, torch.Generator().manual_seed(seed))
        assert (masks.idx_mask % 2 == 1).all()
    # Among equally salient tokens the noise picks a different subset per draw.
    draws = {
        tuple(
            sorted(
                salient_masking(saliency[:1], 0.25, 0.5, torch.Generator().manual_seed(seed))
                .idx_mask[0]
                .tolist()
            )
        )
        for seed in range(8)
    }
    assert len(draws) > 1


# ----------------------------------------------------------------------------------- AMR


def test_adaptive_ratio_follows_the_formula_and_its_bounds():
    r, delta_r, delta = 0.75, 0.1, 0.5
    ratios = []
    for salient in range(17):
        # `salient` tokens of 16 strictly above δ, the rest exactly at δ (not counted).
        saliency = torch.full((2, 16), 0.5)
        saliency[:, :salient] = 0.9
        ratio = adaptive_ratio(saliency, r, delta_r, delta)
        assert ratio == pytest.approx(0.65 + 0.2 * salient / 16)
        assert r - delta_r - 1e-9 <= ratio <= r + delta_r + 1e-9
        ratios.append(ratio)
    assert ratios[0] == pytest.approx(0.65) and ratios[-1] == pytest.approx(0.85)
    assert all(later > earlier for earlier, later in zip(ratios, ratios[1:], strict=False))


def test_adaptive_ratio_is_one_value_for_the_whole_batch():
    # Image 0 has 4 of 8 salient tokens, image 1 none: batch share = 4/16 = 0.25.
    saliency = torch.zeros(2, 8)
    saliency[0, :4] = 1.0
    assert salient_share(saliency, 0.5) == pytest.approx(0.25)
    assert adaptive_ratio(saliency, 0.5, 0.2, 0.5) == pytest.approx(0.3 + 0.4 * 0.25)
    masks = salient_masking(saliency, adaptive_ratio(saliency, 0.5, 0.2, 0.5), noise=0.0)
    assert masks.idx_mask.shape == (2, math.ceil(8 * 0.4))


# ------------------------------------------------------------------------- AMR per image


def test_per_image_ratios_follow_the_formula_and_set_each_images_mask_size():
    # Image i has 4·i of its 16 tokens strictly above δ = 0.5 (the rest exactly at δ).
    saliency = torch.full((5, 16), 0.5)
    for i in range(5):
        saliency[i, : 4 * i] = 0.9
    ratios = adaptive_ratios(saliency, 0.5, 0.2, 0.5)
    torch.testing.assert_close(ratios, torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7], dtype=ratios.dtype))

    masks = salient_masking_per_image(saliency, ratios, noise=0.0)
    masked_per_image = masks.masked.sum(dim=1).tolist()
    assert masked_per_image == [math.ceil(16 * r - 1e-6) for r in (0.3, 0.4, 0.5, 0.6, 0.7)]
    assert masked_per_image == [5, 7, 8, 10, 12]
    # Noise off: each image hides its most salient tokens first.
    assert masks.masked[1, :4].all()  # its 4 salient tokens among its 7 hidden
    assert not masks.masked[3, 12:].any()  # its 10 hidden all among its 12 salient
    # The padded visible slots are exactly the hidden ones past each image's own count.
    assert masks.visible_valid.sum(dim=1).tolist() == [11, 9, 8, 6, 4]
    for i in range(5):
        kept = masks.idx_keep[i][masks.visible_valid[i]]
        assert not masks.masked[i, kept].any()
        assert set(kept.tolist()) | set(masks.masked[i].nonzero().flatten().tolist()) == set(
            range(16)
        )


def test_padded_batch_gives_each_image_what_it_would_get_alone():
    model = tiny_sbam(gamma=0.6, delta_r=0.2, amr_scope="image").eval()
    imgs = images(3, seed=2)
    with torch.no_grad():
        tokens = model.encoder.embed_patches(imgs)
        saliency = token_saliency(tokens)
        ratios = torch.tensor([0.45, 0.75, 0.6], dtype=torch.float64)
        masks = salient_masking_per_image(saliency, ratios, 0.5, torch.Generator().manual_seed(0))
        assert len(set(masks.num_visible.tolist())) == 3
        latent = encode_padded(
            model.encoder, gather_tokens(tokens, masks.idx_keep), masks.visible_valid
        )
        pred = model.decoder(latent, masks.ids_restore, masks.visible_valid)
        for i, visible in enumerate(masks.num_visible.tolist()):
            keep = masks.ids_shuffle[i : i + 1, :visible]
            alone = model.encoder.forward_visible(gather_tokens(tokens[i : i + 1], keep))
            torch.testing.assert_close(latent[i : i + 1, : 1 + visible], alone, atol=1e-5, rtol=0)
            # MAE's decoder on the image alone: its visible tokens + one mask token per hidden.
            alone_pred = model.decoder(alone, masks.ids_restore[i : i + 1])
            torch.testing.assert_close(pred[i : i + 1], alone_pred, atol=1e-5, rtol=0)


def test_ragged_loss_averages_over_every_masked_patch_of_the_batch():
    pred = torch.zeros(2, 4, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]]).repeat(2, 1, 1)
    masked = torch.tensor([[True, False, False, False], [False, True, True, True]])
    # Per-patch MSE 1, 4, 9, 16; masked: image 0 {1}, image 1 {4, 9, 16} -> 30 / 4.
    assert ragged_masked_mse(pred, target, masked, False).item() == pytest.approx(7.5)


def test_model_masks_a_different_number_of_patches_per_image():
    model = tiny_sbam(gamma=0.6, delta_r=0.2, delta=0.3, amr_scope="image")
    seen = {}
    model.decoder.register_forward_hook(lambda _m, args, _o: seen.update(valid=args[2]))
    imgs = images(6, seed=3)
    out = model(imgs)

    with torch.no_grad():
        saliency = token_saliency(model.encoder.embed_patches(imgs))
    ratios = [0.4 + 0.4 * share for share in (saliency > 0.3).float().mean(dim=1).tolist()]
    expected_visible = [64 - math.ceil(64 * r - 1e-6) for r in ratios]
    assert seen["valid"].sum(dim=1).tolist() == expected_visible
    assert len(set(expected_visible)) > 1  # images of different salience, masks of different size
    assert out.metrics["mask_ratio"] == pytest.approx(sum(ratios) / 6)
    assert out.metrics["mask_ratio_min"] == pytest.approx(min(ratios))
    assert out.metrics["mask_ratio_max"] == pytest.approx(max(ratios))
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None


def test_batch_scope_is_the_default_as_in_the_authors_code():
    assert SBAMKnobs().amr_scope == "batch"
    out = tiny_sbam(gamma=0.6, delta_r=0.2)(images())
    assert "mask_ratio_min" not in out.metrics


# --------------------------------------------------------------------------------- model


def test_metrics_report_the_ratio_used_and_the_encoder_sees_the_rest():
    model = tiny_sbam(gamma=0.6, delta_r=0.2, delta=0.3)
    seen = {}
    model.decoder.register_forward_hook(lambda _m, args, _o: seen.update(latent=args[0].shape))
    imgs = images()
    out = model(imgs)

    with torch.no_grad():
        saliency = token_saliency(model.encoder.embed_patches(imgs))
    share = (saliency > 0.3).float().mean().item()
    expected = 0.6 - 0.2 + 0.4 * share
    assert out.metrics["salient_share"] == pytest.approx(share)
    assert out.metrics["mask_ratio"] == pytest.approx(expected)
    assert 0.4 <= out.metrics["mask_ratio"] <= 0.8
    # 64 patches: the encoder gets cls + the 64 - ceil(64·R) visible ones.
    assert seen["latent"][1] == 1 + 64 - math.ceil(64 * expected - 1e-6)


def test_plain_sbam_uses_gamma():
    out = tiny_sbam(gamma=0.75)(images())
    assert out.metrics["mask_ratio"] == 0.75
    assert 0.0 <= out.metrics["salient_share"] <= 1.0


def test_no_weight_decay_names_exist():
    model = tiny_sbam()
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {
        "encoder.cls_token",
        "encoder.pos_embed",
        "decoder.mask_token",
        "decoder.pos_embed",
    }
    assert model.no_weight_decay() <= set(names)


@pytest.mark.parametrize("scope", ["batch", "image"])
def test_a_few_steps_on_a_fixed_batch_lower_the_loss(scope):
    model = tiny_sbam(gamma=0.75, delta_r=0.1, amr_scope=scope)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95))
    imgs = images(8, seed=1)
    losses = []
    for _ in range(15):
        loss = model(imgs, generator=torch.Generator().manual_seed(0)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]


# ---------------------------------------------------------------------------------- spec


def test_spec_accepts_good_knobs_and_builds_a_model_that_trains():
    spec = load_spec(
        None,
        ["method.name=sbam", "method.gamma=0.6", "method.delta_r=0.1", "method.delta=0.4"]
        + TINY_OVERRIDES,
    )
    assert (spec.method.gamma, spec.method.delta_r, spec.method.delta) == (0.6, 0.1, 0.4)
    assert spec.flat_params()["method.delta_r"] == 0.1
    model = build_model(spec.model_dump(mode="json"))
    assert isinstance(model, SBAM) and model.delta_r == 0.1
    out = model(images(2))
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None
    assert 0.5 <= out.metrics["mask_ratio"] <= 0.7


def test_spec_accepts_amr_scope_and_builds_it():
    spec = load_spec(None, ["method.name=sbam", "method.delta_r=0.1", "method.amr_scope=image"])
    assert spec.method.amr_scope == "image"
    assert spec.flat_params()["method.amr_scope"] == "image"
    assert build_model(spec.model_dump(mode="json")).amr_scope == "image"


def test_demo_preset_switches_to_sbam():
    spec = load_spec("demo", ["method={name: sbam, gamma: 0.8}"])
    assert spec.method.name == "sbam" and spec.method.gamma == 0.8
    assert spec.method.delta_r == 0.0 and spec.method.norm_pix_loss


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["method.gamma=1.0"], "method.gamma:"),
        (["method.gamma=0"], "method.gamma:"),
        (["method.gamma=1.5"], "method.gamma:"),
        (["method.delta_r=-0.1"], "method.delta_r:"),
        (["method.gamma=0.95", "method.delta_r=0.1"], "method.delta_r:"),
        (["method.gamma=0.1", "method.delta_r=0.1"], "method.delta_r:"),
        (["method.delta=1.5"], "method.delta:"),
        (["method.noise=-1"], "method.noise:"),
        (["method.amr_scope=pixel"], "method.amr_scope:"),
    ],
)
def test_bad_knobs_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_spec(None, ["method.name=sbam", *overrides])
    assert str(err.value).startswith(key)


def test_ratio_range_error_says_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        load_spec(None, ["method.name=sbam", "method.gamma=0.95", "method.delta_r=0.1"])
    message = str(err.value)
    assert message.startswith("method.delta_r: gamma ± delta_r = 0.95 ± 0.1 leaves (0, 1)")
    assert "allowed" in message
