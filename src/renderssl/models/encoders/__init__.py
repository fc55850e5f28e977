"""Encoders: the product of pretraining. Parameter names follow timm / torchvision (2D), Pointcept
SpUNet and the yanx27 PointNet++ (3D)."""

from .pointnet2 import PRESETS as POINTNET2_PRESETS
from .pointnet2 import PointNet2, PointNet2Config
from .resnet import ARCHS as RESNET_ARCHS
from .resnet import BasicBlock, Bottleneck, ResNet, ResNetConfig
from .sparse_unet import PRESETS as SPARSE_UNET_PRESETS
from .sparse_unet import SparseUNet, SparseUNetConfig
from .vit import PRESETS as VIT_PRESETS
from .vit import ViTConfig, VisionTransformer

__all__ = [
    "POINTNET2_PRESETS", "PointNet2", "PointNet2Config", "RESNET_ARCHS", "BasicBlock", "Bottleneck", "ResNet",
    "ResNetConfig", "SPARSE_UNET_PRESETS", "SparseUNet", "SparseUNetConfig", "VIT_PRESETS", "ViTConfig",
    "VisionTransformer",
]
