"""Masks for masked modelling.

``random_masking`` is MAE's: per sample, noise ~ U(0, 1) over the L patches, ids_shuffle = argsort(noise),
ids_restore = argsort(ids_shuffle), keep the first int(L (1 - ratio)); mask is 1 for removed patches, in
the original order. Noise comes from the caller's generator so a training step is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError


@dataclass
class PatchMask:
    ids_keep: Tensor  # (B, n_keep) indices of visible patches, in shuffled order
    ids_restore: Tensor  # (B, L) position of each original patch in the shuffled order
    mask: Tensor  # (B, L) 1 = removed, 0 = visible, original order

    def gather_visible(self, tokens: Tensor) -> Tensor:
        """(B, L, D) -> (B, n_keep, D)."""
        return torch.gather(tokens, 1, self.ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))


def random_masking(batch: int, length: int, ratio: float, generator: torch.Generator | None = None, device=None) -> PatchMask:
    """MAE random masking of ``length`` patches for ``batch`` samples, removing ``ratio`` of them."""
    if not 0.0 <= ratio < 1.0:
        raise InputError(f"mask ratio must be in [0, 1), got {ratio}")
    n_keep = int(length * (1 - ratio))
    noise = torch.rand(batch, length, generator=generator)  # (B, L), drawn on the CPU generator
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, length)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return PatchMask(ids_shuffle[:, :n_keep].to(device), ids_restore.to(device), mask.to(device))


def unshuffle(tokens: Tensor, ids_restore: Tensor) -> Tensor:
    """(B, L, D) tokens in shuffled order -> original patch order."""
    return torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, tokens.shape[-1]))


def patchify(images: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), each patch flattened as (p, p, C) (MAE's 'nchpwq->nhwpqc')."""
    B, C, H, W = images.shape
    if H % p or W % p:
        raise InputError(f"patchify: image size {H}x{W} is not divisible by patch size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: Tensor, p: int, grid: tuple[int, int], channels: int = 3) -> Tensor:
    """(B, L, p*p*C) -> (B, C, gh*p, gw*p), the inverse of :func:`patchify`."""
    B = patches.shape[0]
    gh, gw = grid
    x = patches.reshape(B, gh, gw, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, gh * p, gw * p)


def mask_to_pixels(mask: Tensor, p: int, grid: tuple[int, int]) -> Tensor:
    """(B, L) patch mask -> (B, 1, gh*p, gw*p) pixel mask."""
    B = mask.shape[0]
    return mask.reshape(B, 1, *grid).repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
