"""SparseUNet (Pointcept's SpUNet-v1m1, the MinkUNet layout PonderV2 pretrains) on pure-torch sparse
convolutions (:mod:`.sparse_conv`).

Layout, names and shapes follow Pointcept ``SpUNetBase`` so that a state dict loads there:

* ``conv_input``: SubMConv3d(in, base, k=5) + BN + ReLU at the input voxels;
* per stage s: ``down.{s}`` SparseConv3d(k=2, stride=2) + BN + ReLU, ``enc.{s}.block{i}`` BasicBlocks
  (two 3x3x3 SubMConv3d + BN, residual, ``proj`` = 1x1x1 SubMConv3d + BN when the width changes);
* decoder, deepest first: ``up.{s}`` SparseInverseConv3d(k=2) + BN + ReLU back to the stage's input
  voxels, concatenation with the skip features, ``dec.{s}.block{i}`` BasicBlocks;
* ``final``: SubMConv3d(k=1, bias) to ``num_classes`` when > 0; with 0 the model is an encoder whose
  per-voxel features have ``channels[-1]`` (96 for the base preset) dimensions.

BatchNorm1d uses Pointcept's eps 1e-3 and momentum 0.01. Initialisation as Pointcept: truncated normal
(std 0.02) on submanifold convs, BN weight 1 / bias 0; strided and inverse convs keep the conv default.

Input: a flat batch of clouds (``points`` (N, 3), ``features`` (N, C), ``offset`` (B,) cumulative counts).
Choices where the papers are silent: points are voxelised at ``grid_size`` with coordinates
floor((p - cloud minimum) / grid_size); points sharing a voxel are averaged (Pointcept's data pipeline
grid-samples first, so its voxels hold one point; averaging gives the same result then and a sensible
one otherwise); every point reads its voxel's output feature.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...data.points import grid_coordinates, offset_to_batch
from ...errors import InputError, check_finite, check_shape
from .presets import apply_preset
from .sparse_conv import (
    SparseConv3d, SparseInverseConv3d, SparseSequential, SparseTensor, SubMConv3d, check_coordinate_range,
    pack_keys,
)

PRESETS = {
    # Pointcept / PonderV2 SpUNet-v1m1: 96-d point features, about 39 M parameters with the ScanNet head.
    "base": dict(base_channels=32, channels=(32, 64, 128, 256, 256, 128, 96, 96), layers=(2, 3, 4, 6, 2, 2, 2, 2)),
    # CPU preset: the same four stages, one block each, a quarter of the widths.
    "small": dict(base_channels=16, channels=(16, 32, 64, 64, 64, 48, 32, 32), layers=(1, 1, 1, 1, 1, 1, 1, 1)),
}
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


@dataclass
class SparseUNetConfig:
    preset: str | None = "base"  # fills base_channels / channels / layers unless given explicitly
    in_channels: int = 6  # per-point features, e.g. colour + normal (PonderV2)
    num_classes: int = 0  # 0: encoder, features of channels[-1] dims
    base_channels: int | None = None
    channels: tuple[int, ...] | None = None  # 2 * stages widths: encoder stages, then decoder stages
    layers: tuple[int, ...] | None = None  # blocks per stage, same order
    grid_size: float = 0.02  # voxel edge in scene units (metres)

    def __post_init__(self):
        apply_preset(self, PRESETS, "sparse_unet", ("base_channels", "channels", "layers"))
        self.channels, self.layers = tuple(int(c) for c in self.channels), tuple(int(n) for n in self.layers)
        if len(self.channels) != len(self.layers) or len(self.layers) % 2 or not self.layers:
            raise InputError(f"sparse_unet: channels {self.channels} and layers {self.layers} must have the same even length")
        if min(self.channels) < 1 or self.base_channels < 1 or self.in_channels < 1 or min(self.layers) < 0:
            raise InputError("sparse_unet: widths and in_channels must be >= 1 and layers >= 0")
        if not self.grid_size > 0:
            raise InputError(f"sparse_unet.grid_size: must be > 0, got {self.grid_size}")
        if self.num_classes < 0:
            raise InputError(f"sparse_unet.num_classes: must be >= 0, got {self.num_classes}")

    @property
    def num_stages(self) -> int:
        return len(self.layers) // 2

    @property
    def out_channels(self) -> int:
        return self.num_classes if self.num_classes > 0 else self.channels[-1]


def norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    """Two 3x3x3 submanifold convs with BN, plus the (projected) input; ReLU after the sum."""

    sparse = True  # SparseSequential hands it the SparseTensor

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        if in_channels == channels:
            self.proj = SparseSequential(nn.Identity())
        else:
            self.proj = SparseSequential(SubMConv3d(in_channels, channels, kernel_size=1), norm(channels))
        self.conv1 = SubMConv3d(in_channels, channels, kernel_size=3)
        self.bn1 = norm(channels)
        self.relu = nn.ReLU()
        self.conv2 = SubMConv3d(channels, channels, kernel_size=3)
        self.bn2 = norm(channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.relu(self.bn1(self.conv1(x).features))  # (N, C)
        out = self.bn2(self.conv2(x.replace_features(out)).features)
        return x.replace_features(self.relu(out + self.proj(x).features))


def blocks(in_channels: int, channels: int, count: int) -> SparseSequential:
    return SparseSequential(OrderedDict(
        (f"block{i}", BasicBlock(in_channels if i == 0 else channels, channels)) for i in range(count)))


class SparseUNet(nn.Module):
    def __init__(self, config: SparseUNetConfig | None = None):
        super().__init__()
        cfg = config if config is not None else SparseUNetConfig()
        self.config = cfg
        self.in_channels, self.out_channels = cfg.in_channels, cfg.out_channels
        ch, n = cfg.channels, cfg.num_stages
        self.conv_input = SparseSequential(SubMConv3d(cfg.in_channels, cfg.base_channels, kernel_size=5),
                                           norm(cfg.base_channels), nn.ReLU())
        self.down, self.enc, self.up, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        enc_channels, dec_channels = cfg.base_channels, ch[-1]
        for s in range(n):
            self.down.append(SparseSequential(SparseConv3d(enc_channels, ch[s], kernel_size=2, stride=2),
                                              norm(ch[s]), nn.ReLU()))
            self.enc.append(blocks(ch[s], ch[s], cfg.layers[s]))
            # up[s] maps stage s's output width back to stage s's input voxels; dec[s] runs there.
            self.up.append(SparseSequential(SparseInverseConv3d(ch[len(ch) - s - 2], dec_channels, kernel_size=2, stride=2),
                                            norm(dec_channels), nn.ReLU()))
            self.dec.append(blocks(dec_channels + enc_channels, dec_channels, cfg.layers[len(ch) - s - 1]))
            enc_channels, dec_channels = ch[s], ch[len(ch) - s - 2]
        self.final = SubMConv3d(ch[-1], cfg.num_classes, kernel_size=1, bias=True) if cfg.num_classes > 0 else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, SubMConv3d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- voxels ----------------------------------------------------------------------------------
    def voxelize(self, points: Tensor, features: Tensor, offset: Tensor) -> tuple[SparseTensor, Tensor]:
        """Average the points of each voxel. Returns the voxel tensor and each point's voxel row (N,)."""
        check_shape("SparseUNet points", points, None, 3)
        check_shape("SparseUNet features", features, points.shape[0], self.in_channels)
        check_finite("SparseUNet points", points)
        batch = offset_to_batch(offset)  # (N,)
        if batch.shape[0] != points.shape[0]:
            raise InputError(f"SparseUNet: offset counts {int(offset[-1])} points, points has {points.shape[0]}")
        coords = grid_coordinates(points, self.config.grid_size, offset)  # (N, 3)
        check_coordinate_range(coords, batch)
        keys, inverse = pack_keys(coords, batch).unique(return_inverse=True)  # (M,), (N,)
        counts = torch.zeros(len(keys), dtype=features.dtype, device=features.device).index_add_(
            0, inverse, torch.ones_like(inverse, dtype=features.dtype))  # (M,)
        voxel_features = features.new_zeros(len(keys), features.shape[1]).index_add_(0, inverse, features) / counts[:, None]
        first = torch.full((len(keys),), points.shape[0], dtype=torch.int64, device=points.device)
        first.scatter_reduce_(0, inverse, torch.arange(points.shape[0], device=points.device), "amin")  # (M,)
        return SparseTensor(voxel_features, coords[first], batch[first]), inverse

    def forward_sparse(self, x: SparseTensor) -> SparseTensor:
        """Per-voxel features at the input voxels."""
        x = self.conv_input(x)
        skips = [x]
        for s in range(self.config.num_stages):
            x = self.enc[s](self.down[s](x))
            skips.append(x)
        x = skips.pop()
        for s in reversed(range(self.config.num_stages)):
            x = self.up[s](x)
            skip = skips.pop()
            x = self.dec[s](x.replace_features(torch.cat([x.features, skip.features], dim=1)))
        return self.final(x) if self.final is not None else x

    def forward(self, points: Tensor, features: Tensor, offset: Tensor) -> Tensor:
        """(N, 3) points, (N, C) features, (B,) offsets -> (N, out_channels) per-point features."""
        voxels, inverse = self.voxelize(points, features, offset)
        return self.forward_sparse(voxels).features[inverse]


def build_sparse_unet(preset: str = "base", **overrides) -> SparseUNet:
    return SparseUNet(SparseUNetConfig(preset=preset, **overrides))


__all__ = ["BasicBlock", "PRESETS", "SparseUNet", "SparseUNetConfig", "build_sparse_unet"]
