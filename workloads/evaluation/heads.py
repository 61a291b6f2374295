"""The pretrained encoder, and the classifiers built on it for linear probing and fine-tuning.

Follows the MAE recipe: the linear probe is BatchNorm without affine parameters (a feature
standardiser) + Linear on frozen features; fine-tuning trains the whole encoder under a
LayerNorm + Linear head with layer-wise learning-rate decay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from workloads.methods import get_method, method_names
from workloads.models.vit import ViTEncoder, encoder_from_spec

Pool = Literal["mean", "cls"]
ENCODER_PREFIX = "encoder."


def load_encoder(
    model_spec: Mapping[str, Any],
    model_state: Mapping[str, Tensor] | None,
    init_seed: int = 0,
    method: str | None = None,
) -> ViTEncoder:
    """The online encoder of a pretrain checkpoint's model state; with no state, a randomly
    initialised encoder (the baseline).

    The weights are those under the key prefix the method's model declares
    (`PretrainModel.encoder_key`: `encoder`, or `mae.encoder` for MAE); EMA copies live
    under other names. Without `method`, the one declared prefix the state holds.
    """
    torch.manual_seed(init_seed)
    encoder = encoder_from_spec(model_spec)
    if model_state is None:
        return encoder
    prefix = f"{get_method(method).model.encoder_key}." if method else encoder_prefix(model_state)
    encoder.load_state_dict(
        {
            name.removeprefix(prefix): value
            for name, value in model_state.items()
            if name.startswith(prefix)
        }
    )
    return encoder


def encoder_prefix(model_state: Mapping[str, Tensor]) -> str:
    """The key prefix of the online encoder, e.g. "encoder." or "mae.encoder.": of the
    prefixes the registered methods declare, the one `model_state` holds."""
    declared = {f"{get_method(name).model.encoder_key}." for name in method_names()}
    held = sorted(p for p in declared if any(name.startswith(p) for name in model_state))
    if len(held) != 1:
        raise ValueError(
            f"checkpoint holds online encoder weights under {held or 'none'} of the declared "
            f"prefixes {sorted(declared)}; is it a mimray pretrain checkpoint?"
        )
    return held[0]


def pool_tokens(latent: Tensor, pool: Pool) -> Tensor:
    """(B, 1+N, D) encoder output -> (B, D): the cls token, or the mean of the patch tokens."""
    return latent[:, 0] if pool == "cls" else latent[:, 1:].mean(dim=1)


class LinearProbe(nn.Module):
    """BatchNorm(affine=False) + Linear on frozen features; `generator` draws the head's
    initial weights (None: torch's global generator)."""

    def __init__(
        self, dim: int, num_classes: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01, generator=generator)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.norm(features))  # (B, C)


class FineTuneClassifier(nn.Module):
    """The whole encoder, pooled, under LayerNorm + Linear (MAE's fine-tuning head)."""

    def __init__(
        self,
        encoder: ViTEncoder,
        num_classes: int,
        pool: Pool = "mean",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pool = pool
        self.fc_norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6)
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5, generator=generator)
        nn.init.zeros_(self.head.bias)

    def forward(self, imgs: Tensor) -> Tensor:
        return self.head(self.fc_norm(pool_tokens(self.encoder(imgs), self.pool)))  # (B, C)


def layer_id(name: str, num_blocks: int) -> int:
    """Depth of a parameter for layer-wise decay: embeddings 0, block i -> i + 1, head last."""
    if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return num_blocks + 1


def layer_decay_param_groups(
    model: FineTuneClassifier, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups whose `lr_scale` is layer_decay^(depth - layer): the head learns at the
    full rate, the patch embedding slowest. No decay on biases, norms and tokens."""
    num_blocks = len(model.encoder.blocks)
    skip = {f"{ENCODER_PREFIX}{name}" for name in model.encoder.no_weight_decay()}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = layer_id(name, num_blocks)
        decays = param.ndim > 1 and name not in skip
        group = groups.setdefault(
            (depth, decays),
            {
                "params": [],
                "weight_decay": weight_decay if decays else 0.0,
                "lr_scale": layer_decay ** (num_blocks + 1 - depth),
            },
        )
        group["params"].append(param)
    return list(groups.values())
