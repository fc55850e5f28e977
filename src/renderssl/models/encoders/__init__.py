"""Encoders: the product of pretraining. Parameter names follow timm / torchvision."""

from .vit import PRESETS as VIT_PRESETS
from .vit import ViTConfig, VisionTransformer
from .resnet import ARCHS as RESNET_ARCHS
from .resnet import BasicBlock, Bottleneck, ResNet, ResNetConfig

__all__ = ["VIT_PRESETS", "ViTConfig", "VisionTransformer", "RESNET_ARCHS", "BasicBlock", "Bottleneck", "ResNet", "ResNetConfig"]
