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


# ---- Mask3D: disjoint colour and depth patches -------------------------------------------------------


@dataclass
class RGBDMasks:
    """Which patches of a frame are given as colour and which as depth (never both).

    The shuffled order of the L patches is [colour patches | depth patches | uncovered patches]; the
    masks follow MAE's convention (1 = removed, 0 = given), in the original patch order.
    """

    rgb_ids: Tensor  # (B, n_rgb) indices of the patches given as colour, in shuffled order
    depth_ids: Tensor  # (B, n_depth) indices of the patches given as depth, in shuffled order
    ids_restore: Tensor  # (B, L) position of each original patch in the shuffled order
    rgb_mask: Tensor  # (B, L) 1 = colour removed, 0 = colour given
    depth_mask: Tensor  # (B, L) 1 = depth removed, 0 = depth given

    @property
    def uncovered(self) -> Tensor:
        """(B, L) 1 where neither colour nor depth is given (the mask-token places)."""
        return self.rgb_mask * self.depth_mask

    @staticmethod
    def gather(tokens: Tensor, ids: Tensor) -> Tensor:
        """(B, L, D) tokens, (B, n) indices -> (B, n, D)."""
        return torch.gather(tokens, 1, ids[..., None].expand(-1, -1, tokens.shape[-1]))


def keep_count(length: int, keep: float) -> int:
    """Number of kept patches: int(length * keep), rounded to 6 decimals first so 0.29 * 100 gives 29."""
    return int(round(length * keep, 6))


def disjoint_rgbd_masks(batch: int, length: int, rgb_keep: float, depth_keep: float,
                        generator: torch.Generator | None = None, device=None) -> RGBDMasks:
    """Mask3D's masks: per sample keep ``int(L rgb_keep)`` colour patches and ``int(L depth_keep)`` depth
    patches at other locations (capped at the ``L - n_rgb`` patches left when the fractions add up to
    more than 1). One permutation per sample, from U(0, 1) noise drawn on the caller's CPU generator
    (as :func:`random_masking`): its first n_rgb entries are the colour patches, the next n_depth the
    depth patches, so both sets are uniform at random and disjoint."""
    if not 0.0 < rgb_keep <= 1.0 or not 0.0 <= depth_keep <= 1.0:
        raise InputError(f"keep fractions must be rgb_keep in (0, 1] and depth_keep in [0, 1], got {rgb_keep}, {depth_keep}")
    n_rgb = keep_count(length, rgb_keep)
    n_depth = min(keep_count(length, depth_keep), length - n_rgb)
    noise = torch.rand(batch, length, generator=generator)  # (B, L), drawn on the CPU generator
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    rgb_mask, depth_mask = torch.ones(batch, length), torch.ones(batch, length)
    rgb_mask[:, :n_rgb] = 0
    depth_mask[:, n_rgb:n_rgb + n_depth] = 0
    rgb_mask, depth_mask = torch.gather(rgb_mask, 1, ids_restore), torch.gather(depth_mask, 1, ids_restore)
    return RGBDMasks(ids_shuffle[:, :n_rgb].to(device), ids_shuffle[:, n_rgb:n_rgb + n_depth].to(device),
                     ids_restore.to(device), rgb_mask.to(device), depth_mask.to(device))
