"""What the pretrain loop relies on, checked for every registered method (no Ray needed)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_MODEL

from orchestrator.config import load_spec
from workloads.ema import EMATeacher
from workloads.evaluation.heads import encoder_prefix, load_encoder
from workloads.methods import MethodOutput, get_method, method_names
from workloads.methods.base import PretrainModel
from workloads.models.decoder import SinCosDecoder
from workloads.models.vit import ViTEncoder
from workloads.optim import param_groups_weight_decay
from workloads.pretrain import build_model

TINY = [
    *TINY_MODEL,
]


def tiny_spec(method: str) -> dict:
    return load_spec(None, [*TINY, f"method.name={method}"]).model_dump(mode="json")


def tiny_model(method: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_spec(method))


@pytest.fixture(params=method_names())
def method_model(request):
    return tiny_model(request.param)


@pytest.mark.parametrize("method", method_names())
def test_model_is_the_declared_pretrain_model_with_its_online_encoder(method):
    model = tiny_model(method)
    assert isinstance(model, PretrainModel) and type(model) is get_method(method).model
    assert isinstance(model.encoder, ViTEncoder)
    # The declared key is where the checkpoint holds the online encoder, and nothing else.
    assert model.get_submodule(model.encoder_key) is model.encoder
    prefix = f"{model.encoder_key}."
    held = {k.removeprefix(prefix) for k in model.state_dict() if k.startswith(prefix)}
    assert held == set(model.encoder.state_dict())


@pytest.mark.parametrize("method", method_names())
def test_evaluation_loads_the_declared_online_encoder(method):
    model = tiny_model(method)
    with torch.no_grad():  # any EMA copy now differs from the online encoder
        for param in model.encoder.parameters():
            param.add_(1.0)
    state = model.state_dict()
    assert encoder_prefix(state) == f"{model.encoder_key}."
    spec = tiny_spec(method)
    for loaded in (
        load_encoder(spec["model"], state, init_seed=7, method=method),
        load_encoder(spec["model"], state, init_seed=7),  # callers that do not know the method
    ):
        for name, value in model.encoder.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), (method, name)


def test_a_state_without_a_declared_encoder_is_refused():
    with pytest.raises(ValueError, match="declared prefixes"):
        encoder_prefix({"decoder.weight": torch.zeros(1), "backbone.encoder.x": torch.zeros(1)})


def ema_teachers(model: torch.nn.Module) -> list[EMATeacher]:
    return [value for value in vars(model).values() if isinstance(value, EMATeacher)]


@pytest.mark.parametrize("method", method_names())
def test_after_optimizer_step_moves_ema_targets_and_nothing_else(method):
    model = tiny_model(method)
    with torch.no_grad():  # an optimizer step of the online weights
        for param in model.parameters():
            if param.requires_grad:
                param.add_(1.0)
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    model.after_optimizer_step(0.0)
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(after[k], v)}
    targets = [t for teacher in ema_teachers(model) for t in teacher.targets()]
    target_names = [n for n, m in model.named_modules() if any(m is t for t in targets)]
    assert len(target_names) == len(targets)  # every copy is registered on the model
    # Every EMA copy moved towards its online module; nothing else moved.
    for name in target_names:
        assert any(k.startswith(f"{name}.") for k in changed), name
    assert all(any(k.startswith(f"{name}.") for name in target_names) for k in changed)


@pytest.mark.parametrize(("method", "copies"), [("latent_mim", 2), ("pcae", 1)])
def test_ema_methods_compose_the_shared_teacher(method, copies):
    (teacher,) = ema_teachers(tiny_model(method))
    assert len(teacher.targets()) == copies


@pytest.mark.parametrize("method", method_names())
def test_decoders_share_the_sincos_decoder_set_up(method):
    model = tiny_model(method)
    decoder = model.mae.decoder if method == "mae" else model.decoder
    assert isinstance(decoder, SinCosDecoder)
    assert not decoder.pos_embed.requires_grad


def test_every_trainable_parameter_gets_a_gradient(method_model):
    # DDP (2+ workers) fails on trainable parameters that take no part in the loss.
    out = method_model(torch.randn(4, 3, 32, 32))
    assert isinstance(out, MethodOutput)
    assert out.loss.ndim == 0 and math.isfinite(out.loss.item())
    out.loss.backward()
    missing = [n for n, p in method_model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_metrics_are_plain_floats(method_model):
    out = method_model(torch.randn(2, 3, 32, 32))
    assert out.metrics  # every method reports at least its mask ratio
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.metrics.values())


def test_no_weight_decay_names_real_parameters(method_model):
    names = dict(method_model.named_parameters())
    no_decay = method_model.no_weight_decay()
    assert no_decay and no_decay <= set(names)
    groups = param_groups_weight_decay(method_model, weight_decay=0.05)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all(id(names[n]) not in decayed for n in no_decay)


@pytest.mark.parametrize("method", method_names())
def test_state_dict_round_trips_into_a_fresh_model(method):
    # Resume loads the checkpointed state into a newly built model of the same spec.
    trained, fresh = tiny_model(method, seed=0), tiny_model(method, seed=1)
    state = trained.state_dict()
    assert any(not same(v, fresh.state_dict()[k]) for k, v in state.items())
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert same(value, state[key]), key


def same(a, b) -> bool:
    # state_dicts may carry extra (non-tensor) state next to tensors
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
