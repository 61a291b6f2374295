"""EMAE's knobs and their check against the model section (torch-free: see `knobs.py`); the
model is in `emae.py`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from workloads.methods.knobs import MethodCard, MethodKnobs, register_card


class EMAEKnobs(MethodKnobs):
    name: str = "emae"
    k: int = Field(
        4, ge=2, description="parallel parts K; mask ratio 1 - 1/K; must divide the patches"
    )
    consistency_weight: float = Field(
        1.0, ge=0.0, description="weight of the self-consistency loss; 0 disables it"
    )
    norm_pix_loss: bool = Field(True, description="per-patch normalised pixel targets")


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


def check(model: Mapping[str, Any], knobs: EMAEKnobs) -> None:
    num_patches = (model["img_size"] // model["patch_size"]) ** 2
    if num_patches % knobs.k:
        allowed = ", ".join(str(d) for d in _divisors(num_patches))
        raise ValueError(
            f"k: K={knobs.k} does not divide the {num_patches} patches; "
            f"allowed: a divisor of {num_patches} ({allowed})"
        )


CARD = register_card(
    MethodCard(
        name="emae",
        summary="EMAE: K parallel disjoint masks in one batch, whole + self-consistency loss",
        knobs=EMAEKnobs,
        module="workloads.methods.emae",
        check=check,
    )
)
