"""PCAE's knobs and their check against the model section (torch-free: see `knobs.py`); the
model is in `pcae.py`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator

from workloads.methods.knobs import MethodCard, MethodKnobs, register_card


class PCAEKnobs(MethodKnobs):
    name: str = "pcae"
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0, description="share of patches masked")
    keep_ratio: float = Field(
        0.5, gt=0.0, le=1.0, description="share of teacher tokens kept at each drop stage"
    )
    drop_after: list[int] = Field(
        default_factory=lambda: [0],
        description="teacher block indices after which redundant tokens are dropped",
    )
    momentum: float = Field(
        0.996, ge=0.0, le=1.0, description="base EMA momentum of the teacher (cosine to 1)"
    )

    @field_validator("drop_after")
    @classmethod
    def _distinct_block_indices(cls, drop_after: list[int]) -> list[int]:
        if any(index < 0 for index in drop_after) or len(set(drop_after)) != len(drop_after):
            raise ValueError(
                "block indices must be distinct and >= 0; "
                "allowed: a list of distinct teacher block indices below model.depth"
            )
        return drop_after


def check(model: Mapping[str, Any], knobs: PCAEKnobs) -> None:
    too_deep = [index for index in knobs.drop_after if index >= model["depth"]]
    if too_deep:
        raise ValueError(
            f"drop_after: block indices {too_deep} are not below model.depth {model['depth']}; "
            f"allowed: indices in [0, {model['depth'] - 1}]"
        )


CARD = register_card(
    MethodCard(
        name="pcae",
        summary="EMA teacher on masked patches drops redundant tokens; 1-cos on the kept ones",
        knobs=PCAEKnobs,
        module="workloads.methods.pcae",
        check=check,
    )
)
