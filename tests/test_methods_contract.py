"""What the pretrain loop relies on, checked for every registered method (no Ray needed)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_MODEL

from orchestrator.spec import load_spec
from workloads.methods import MethodOutput, method_names
from workloads.optim import param_groups_weight_decay
from workloads.pretrain import build_model

TINY = [
    *TINY_MODEL,
]


def tiny_model(method: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = load_spec(None, [*TINY, f"method.name={method}"])
    return build_model(spec.model_dump(mode="json"))


@pytest.fixture(params=method_names())
def method_model(request):
    return tiny_model(request.param)


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
