"""The one tiny ViT of the test suite: small enough that a fit is start-up, not compute.

32x32 images in 4-pixel patches (64 patches, so K in {2, 4} divides them), width 32, depth 2.
Tests that need it as `--set` overrides, a spec mapping or YAML take it from here.
"""

from __future__ import annotations

import json

TINY_MODEL_SPEC: dict[str, int] = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}

# The same model as `--set` overrides (`model.embed_dim=32`, ...).
TINY_MODEL: list[str] = [f"model.{key}={value}" for key, value in TINY_MODEL_SPEC.items()]


def tiny_model(**changes: int) -> dict[str, int]:
    """The tiny model's spec, with `changes` (e.g. img_size=16) applied."""
    unknown = set(changes) - set(TINY_MODEL_SPEC)
    if unknown:
        raise KeyError(f"not a tiny-model key: {sorted(unknown)}")
    return {**TINY_MODEL_SPEC, **changes}


def tiny_model_yaml(**changes: int) -> str:
    """The model as a YAML flow mapping, for sweep files written in tests (JSON is YAML)."""
    return json.dumps(tiny_model(**changes))
