"""LR schedule, LR scaling and the weight-decay split of the MAE recipe."""

import pytest
import torch
from torch import nn

from workloads.models.mae import build_mae
from workloads.optim import build_optimizer, param_groups_weight_decay, set_lr
from workloads.schedule import lr_at, scaled_lr

PEAK, MIN, WARMUP, TOTAL = 1e-3, 1e-5, 10, 110


def test_warmup_is_linear_from_zero():
    assert lr_at(0, TOTAL, WARMUP, PEAK, MIN) == 0.0
    assert lr_at(5, TOTAL, WARMUP, PEAK, MIN) == pytest.approx(PEAK / 2)
    assert lr_at(WARMUP, TOTAL, WARMUP, PEAK, MIN) == pytest.approx(PEAK)


def test_cosine_decays_to_min():
    midway = WARMUP + (TOTAL - WARMUP) // 2
    assert lr_at(midway, TOTAL, WARMUP, PEAK, MIN) == pytest.approx((PEAK + MIN) / 2)
    assert lr_at(TOTAL, TOTAL, WARMUP, PEAK, MIN) == pytest.approx(MIN)
    assert lr_at(TOTAL + 50, TOTAL, WARMUP, PEAK, MIN) == pytest.approx(MIN)
    values = [lr_at(s, TOTAL, WARMUP, PEAK, MIN) for s in range(WARMUP, TOTAL + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_no_warmup_starts_at_peak():
    assert lr_at(0, 100, 0, PEAK) == pytest.approx(PEAK)
    assert lr_at(100, 100, 0, PEAK) == 0.0


def test_scaled_lr():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert scaled_lr(1.5e-4, 256) == pytest.approx(1.5e-4)


def _tiny_mae():
    return build_mae(32, 4, 32, 2, 2, 32, 1, 2, mask_ratio=0.75, norm_pix_loss=True)


def test_param_groups_split():
    model = _tiny_mae()
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    params = dict(model.named_parameters())
    no_decay_ids = {id(p) for p in no_decay["params"]}
    decay_ids = {id(p) for p in decay["params"]}
    for name in [
        "encoder.cls_token",
        "decoder.mask_token",
        "encoder.norm.weight",
        "encoder.blocks.0.attn.qkv.bias",
        "decoder.embed.bias",
    ]:
        assert id(params[name]) in no_decay_ids, name
    for name in [
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.patch_embed.proj.weight",
        "decoder.pred.weight",
    ]:
        assert id(params[name]) in decay_ids, name
    for name in ["encoder.pos_embed", "decoder.pos_embed"]:
        assert id(params[name]) not in no_decay_ids | decay_ids
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert no_decay_ids | decay_ids == trainable and not no_decay_ids & decay_ids


def test_plain_module_without_no_weight_decay():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    no_decay, decay = param_groups_weight_decay(model, 0.1)
    assert len(no_decay["params"]) == 3 and len(decay["params"]) == 1


def test_optimizer_and_set_lr_with_scale():
    optimizer = build_optimizer(_tiny_mae(), lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    optimizer.param_groups[0]["lr_scale"] = 0.5
    set_lr(optimizer, 2e-3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(2e-3)
