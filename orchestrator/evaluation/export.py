"""A pretrained encoder out of mimray: a safetensors file that timm loads as a ViT.

mimray's `ViTEncoder` is built of timm's own parts (`PatchEmbed`, `Block`, LayerNorm with
eps 1e-6, a cls token and a (1, 1+N, D) position embedding that includes the cls position), so
its state dict already has the key names and shapes of timm's `VisionTransformer` with the
same sizes; the export writes the online encoder's weights (the method's declared encoder,
not an EMA copy) under those names and says which timm model to build around them:

    timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=FILE,
        num_classes=0, mean=..., std=..., input_size=...), num_classes=0, global_pool="avg",
        fc_norm=False, **KWARGS)

`num_classes=0` in both places keeps timm's loader strict (it relaxes strictness when the
model's class count differs from the config's) and builds no head; `global_pool="avg"` with
`fc_norm=False` gives what mimray's probes read (the mean of the normed patch tokens; `"token"`
gives the cls token); mean/std are mimray's input normalisation, so
`timm.data.resolve_data_config` reports them. NAME is a registered timm ViT with the same
width, depth and heads, and KWARGS list whatever else differs (image size, patch size, MLP
ratio, channels; every size for a non-standard encoder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from orchestrator.config import ConfigError
from workloads.checkpoint import read_checkpoint_state
from workloads.evaluation.heads import load_encoder
from workloads.model_input import IMAGE_MEAN, IMAGE_STD

# timm's ViT families (timm/models/vision_transformer.py): (embed_dim, depth, num_heads).
VIT_FAMILIES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
FALLBACK = "vit_base_patch16_224"  # for sizes outside the families: every size as a kwarg
FALLBACK_SIZES = {"patch_size": 16, "img_size": 224}
# Always passed: no head, and the pooled features mimray's probes use.
FEATURE_KWARGS: dict[str, Any] = {"num_classes": 0, "global_pool": "avg", "fc_norm": False}


@dataclass(frozen=True)
class TimmTarget:
    """The timm model that holds an exported encoder: `create_model(name, **kwargs)`."""

    name: str
    kwargs: dict[str, Any]
    file: str
    overlay: dict[str, Any]

    def create_model_call(self) -> str:
        """The Python line that loads the export (what the CLI prints)."""
        arguments = [
            repr(self.name),
            "pretrained=True",
            f"pretrained_cfg_overlay={self.overlay!r}",
            *(f"{key}={value!r}" for key, value in self.kwargs.items()),
        ]
        return f"timm.create_model({', '.join(arguments)})"


def timm_target(model_spec: dict[str, Any], file: str) -> TimmTarget:
    """The registered timm ViT name and the kwargs that make it `model_spec`'s encoder."""
    import timm

    img, patch = model_spec["img_size"], model_spec["patch_size"]
    sizes = (model_spec["embed_dim"], model_spec["depth"], model_spec["num_heads"])
    family = next((name for name, dims in VIT_FAMILIES.items() if dims == sizes), None)
    kwargs: dict[str, Any] = {}
    exact = f"vit_{family}_patch{patch}_{img}"
    if family is not None and timm.is_model(exact):
        name = exact
    elif family is not None and timm.is_model(f"vit_{family}_patch{patch}_224"):
        name, kwargs["img_size"] = f"vit_{family}_patch{patch}_224", img
    elif family is not None:
        name = f"vit_{family}_patch16_224"
        kwargs.update(img_size=img, patch_size=patch)
    else:
        name = FALLBACK
        kwargs.update(img_size=img, patch_size=patch)
        kwargs.update(embed_dim=sizes[0], depth=sizes[1], num_heads=sizes[2])
    if model_spec.get("mlp_ratio", 4.0) != 4.0:
        kwargs["mlp_ratio"] = model_spec["mlp_ratio"]
    in_chans = model_spec.get("in_chans", 3)
    if in_chans != 3:
        kwargs["in_chans"] = in_chans
    overlay = {
        "file": file,
        "num_classes": 0,
        "mean": IMAGE_MEAN,
        "std": IMAGE_STD,
        "input_size": (in_chans, img, img),
    }
    return TimmTarget(name, {**kwargs, **FEATURE_KWARGS}, file, overlay)


def encoder_state(checkpoint_uri: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The online encoder's weights of a pretrain checkpoint (timm's key names) and the
    checkpoint's model spec."""
    try:
        checkpoint = read_checkpoint_state(checkpoint_uri)
    except FileNotFoundError:
        raise ConfigError(
            f"MODEL: no mimray checkpoint at {checkpoint_uri}; allowed: a checkpoint folder "
            "(holding checkpoint.pt) or what `mimray eval` accepts"
        ) from None
    spec = checkpoint["spec"]
    method = spec.get("method", {}).get("name")
    encoder = load_encoder(spec["model"], checkpoint["model"], method=method)
    # safetensors stores plain contiguous tensors; a frozen Parameter (pos_embed) is one too.
    state = {name: value.detach().contiguous() for name, value in encoder.state_dict().items()}
    return state, spec["model"]


def export_to_timm(checkpoint_uri: str, out: str) -> TimmTarget:
    """Write the checkpoint's encoder to `out` (safetensors) and a `.json` beside it naming
    the timm model; returns that model."""
    from safetensors.torch import save_file

    state, model_spec = encoder_state(checkpoint_uri)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = timm_target(model_spec, str(path.resolve()))
    save_file(state, str(path), metadata={"source": checkpoint_uri, "timm_model": target.name})
    record = {"timm_model": target.name, "kwargs": target.kwargs, "source": checkpoint_uri}
    path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return target
