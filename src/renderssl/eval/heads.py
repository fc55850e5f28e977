"""Downstream heads put on a (pretrained) encoder: a linear classifier and light dense heads.

Design choices
--------------
LinearClassifier (MAE's linear probe)
  ``BatchNorm1d(D, affine=False, eps=1e-6)`` then ``Linear(D, K)`` on the encoder's (B, D) class-token
  feature. The parameter-free BatchNorm whitens the frozen features per dimension (MAE found this
  essential for its probe) and can be folded into the Linear afterwards, so the probe stays linear.
  The Linear weight starts from a truncated normal with std 0.01 and the bias at 0 (MAE's linprobe).
  The same head serves fine-tuning, so both modes classify the same feature.
Dense heads (SegmentationHead, DepthHead) share one light trunk on the (B, D, gh, gw) patch-feature map:
  ``1x1 conv D -> C`` (C = 128 by default) -> bilinear x2 -> ``3x3 conv C -> C (no bias) + BatchNorm +
  ReLU`` -> ``1x1 conv C -> out`` -> bilinear to the requested (H, W).
  The brief's order upsamples the 128 channels to full resolution and then applies the 1x1 output conv;
  here the 1x1 conv comes first. Both orders compute the same function (a 1x1 conv mixes channels per
  pixel, bilinear interpolation mixes pixels per channel with weights summing to 1, so they commute,
  bias included), but only ``out`` channels instead of 128 are interpolated to full resolution.
  The head is deliberately small (about 128 * (D + 9 * 128 + out) weights) so that downstream scores
  measure the encoder, not the head. Interpolation uses ``align_corners=False`` (pixel centres).
DepthHead
  The trunk predicts log depth ``l`` (B, 1, H, W); ``forward`` returns ``exp(l)``, so the depth is
  positive and metric without clamping, and a loss on ``l`` is scale-relative (an error of x% costs the
  same at 1 m and at 10 m). ``init_depth`` sets the output bias to ``log(init_depth)``: the untrained
  head predicts that depth everywhere (the downstream trainer passes the geometric mean of the training
  depths, the way a classifier's bias can start at the class prior).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

HEAD_CHANNELS = 128


class LinearClassifier(nn.Module):
    """MAE linear probe: parameter-free BatchNorm then Linear. (B, D) -> (B, K) logits."""

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(embed_dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: Tensor) -> Tensor:
        if features.ndim != 2:
            raise InputError(f"LinearClassifier: expected (B, D) features, got {tuple(features.shape)}")
        return self.fc(self.norm(features))


class DenseTrunk(nn.Module):
    """The light trunk shared by the dense heads. (B, D, gh, gw) -> (B, out, H, W) at the requested size."""

    def __init__(self, embed_dim: int, out_channels: int, channels: int = HEAD_CHANNELS):
        super().__init__()
        self.reduce = nn.Conv2d(embed_dim, channels, kernel_size=1)
        self.refine = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.predict = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        if features.ndim != 4:
            raise InputError(f"dense head: expected (B, D, gh, gw) features, got {tuple(features.shape)}")
        x = self.reduce(features)  # (B, C, gh, gw)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)  # (B, C, 2gh, 2gw)
        x = self.predict(self.refine(x))  # (B, out, 2gh, 2gw)
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)  # (B, out, H, W)


class SegmentationHead(nn.Module):
    """Per-pixel class logits. (B, D, gh, gw), (H, W) -> (B, K, H, W)."""

    def __init__(self, embed_dim: int, num_classes: int, channels: int = HEAD_CHANNELS):
        super().__init__()
        self.num_classes = num_classes
        self.trunk = DenseTrunk(embed_dim, num_classes, channels)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        return self.trunk(features, size)


class DepthHead(nn.Module):
    """Positive metric depth from predicted log depth. (B, D, gh, gw), (H, W) -> (B, 1, H, W) metres."""

    def __init__(self, embed_dim: int, channels: int = HEAD_CHANNELS, init_depth: float = 1.0):
        super().__init__()
        if not init_depth > 0:
            raise InputError(f"DepthHead: init_depth must be > 0, got {init_depth}")
        self.trunk = DenseTrunk(embed_dim, 1, channels)
        nn.init.constant_(self.trunk.predict.bias, math.log(init_depth))

    def log_depth(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, 1, H, W) natural log of the depth in metres (what losses should compare)."""
        return self.trunk(features, size)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        return self.log_depth(features, size).exp()


__all__ = ["DenseTrunk", "DepthHead", "HEAD_CHANNELS", "LinearClassifier", "SegmentationHead"]
