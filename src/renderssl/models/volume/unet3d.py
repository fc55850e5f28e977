"""PonderV2's projection network ``UNet3D-v1m2``: a small dense 3D UNet on the densified volume.

PonderV2 (indoor config: ``UNet3D-v1m2``, in 96 -> out 128, f_maps 32, 4 levels, layer order "bcr") is
wolny/pytorch-3dunet's ``Abstract3DUNet`` with ``basic_module=SingleConv``. We reproduce that module
(checked against the official ``ponder/models/ponder/unet3d.py``), not pytorch-3dunet's default UNet3D:

- every level is ONE ``SingleConv`` with order "bcr": BatchNorm3d(in) -> Conv3d(3x3x3, padding 1, no
  bias: a norm is present) -> ReLU. (pytorch-3dunet's plain ``UNet3D`` / PonderV2's ``UNet3D-v1m1`` use
  ``DoubleConv``, two SingleConvs; v1m2 uses one.)
- encoder: level 0 is a SingleConv in -> f_0; level k > 0 is MaxPool3d(2) then SingleConv f_{k-1} -> f_k,
  with f_k = f_maps * 2^k (32, 64, 128, 256).
- decoder, deepest first: ConvTranspose3d(f_k -> f_{k-1}, kernel 3, stride 2, padding 1, with bias) up
  to the skip's exact size, **summed** with the skip (pytorch-3dunet joins by summation and upsamples by
  transposed convolution whenever the basic module is not DoubleConv, which is v1m2's case), then a
  SingleConv f_{k-1} -> f_{k-1}.
- a final 1x1x1 Conv3d (with bias) f_0 -> out_channels, no activation (``is_segmentation=False``).

Sizes: pooling uses ``ceil_mode=True`` (our change; identical for even sizes) and the transposed
convolution is given the skip's size as ``output_size``, so any grid size works and the output has the
input's spatial size (with floor pooling an odd size cannot be recovered by the stride-2 upsampling).
Initialisation: PyTorch defaults (pytorch-3dunet sets none).
"""

from __future__ import annotations

from torch import Tensor, nn

from ...errors import InputError


class SingleConv(nn.Sequential):
    """pytorch-3dunet ``SingleConv`` with order "bcr": BatchNorm3d -> Conv3d(k, no bias) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.add_module("batchnorm", nn.BatchNorm3d(in_channels))
        self.add_module("conv", nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False))
        self.add_module("ReLU", nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """Optional MaxPool3d(2) (ceil mode) then a SingleConv."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool):
        super().__init__()
        self.pooling = nn.MaxPool3d(kernel_size=2, ceil_mode=True) if pool else None
        self.basic_module = SingleConv(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.pooling is not None:
            x = self.pooling(x)  # (B, C, ceil(Z/2), ceil(Y/2), ceil(X/2))
        return self.basic_module(x)


class Decoder(nn.Module):
    """ConvTranspose3d(k 3, stride 2) to the skip's size, sum with the skip, SingleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsampling = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.basic_module = SingleConv(out_channels, out_channels)

    def forward(self, skip: Tensor, x: Tensor) -> Tensor:
        x = self.upsampling(x, output_size=skip.shape[2:])  # (B, C_skip, Z, Y, X) of the skip
        return self.basic_module(skip + x)


class UNet3D(nn.Module):
    """(B, in_channels, Z, Y, X) -> (B, out_channels, Z, Y, X); PonderV2's UNet3D-v1m2 (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, f_maps: int = 32, levels: int = 4):
        super().__init__()
        if min(in_channels, out_channels, f_maps) < 1:
            raise InputError(f"UNet3D: in_channels, out_channels and f_maps must be >= 1, got {in_channels}, {out_channels}, {f_maps}")
        if levels < 1:
            raise InputError(f"UNet3D: levels must be >= 1, got {levels}")
        widths = [f_maps * 2**k for k in range(levels)]  # 32, 64, 128, 256
        self.in_channels, self.out_channels, self.widths = in_channels, out_channels, tuple(widths)
        self.encoders = nn.ModuleList(
            Encoder(in_channels if k == 0 else widths[k - 1], widths[k], pool=k > 0) for k in range(levels)
        )
        self.decoders = nn.ModuleList(Decoder(widths[k], widths[k - 1]) for k in range(levels - 1, 0, -1))
        self.final_conv = nn.Conv3d(widths[0], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[1] != self.in_channels:
            raise InputError(f"UNet3D: x must be (B, {self.in_channels}, Z, Y, X), got {tuple(getattr(x, 'shape', ()))}")
        skips = []
        for encoder in self.encoders:  # a handful of levels
            x = encoder(x)  # (B, f_k, Z / 2^k, Y / 2^k, X / 2^k)
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1])):
            x = decoder(skip, x)  # (B, f_{k-1}, size of level k-1)
        return self.final_conv(x)  # (B, out_channels, Z, Y, X)
