"""EMAE: parallel disjoint masks, one batched forward, whole + self-consistency loss."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL

from orchestrator.config import ConfigError, load_spec
from workloads.methods.emae import (
    EMAE,
    masked_predictions,
    parallel_masks,
    self_consistency_loss,
    visible_part,
)
from workloads.optim import build_optimizer
from workloads.pretrain import build_model

TINY_OVERRIDES = [
    "model.img_size=32",
    "model.patch_size=4",
    *TINY_MODEL,
]


def tiny_emae(k: int = 4, consistency_weight: float = 1.0, norm_pix_loss: bool = True) -> EMAE:
    torch.manual_seed(0)
    spec = load_spec(
        None,
        [
            "method.name=emae",
            f"method.k={k}",
            f"method.consistency_weight={consistency_weight}",
            f"method.norm_pix_loss={str(norm_pix_loss).lower()}",
            *TINY_OVERRIDES,
        ],
    )
    return build_model(spec.model_dump(mode="json"))


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("k", [2, 4, 16])
def test_parts_are_disjoint_and_cover_every_patch_once(k):
    batch, n = 3, 64
    masks = parallel_masks(batch, n, k, generator=torch.Generator().manual_seed(1))
    assert masks.idx_keep.shape == (k, batch, n // k)
    assert masks.idx_mask.shape == (k, batch, n - n // k)
    assert masks.ids_restore.shape == (k, batch, n)
    every_patch = list(range(n))
    for b in range(batch):
        # The K visible sets together list every patch exactly once: disjoint and covering.
        assert sorted(masks.idx_keep[:, b].flatten().tolist()) == every_patch
        for part in range(k):
            keep = set(masks.idx_keep[part, b].tolist())
            others = {i for q in range(k) if q != part for i in masks.idx_keep[q, b].tolist()}
            assert set(masks.idx_mask[part, b].tolist()) == others
            assert keep.isdisjoint(masks.idx_mask[part, b].tolist())
            # ids_restore puts cat([visible, masked]) back in patch order (decoder contract).
            shuffled = torch.cat([masks.idx_keep[part, b], masks.idx_mask[part, b]])
            assert shuffled[masks.ids_restore[part, b]].tolist() == every_patch


def test_each_masked_position_gets_k_minus_1_predictions():
    k, batch, n = 4, 2, 64
    masks = parallel_masks(batch, n, k, generator=torch.Generator().manual_seed(2))
    times_masked = torch.zeros(batch, n, dtype=torch.long)
    for part in range(k):
        times_masked.scatter_add_(1, masks.idx_mask[part], torch.ones_like(masks.idx_mask[part]))
    assert torch.all(times_masked == k - 1)

    owner = visible_part(masks, n)
    # Prediction value = the id of the part that made it, so we can read who guessed what.
    pred = torch.arange(k, dtype=torch.float).view(k, 1, 1, 1).expand(k, batch, n, 1)
    guesses = masked_predictions(pred, owner)
    assert guesses.shape == (k - 1, batch, n, 1)
    for b in range(batch):
        for part in range(k):
            for p in masks.idx_keep[part, b].tolist():
                assert owner[b, p] == part
                assert sorted(guesses[:, b, p, 0].tolist()) == [q for q in range(k) if q != part]


def test_masks_reject_k_that_does_not_divide():
    with pytest.raises(ValueError, match="^k: K=5"):
        parallel_masks(2, 64, 5)


# ------------------------------------------------------------------------------- losses


def test_consistency_is_zero_when_predictions_agree():
    same = torch.randn(1, 2, 5, 6).expand(3, -1, -1, -1)
    assert self_consistency_loss(same, same).item() == pytest.approx(0.0, abs=1e-12)
    # Single prediction per position (K = 2): nothing to agree with.
    assert self_consistency_loss(same[:1], same[:1]).item() == 0.0


def test_consistency_hand_value():
    # Three predictions 0, 1, 3 of one scalar position: ordered-pair squared gaps
    # 1, 9, 4 (each twice) -> mean 14 / 3.
    preds = torch.tensor([0.0, 1.0, 3.0]).view(3, 1, 1, 1)
    assert self_consistency_loss(preds, preds).item() == pytest.approx(14 / 3)


def test_consistency_gradient_flows_only_through_the_online_side():
    online = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).view(2, 1, 1, 2).requires_grad_()
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).view(2, 1, 1, 2).requires_grad_()
    loss = self_consistency_loss(online, target)
    # Pairs (0, 1): mse([1, 2], [1, 1]) = 0.5 and (1, 0): mse([3, 5], [0, 0]) = 17.
    assert loss.item() == pytest.approx((0.5 + 17.0) / 2)
    loss.backward()
    assert target.grad is None
    # d/dx of mean_pairs mean_P (x_i − y_j)^2 = (x_i − y_j) / 2 here (2 pairs, 2 pixels).
    expected = torch.tensor([[0.0, 0.5], [1.5, 2.5]]).view(2, 1, 1, 2)
    assert torch.allclose(online.grad, expected)


def test_symmetrised_consistency_pulls_both_sides_half_as_hard():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([3.0, 5.0], requires_grad=True)
    preds = torch.stack([a, b]).view(2, 1, 1, 2)
    self_consistency_loss(preds, preds).backward()
    # Each side only gets its own term: mse(a, sg b) / 2 -> (a − b) / 2, and vice versa;
    # without the stop-gradient each would get (a − b).
    assert torch.allclose(a.grad, torch.tensor([-1.0, -1.5]))
    assert torch.allclose(b.grad, torch.tensor([1.0, 1.5]))


def test_model_consistency_uses_only_the_masked_predictions():
    model = tiny_emae(k=4)
    batch, n = 2, 64
    masks = parallel_masks(batch, n, 4, generator=torch.Generator().manual_seed(3))
    # Part k predicts the constant c_k everywhere. A patch owned by part v is compared over
    # the other three constants: owner 0 -> {1, 2, 4}: gaps² 1, 9, 4 -> 14/3; owner 1 ->
    # {0, 2, 4}: 4, 16, 4 -> 8; owner 2 -> {0, 1, 4}: 1, 16, 9 -> 26/3; owner 3 -> {0, 1, 2}:
    # 1, 4, 1 -> 2. Each part owns N/K patches: mean (14/3 + 8 + 26/3 + 2) / 4 = 35/6.
    constants = torch.tensor([0.0, 1.0, 2.0, 4.0]).view(4, 1, 1, 1)
    pred = constants.expand(4, batch, n, 48)
    out = model.objective(images(batch), pred, masks)
    assert out.metrics["loss_consistency"] == pytest.approx(35 / 6)
    assert out.metrics["mask_ratio"] == pytest.approx(0.75)
    assert out.loss.item() == pytest.approx(out.metrics["loss_whole"] + 35 / 6, rel=1e-5)


def test_zero_weight_skips_the_consistency_term():
    model = tiny_emae(k=4, consistency_weight=0.0)
    out = model(images(2), generator=torch.Generator().manual_seed(0))
    assert out.metrics["loss_consistency"] == 0.0
    assert out.loss.item() == pytest.approx(out.metrics["loss_whole"])


# ------------------------------------------------------------------------------- model


def test_batched_forward_equals_a_loop_over_parts():
    model = tiny_emae(k=4).eval()
    imgs = images(3)
    masks = model.make_masks(imgs, torch.Generator().manual_seed(5))
    with torch.no_grad():
        batched = model.predict(imgs, masks)
        looped = model.predict_loop(imgs, masks)
        out_batched = model(imgs, masks=masks)
        out_looped = model.forward_loop(imgs, masks=masks)
    assert batched.shape == (4, 3, 64, 48)
    assert torch.allclose(batched, looped, atol=1e-5)
    assert out_batched.loss.item() == pytest.approx(out_looped.loss.item(), rel=1e-5)
    for key in ("loss_whole", "loss_consistency"):
        assert out_batched.metrics[key] == pytest.approx(out_looped.metrics[key], rel=1e-5)


def test_batched_forward_runs_the_encoder_once_on_k_times_b_sequences():
    model = tiny_emae(k=4)
    calls = []
    model.encoder.blocks[0].register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    model(images(3), generator=torch.Generator().manual_seed(0))
    assert calls == [torch.Size([4 * 3, 1 + 16, 32])]


def test_a_few_steps_lower_the_loss():
    model = tiny_emae(k=4)
    imgs = images(4)
    optimizer = build_optimizer(model, lr=1e-3)

    def fixed_mask_output():
        return model(imgs, generator=torch.Generator().manual_seed(42))

    start = fixed_mask_output()
    for _ in range(10):
        optimizer.zero_grad()
        fixed_mask_output().loss.backward()
        optimizer.step()
    end = fixed_mask_output()
    assert end.loss.item() < 0.8 * start.loss.item()
    assert end.metrics["loss_whole"] < 0.8 * start.metrics["loss_whole"]


def test_build_model_from_spec_and_backward():
    model = tiny_emae(k=8)
    assert isinstance(model, EMAE) and model.k == 8
    out = model(images(2))
    assert set(out.metrics) == {"mask_ratio", "loss_whole", "loss_consistency"}
    assert out.metrics["mask_ratio"] == pytest.approx(7 / 8)
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None
    assert model.decoder.pred.weight.grad is not None
    assert model.no_weight_decay() == {
        "encoder.cls_token",
        "encoder.pos_embed",
        "decoder.mask_token",
        "decoder.pos_embed",
    }
    names = {name for name, _ in model.named_parameters()}
    assert model.no_weight_decay() <= names


# ------------------------------------------------------------------------------- spec


def test_spec_accepts_good_knobs():
    spec = load_spec("demo", ["method={name: emae, k: 8, consistency_weight: 0.5}"])
    assert spec.method.name == "emae" and spec.method.k == 8
    assert spec.method.consistency_weight == 0.5 and spec.method.norm_pix_loss
    defaults = load_spec(None, ["method.name=emae"])
    assert defaults.method.k == 4 and defaults.method.consistency_weight == 1.0


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["method.k=5"], "method.k", "allowed: a divisor of 64 (2, 4, 8, 16, 32, 64)"),
        (["method.k=3"], "method.k", "K=3 does not divide the 64 patches"),
        (["method.k=1"], "method.k", "greater than or equal to 2"),
        (["method.consistency_weight=-0.1"], "method.consistency_weight", "greater than"),
        (["method.k=4", "model.img_size=28"], "method.k", "divisor of 49"),
    ],
)
def test_spec_rejects_bad_knobs(overrides, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_spec(None, ["method.name=emae", *TINY_OVERRIDES, *overrides])
    message = str(err.value)
    assert message.startswith(f"{key}:"), message
    assert allowed in message
