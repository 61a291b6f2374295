"""SBAM's and AMR's knobs (torch-free: see `knobs.py`); the model is in `sbam.py`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from workloads.methods.knobs import MethodCard, MethodKnobs, register_card

AMRScope = Literal["batch", "image"]


class SBAMKnobs(MethodKnobs):
    name: str = "sbam"
    gamma: float = Field(0.75, gt=0.0, lt=1.0, description="masking ratio γ (r of AMR)")
    delta_r: float = Field(0.0, ge=0.0, description="AMR ratio swing Δr; 0 = plain SBAM")
    delta: float = Field(0.5, ge=0.0, le=1.0, description="AMR salience threshold δ")
    amr_scope: AMRScope = Field(
        "batch",
        description="AMR ratio: one per batch (authors' code) or one per image (paper's R_i)",
    )
    noise: float = Field(
        0.5, ge=0.0, description="upper bound of the U[0, noise) added to S; 0 = deterministic"
    )
    norm_pix_loss: bool = Field(True, description="per-patch normalised pixel targets")

    @model_validator(mode="after")
    def _ratio_range_inside_unit_interval(self) -> SBAMKnobs:
        # AMR's ratio sweeps [γ − Δr, γ + Δr]; it must stay a valid masking ratio.
        low, high = self.gamma - self.delta_r, self.gamma + self.delta_r
        if self.delta_r > 0 and not (0.0 < low and high < 1.0):
            limit = min(self.gamma, 1.0 - self.gamma)
            raise ValueError(
                f"delta_r: gamma ± delta_r = {self.gamma:g} ± {self.delta_r:g} leaves (0, 1); "
                f"allowed: 0 <= delta_r < min(gamma, 1 - gamma) = {limit:g}"
            )
        return self


CARD = register_card(
    MethodCard(
        name="sbam",
        summary="Salience-based masking (top ceil(L·γ) by S + noise); AMR ratio when delta_r > 0",
        knobs=SBAMKnobs,
        module="workloads.methods.sbam",
    )
)
