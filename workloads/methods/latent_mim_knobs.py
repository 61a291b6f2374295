"""Latent MIM's knobs, their check against the model section and the training image side its
gap grid wants (torch-free: see `knobs.py`); the model is in `latent_mim.py`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from workloads.methods.knobs import MethodCard, MethodKnobs, register_card
from workloads.patch_counts import gap_grid_side, num_kept


class LatentMIMKnobs(MethodKnobs):
    name: str = "latent_mim"
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0, description="share of patches masked")
    gap: int = Field(0, ge=0, description="pixels between patch cells; 0 = plain patchify")
    tau: float = Field(0.2, gt=0.0, description="PatchDisc temperature τ")
    sim_coeff: float = Field(0.1, ge=0.0, description="similarity regulariser weight; 0 = off")
    momentum_base: float = Field(
        0.99, ge=0.0, le=1.0, description="EMA momentum at the start (cosine to 1)"
    )
    projector: Literal["none", "mlp"] = Field(
        "mlp", description="3-layer MLP head on online and target encoder outputs (authors')"
    )


def train_img_size(model: Mapping[str, Any], knobs: LatentMIMKnobs) -> int:
    """g·(p+gap): the gap grid's cells cut at native resolution (model.img_size at gap 0)."""
    grid = model["img_size"] // model["patch_size"]
    return gap_grid_side(grid, model["patch_size"], knobs.gap)


def check(model: Mapping[str, Any], knobs: LatentMIMKnobs) -> None:
    num_patches = (model["img_size"] // model["patch_size"]) ** 2
    num_masked = num_patches - num_kept(num_patches, knobs.mask_ratio)
    # PatchDisc contrasts an image's masked patches with each other: it needs two of them.
    if num_masked < 2:
        raise ValueError(
            f"mask_ratio: {knobs.mask_ratio:g} masks {num_masked} of {num_patches} patches; "
            "allowed: a ratio that masks at least 2 patches"
        )


CARD = register_card(
    MethodCard(
        name="latent_mim",
        summary="Latent MIM: EMA latent targets of masked patches, PatchDisc, gap grid",
        knobs=LatentMIMKnobs,
        module="workloads.methods.latent_mim",
        check=check,
        train_img_size=train_img_size,
    )
)
