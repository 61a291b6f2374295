"""Vision Transformer encoder and the decoders' shared set-up, built from timm blocks."""

from workloads.models.decoder import SinCosDecoder
from workloads.models.mae import MAEDecoder, MaskedAutoencoder
from workloads.models.vit import ViTEncoder

__all__ = ["MAEDecoder", "MaskedAutoencoder", "SinCosDecoder", "ViTEncoder"]
