"""ResUNet: the CNN feature network of GNT (and of IBRNet, where it comes from), features at 1/4 resolution.

GNT (VITA-Group/GNT, ``gnt/feature_network.py``, class ``ResUNet``) turns every source view into a dense
feature map that the projector (:mod:`renderssl.models.nerf.projector`) samples where the target rays'
points project. NPS (Sec. 3.1) keeps GNT's feature network. Layout (``B`` = ``base_channels``, GNT: 64):

    conv1   7x7 conv, stride 2, 3 -> B, no bias, reflect padding; bn1 norm; ReLU      1/2   (no max-pool)
    layer1  ``layers[0]`` BasicBlocks, width B,  first block stride 2                  1/4
    layer2  ``layers[1]`` BasicBlocks, width 2B, first block stride 2                  1/8
    layer3  ``layers[2]`` BasicBlocks, width 4B, first block stride 2                  1/16  (no layer4)
    upconv3 bilinear x2 -> conv3x3(4B -> 2B) + norm + ELU;  concat [layer2, up]       1/8
    iconv3  conv3x3(2B + 2B -> 2B) + norm + ELU                                        1/8
    upconv2 bilinear x2 -> conv3x3(2B -> B) + norm + ELU;   concat [layer1, up]       1/4
    iconv2  conv3x3(B + B -> out_channels) + norm + ELU                                1/4
    out_conv 1x1 conv(out_channels -> out_channels), with bias                        1/4

- BasicBlock as torchvision's (two 3x3 convs without bias, norm after each, residual, ReLU), the stride on
  the first conv; a stage's first block has a ``downsample`` (1x1 conv with the stride, no bias, + norm)
  when the stride or the width changes. In GNT every stage has stride 2 (unlike torchvision's ResNet,
  whose layer1 has stride 1 after a max-pool), so every stage's first block has a downsample.
- GNT's defaults (preset ``"gnt"``): ResNet-34's first three stages, ``layers = (3, 4, 6)``,
  ``base_channels = 64`` (64/128/256), ``out_channels = 32`` (GNT's ``coarse_feat_dim``; with GNT's
  ``single_net = True`` one map serves the coarse and the fine level, so there is one output here).
- Norm: ``"instance"`` = ``InstanceNorm2d(affine=True, track_running_stats=False)`` everywhere (GNT):
  each image is normalised by its own statistics, so a view's features do not depend on the other views
  of the batch nor on train / eval mode. ``"batch"`` = ``BatchNorm2d`` with running statistics (our
  choice for the alternative; GNT's commented-out option). GNT's decoder convs always use instance norm;
  here the decoder follows the config (identical for ``"instance"``).
- Convolutions use reflect padding (GNT) with ``padding = (k - 1) // 2``; encoder convs have no bias,
  decoder convs (``upconv*``, ``iconv*``) and ``out_conv`` have one (GNT). Initialisation: PyTorch's
  defaults (GNT has no init code).
- Up-sampling (our choice): GNT's ``upconv`` interpolates by ``scale_factor=2`` with
  ``align_corners=True`` and zero-pads the result to the skip's size. Here the map is resized bilinearly
  straight to the skip's size with ``align_corners=False``, the pixel-centre convention of renderssl's
  cameras, so that a decoder pixel stays over the image area it came from; for an even intermediate size
  this is an exact x2 up-sampling; for an odd one (e.g. 60 x 36 input: 9 -> 5 -> 3 at 1/8 and 1/16) it
  replaces GNT's padding.
- Input: RGB in [0, 1], (N, 3, H, W), as is (GNT's IBRNet-derived loaders divide the 8-bit images by 255
  and the net takes them without mean/std normalisation). H and W must be divisible by 4 (the output is
  exactly (H/4, W/4), so the projector's feature K is the image K scaled by 1/4, ``Cameras.resized``) and
  larger than 16 (reflect padding needs >= 2 pixels at 1/16).

Parameter names are GNT's (``conv1``, ``bn1``, ``layer1..3`` with ``conv1/bn1/conv2/bn2/downsample``,
``upconv3.conv.conv``/``upconv3.conv.bn``, ``iconv3.conv``/``iconv3.bn``, ``upconv2``, ``iconv2``,
``out_conv``), so a GNT feature-network state dict (``feature_net.*`` without the prefix) loads into the
``"gnt"`` preset; ``bn*`` name the norm layers whatever their kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from .presets import apply_preset

PRESETS = {
    # GNT / IBRNet: ResNet-34's first three stages, 32-d features at 1/4 resolution (8.88 M parameters).
    "gnt": dict(layers=(3, 4, 6), base_channels=64, out_channels=32),
    # CPU preset (our choice): one block per stage, a quarter of the widths.
    "tiny": dict(layers=(1, 1, 1), base_channels=16, out_channels=16),
}
NORMS = ("instance", "batch")


@dataclass
class ResUNetConfig:
    preset: str | None = "gnt"  # fills layers / base_channels / out_channels unless given explicitly
    layers: tuple[int, int, int] | None = None  # BasicBlocks in layer1..layer3
    base_channels: int | None = None  # width of layer1; layer2 and layer3 have 2x and 4x
    out_channels: int | None = None  # feature channels of the output map (GNT's coarse_feat_dim)
    norm: str = "instance"  # "instance" (GNT) | "batch"
    in_channels: int = 3

    def __post_init__(self):
        apply_preset(self, PRESETS, "resunet", ("layers", "base_channels", "out_channels"))
        layers = tuple(self.layers)
        if len(layers) != 3 or any(int(n) != n or n < 1 for n in layers):
            raise InputError(f"resunet.layers: expected 3 block counts >= 1 (layer1..layer3), got {self.layers!r}")
        self.layers = tuple(int(n) for n in layers)
        for key in ("base_channels", "out_channels", "in_channels"):
            value = getattr(self, key)
            if int(value) != value or value < 1:
                raise InputError(f"resunet.{key}: must be an integer >= 1, got {value!r}")
            setattr(self, key, int(value))
        if self.norm not in NORMS:
            raise InputError(f"resunet.norm: unknown norm {self.norm!r}; expected one of {NORMS}")


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    return nn.BatchNorm2d(channels)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False, padding_mode="reflect")


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) with a norm after each, plus the shortcut; width = planes."""

    def __init__(self, inplanes: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = make_norm(norm, planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), make_norm(norm, planes))

    def forward(self, x: Tensor) -> Tensor:
        """(N, inplanes, H, W) -> (N, planes, ceil(H / stride), ceil(W / stride))."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ConvNormELU(nn.Module):
    """GNT's decoder ``conv``: kxk conv (bias, reflect padding) -> norm -> ELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, padding_mode="reflect")
        self.bn = make_norm(norm, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(self.bn(self.conv(x)), inplace=True)


class UpConv(nn.Module):
    """GNT's ``upconv``: bilinear resize to the skip's size (pixel-centre aligned), then :class:`ConvNormELU`."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.conv = ConvNormELU(in_channels, out_channels, 3, norm)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """(N, C_in, h, w) -> (N, C_out, *size)."""
        return self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class ResUNet(nn.Module):
    """Source images (N, 3, H, W) in [0, 1] -> feature maps (N, out_channels, H/4, W/4)."""

    stride = 4

    def __init__(self, config: ResUNetConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else ResUNetConfig()
        c, norm = config.base_channels, config.norm
        self.out_channels = config.out_channels
        self.conv1 = nn.Conv2d(config.in_channels, c, 7, stride=2, padding=3, bias=False, padding_mode="reflect")
        self.bn1 = make_norm(norm, c)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(c, c, config.layers[0], norm)
        self.layer2 = self._make_layer(c, 2 * c, config.layers[1], norm)
        self.layer3 = self._make_layer(2 * c, 4 * c, config.layers[2], norm)
        self.upconv3 = UpConv(4 * c, 2 * c, norm)
        self.iconv3 = ConvNormELU(2 * c + 2 * c, 2 * c, 3, norm)
        self.upconv2 = UpConv(2 * c, c, norm)
        self.iconv2 = ConvNormELU(c + c, config.out_channels, 3, norm)
        self.out_conv = nn.Conv2d(config.out_channels, config.out_channels, 1)

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, norm: str) -> nn.Sequential:
        """One stride-2 stage: the first block halves the resolution (and has the downsample)."""
        return nn.Sequential(BasicBlock(inplanes, planes, 2, norm), *(BasicBlock(planes, planes, 1, norm) for _ in range(blocks - 1)))

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.config.in_channels or not x.dtype.is_floating_point:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(f"ResUNet: x must be a float tensor (N, {self.config.in_channels}, H, W), got {got}")
        H, W = x.shape[-2:]
        if H % 4 or W % 4:
            raise InputError(f"ResUNet: x height and width must be divisible by 4 (features at 1/4), got {H}x{W} (HxW)")
        if H <= 16 or W <= 16:
            raise InputError(f"ResUNet: x height and width must be > 16 (reflect padding at 1/16), got {H}x{W} (HxW)")

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1], H and W divisible by 4 -> (N, out_channels, H/4, W/4)."""
        self._check_input(x)
        x = self.relu(self.bn1(self.conv1(x)))  # (N, B, H/2, W/2)
        x1 = self.layer1(x)  # (N, B, H/4, W/4)
        x2 = self.layer2(x1)  # (N, 2B, ceil(H/8), ceil(W/8))
        x3 = self.layer3(x2)  # (N, 4B, ceil(H/16), ceil(W/16))
        x = self.upconv3(x3, x2.shape[-2:])  # (N, 2B, ceil(H/8), ceil(W/8))
        x = self.iconv3(torch.cat([x2, x], dim=1))  # skip first, as GNT; (N, 2B, ceil(H/8), ceil(W/8))
        x = self.upconv2(x, x1.shape[-2:])  # (N, B, H/4, W/4)
        x = self.iconv2(torch.cat([x1, x], dim=1))  # (N, out_channels, H/4, W/4)
        return self.out_conv(x)  # (N, out_channels, H/4, W/4)


__all__ = ["NORMS", "PRESETS", "ResUNet", "ResUNetConfig"]
