"""Refactors of the methods' shared parts must not move a number: a fixed-seed forward, one
SGD step, the EMA hook and a second forward give the losses captured before the refactor,
and every checkpoint key keeps its name (resume and evaluation read them).

Recapture (only when a change of numerics is intended, and say so in the commit):
    python tests/test_method_numerics.py --capture
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_MODEL  # noqa: E402

from orchestrator.config import load_spec  # noqa: E402
from workloads.pretrain import build_model  # noqa: E402

GOLDEN = Path(__file__).parent / "data" / "method_losses_golden.json"

# One case per method, plus the variants that take their own code path.
CASES: dict[str, list[str]] = {
    "mae": ["method.name=mae"],
    "emae": ["method.name=emae"],
    "sbam": ["method.name=sbam"],
    "sbam_amr_image": [
        "method.name=sbam",
        "method.delta_r=0.1",
        "method.amr_scope=image",
    ],
    "latent_mim": ["method.name=latent_mim"],
    "latent_mim_gap": ["method.name=latent_mim", "method.gap=1", "method.projector=none"],
    "pcae": ["method.name=pcae"],
}


def run_case(overrides: list[str]) -> dict:
    spec = load_spec(None, [*TINY_MODEL, *overrides]).model_dump(mode="json")
    torch.manual_seed(0)
    model = build_model(spec)
    imgs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    first = model(imgs)
    first.loss.backward()
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param.sub_(0.05 * param.grad)
    hook = getattr(model, "after_optimizer_step", None)
    if hook is not None:
        hook(0.5)
    torch.manual_seed(3)
    second = model(imgs)
    return {
        "loss_first": first.loss.item(),
        "loss_second": second.loss.item(),
        "state_keys": sorted(model.state_dict()),
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixed_seed_losses_and_checkpoint_keys_are_unchanged(case):
    golden = json.loads(GOLDEN.read_text())[case]
    got = run_case(CASES[case])
    assert got["state_keys"] == golden["state_keys"]
    for name in ("loss_first", "loss_second"):
        assert math.isclose(got[name], golden[name], rel_tol=1e-6, abs_tol=1e-7), (
            name,
            got[name],
            golden[name],
        )


if __name__ == "__main__" and "--capture" in sys.argv:
    GOLDEN.write_text(json.dumps({c: run_case(o) for c, o in CASES.items()}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
