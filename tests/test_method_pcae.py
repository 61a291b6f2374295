"""PCAE: redundant-token dropping, stage counts, kept positions, EMA teacher, spec, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_model import tiny_model

from orchestrator.config import ConfigError, load_spec
from workloads.masking import random_masking
from workloads.methods import get_method
from workloads.methods.pcae import (
    PCAE,
    PCAEKnobs,
    keep_least_redundant,
    kept_count,
    teacher_forward,
)
from workloads.optim import build_optimizer
from workloads.pretrain import build_model

TINY = tiny_model(depth=3)


def _tiny_pcae(**knobs) -> PCAE:
    torch.manual_seed(0)
    return get_method("pcae").build(TINY, PCAEKnobs(**knobs))


def _masks(batch: int, seed: int = 0):
    # 64 patches at mask ratio 0.75: 16 visible, 48 masked.
    return random_masking(batch, 64, 0.75, generator=torch.Generator().manual_seed(seed))


def test_keep_least_redundant_picks_tokens_far_from_the_mean():
    # Three "background" tokens along +x, one along +y, one along -x. Mean = (1, 0.2):
    # cos = 0.98 for the background, 0.2/|mean| = 0.196 for (0, 1), -0.98 for (-1, 0).
    tokens = torch.tensor([[2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    order = torch.tensor([3, 0, 4, 2, 1])  # the same tokens shuffled, for a second sample
    batch = torch.stack([tokens, tokens[order]])  # (2, 5, 2)
    assert keep_least_redundant(batch, 1).tolist() == [[4], [2]]
    assert keep_least_redundant(batch, 2).tolist() == [[4, 3], [2, 0]]
    assert keep_least_redundant(batch, 5).shape == (2, 5)


def test_kept_count_floors_and_keeps_at_least_one():
    assert kept_count(48, 0.5) == 24
    assert kept_count(10, 0.3) == 3  # 10 * 0.3 is 2.9999... in floats
    assert kept_count(3, 0.1) == 1
    assert kept_count(7, 1.0) == 7


@pytest.mark.parametrize(
    ("keep_ratio", "block_inputs", "final"),
    [(0.5, [48, 24, 12], 12), (0.3, [48, 14, 4], 4)],  # floor(48*0.3)=14, floor(14*0.3)=4
)
def test_teacher_keeps_expected_tokens_at_each_stage(keep_ratio, block_inputs, final):
    model = _tiny_pcae(keep_ratio=keep_ratio, drop_after=[0, 1])
    seen: list[int] = []
    for block in model.teacher.blocks:
        block.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[1]))
    masks = _masks(2)
    imgs = torch.randn(2, 3, 32, 32)
    features, positions = teacher_forward(model.teacher, imgs, masks.idx_mask, [0, 1], keep_ratio)
    assert seen == block_inputs
    assert features.shape == (2, final, 32) and positions.shape == (2, final)
    out = model(imgs)
    assert out.metrics["teacher_tokens"] == final


def test_kept_positions_are_distinct_masked_patches():
    model = _tiny_pcae(drop_after=[0, 1])
    masks = _masks(4, seed=1)
    _, positions = teacher_forward(
        model.teacher, torch.randn(4, 3, 32, 32), masks.idx_mask, [0, 1], 0.5
    )
    for row in range(4):
        kept, masked = positions[row].tolist(), set(masks.idx_mask[row].tolist())
        assert len(set(kept)) == len(kept) == 12
        assert set(kept) <= masked
        assert not set(kept) & set(masks.idx_keep[row].tolist())


def test_last_stage_drop_tracks_positions_and_drops_tokens_near_the_mean():
    # Blocks without a cls token are permutation-equivariant, so a drop after the last block
    # must return exactly the uncompressed features at the surviving positions.
    model = _tiny_pcae()
    teacher = model.teacher
    masks, imgs = _masks(2, seed=2), torch.randn(2, 3, 32, 32)
    full, full_pos = teacher_forward(teacher, imgs, masks.idx_mask, [], 0.5)
    kept, kept_pos = teacher_forward(teacher, imgs, masks.idx_mask, [2], 0.5)
    assert torch.equal(full_pos, masks.idx_mask) and kept.shape == (2, 24, 32)
    # Last-block outputs, before the final norm, decide what is dropped.
    x = teacher.patch_embed(imgs) + teacher.pos_embed[:, 1:, :]
    for row in range(2):
        tokens = x[row, masks.idx_mask[row]]
        for block in teacher.blocks:
            tokens = block(tokens[None])[0]
        similarity = F.cosine_similarity(tokens, tokens.mean(0, keepdim=True), dim=-1)
        least_similar = masks.idx_mask[row][similarity.argsort()[:24]]
        assert set(kept_pos[row].tolist()) == set(least_similar.tolist())
        for j, position in enumerate(kept_pos[row].tolist()):
            where = (full_pos[row] == position).nonzero().item()
            assert torch.allclose(kept[row, j], full[row, where], atol=1e-5)


def test_decoder_predicts_at_the_requested_positions():
    model = _tiny_pcae()
    masks = _masks(2, seed=3)
    latent = model.encoder(torch.randn(2, 3, 32, 32), masks.idx_keep)
    targets = masks.idx_mask[:, :5]
    pred = model.decoder(latent, masks.idx_keep, targets)
    assert pred.shape == (2, 5, 32)  # teacher-feature dim, not pixels
    # Queries are a set: permuting the requested positions permutes the predictions.
    flipped = model.decoder(latent, masks.idx_keep, targets.flip(1))
    assert torch.allclose(flipped, pred.flip(1), atol=1e-5)
    other = model.decoder(latent, masks.idx_keep, masks.idx_mask[:, 5:10])
    assert not torch.allclose(other, pred)


def test_teacher_gets_no_gradients_and_ema_follows_the_formula():
    model = _tiny_pcae(momentum=0.996)
    optimizer = build_optimizer(model, lr=1e-2)
    trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not trainable & {id(p) for p in model.teacher.parameters()}
    assert model.no_weight_decay() == {
        "encoder.cls_token",
        "encoder.pos_embed",
        "decoder.mask_token",
        "decoder.pos_embed",
    }

    out = model(torch.randn(2, 3, 32, 32))
    assert out.metrics["ema_momentum"] == pytest.approx(0.996)
    out.loss.backward()
    for param in model.teacher.parameters():
        assert not param.requires_grad and param.grad is None
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    optimizer.step()

    teacher_before = [p.clone() for p in model.teacher.parameters()]
    student = [p.detach().clone() for p in model.encoder.parameters()]
    assert any(not torch.equal(t, s) for t, s in zip(teacher_before, student, strict=True))
    # progress 0.5: m = 1 - (1 - 0.996) * (cos(pi/2) + 1) / 2 = 0.998
    model.after_optimizer_step(0.5)
    for after, before, online in zip(
        model.teacher.parameters(), teacher_before, student, strict=True
    ):
        assert torch.allclose(after, 0.998 * before + 0.002 * online, atol=1e-7)
    assert model(torch.randn(2, 3, 32, 32)).metrics["ema_momentum"] == pytest.approx(0.998)
    model.after_optimizer_step(1.0)  # momentum reaches 1: the teacher stops moving
    frozen = [p.clone() for p in model.teacher.parameters()]
    model.after_optimizer_step(1.0)
    assert all(torch.equal(a, b) for a, b in zip(model.teacher.parameters(), frozen, strict=True))


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
    model = _tiny_pcae(drop_after=[0, 1])
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.95)
    )
    imgs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    losses = []
    for step in range(12):
        out = model(imgs, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        model.after_optimizer_step(step / 12)
        losses.append(out.loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


def test_spec_accepts_pcae_and_builds_through_pretrain():
    spec = load_spec("demo", ["method.name=pcae", "method.drop_after=[0, 2]"])
    assert spec.method.drop_after == [0, 2] and spec.method.keep_ratio == 0.5
    model = build_model(spec.model_dump(mode="json"))
    out = model(torch.randn(2, 3, 32, 32))
    out.loss.backward()
    # demo: 64 patches, 48 masked -> 24 after block 0 -> 12 after block 2
    assert out.metrics["teacher_tokens"] == 12
    assert set(out.metrics) >= {"teacher_tokens", "ema_momentum"}
    default = load_spec("demo", ["method.name=pcae"])
    assert default.method.drop_after == [0] and default.method.momentum == 0.996


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["method.drop_after=[4]"], "method.drop_after"),  # demo depth is 4
        (["model.depth=3", "method.drop_after=[0, 3]"], "method.drop_after"),
        (["method.drop_after=[0, 0]"], "method.drop_after"),
        (["method.drop_after=[-1]"], "method.drop_after"),
        (["method.keep_ratio=0"], "method.keep_ratio"),
        (["method.keep_ratio=1.5"], "method.keep_ratio"),
        (["method.mask_ratio=1.0"], "method.mask_ratio"),
        (["method.momentum=1.5"], "method.momentum"),
    ],
)
def test_bad_knobs_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as caught:
        load_spec("demo", ["method.name=pcae", *overrides])
    assert str(caught.value).startswith(f"{key}:"), str(caught.value)
