"""Vision Transformer encoder and MAE decoder, built from timm blocks."""

from workloads.models.mae import MAEDecoder, MaskedAutoencoder
from workloads.models.vit import ViTEncoder

__all__ = ["MAEDecoder", "MaskedAutoencoder", "ViTEncoder"]
