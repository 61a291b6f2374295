"""MAE (He et al. 2022): random masking, encoder on visible patches, masked-patch MSE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from workloads.methods import register_method
from workloads.methods.base import Method, MethodOutput, PretrainModel
from workloads.methods.mae_knobs import CARD, MAEKnobs
from workloads.models.mae import MaskedAutoencoder, mae_from_spec
from workloads.models.vit import ViTEncoder


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


METHOD = register_method(Method(CARD, build=build, model=MAEMethod))
