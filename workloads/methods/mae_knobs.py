"""MAE's knobs (torch-free: see `knobs.py`); the model is in `mae.py`."""

from __future__ import annotations

from pydantic import Field

from workloads.methods.knobs import MethodCard, MethodKnobs, register_card


class MAEKnobs(MethodKnobs):
    name: str = "mae"
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0, description="share of patches masked")
    norm_pix_loss: bool = Field(True, description="per-patch normalised pixel targets")


CARD = register_card(
    MethodCard(
        name="mae",
        summary="Masked autoencoder: random masking at ratio r, MSE on masked patches",
        knobs=MAEKnobs,
        module="workloads.methods.mae",
    )
)
