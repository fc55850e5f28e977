"""Encoders: the product of pretraining. Parameter names follow timm / torchvision."""

from .vit import PRESETS as VIT_PRESETS
from .vit import ViTConfig, VisionTransformer

__all__ = ["VIT_PRESETS", "ViTConfig", "VisionTransformer"]
