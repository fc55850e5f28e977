"""Dropout whose random mask costs a fraction of torch's on the CPU.

``nn.Dropout`` draws its mask with ``bernoulli_``, about 10-14 ns per element on this CPU (one
floating-point draw and compare each): in an NPS step, whose transformers drop 10% of every
activation and attention weight (GNT's default), dropout was 36% of the step. :class:`Dropout`
thresholds 16-bit random integers instead, four per 64-bit draw: forward + backward took 7.7 ns per
element against 14.0 for ``nn.Dropout`` (1.8x, one thread, 262k elements, same process).

Our choice, the one difference: the drop probability is rounded to a multiple of 1/65536 (0.1 becomes
0.100006). The kept values are scaled by 1 / (1 - p) with the rounded p, so the expectation is
unchanged. ``p = 0`` and eval mode are the identity, as in ``nn.Dropout``; tensors off the CPU use
``F.dropout`` (the mask's speed was measured on the CPU only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

_LEVELS = 1 << 16


def keep_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
    """Bool mask of ``shape``, each entry False with probability round(p * 65536) / 65536, independently."""
    count = shape.numel()
    lo, hi = torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max
    words = torch.randint(lo, hi, ((count + 3) // 4,), dtype=torch.int64, device=device, generator=generator)
    halves = words.view(torch.int16)[:count]  # (count,) uniform over the int16 range
    return (halves >= round(p * _LEVELS) - _LEVELS // 2).view(shape)


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` (see the module docstring)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= float(p) < 1.0 or round(float(p) * _LEVELS) >= _LEVELS:
            raise InputError(f"Dropout: p must be in [0, 1 - 2^-17), got {p}")
        self.p = float(p)
        self.scale = 1.0 / (1.0 - round(self.p * _LEVELS) / _LEVELS)  # 1 / (1 - the rounded p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":  # measured on the CPU only; elsewhere torch's fused dropout
            return F.dropout(x, self.p, training=True)
        keep = keep_mask(x.shape, self.p, x.device)  # (*x.shape,) bool
        return x * keep.to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"
