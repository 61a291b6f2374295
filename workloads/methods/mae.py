"""MAE (He et al. 2022): random masking, encoder on visible patches, masked-patch MSE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field

from workloads.methods import register_method
from workloads.methods.base import Method, MethodKnobs, MethodOutput, PretrainModel
from workloads.models.mae import MaskedAutoencoder, mae_from_spec
from workloads.models.vit import ViTEncoder


class MAEKnobs(MethodKnobs):
    name: str = "mae"
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0, description="share of patches masked")
    norm_pix_loss: bool = Field(True, description="per-patch normalised pixel targets")


class MAEMethod(PretrainModel):
    """Adapts MaskedAutoencoder to the method contract (loss + loggable scalars)."""

    # MaskedAutoencoder sits one level down, so MAE checkpoints hold `mae.encoder.*`.
    encoder_key = "mae.encoder"

    def __init__(self, mae: MaskedAutoencoder) -> None:
        super().__init__()
        self.mae = mae

    @property
    def encoder(self) -> ViTEncoder:
        return self.mae.encoder

    def forward(self, imgs: torch.Tensor) -> MethodOutput:
        out = self.mae(imgs)
        return MethodOutput(loss=out.loss, metrics={"mask_ratio": self.mae.mask_ratio})

    def no_weight_decay(self) -> set[str]:
        return {f"mae.{name}" for name in self.mae.no_weight_decay()}


def build(model: Mapping[str, Any], knobs: MAEKnobs) -> MAEMethod:
    return MAEMethod(
        mae_from_spec(model, mask_ratio=knobs.mask_ratio, norm_pix_loss=knobs.norm_pix_loss)
    )


METHOD = register_method(
    Method(
        name="mae",
        summary="Masked autoencoder: random masking at ratio r, MSE on masked patches",
        knobs=MAEKnobs,
        build=build,
        model=MAEMethod,
    )
)
