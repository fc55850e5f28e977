"""Feature-volume lookup: trilinear interpolation that is twice differentiable.

PonderV2 reads its dense feature volume at every ray sample and differentiates the resulting SDF with
respect to the sample position (the normal, and the eikonal loss on its norm). Back-propagating the
eikonal loss therefore needs the *second* derivative of the lookup with respect to the points. PonderV2
uses a CUDA extension (SmoothSampler) because torch's 3D ``F.grid_sample`` historically had no double
backward for its grid input. (Checked here: torch 2.13's CPU grid_sample does pass gradgradcheck, and
tests/test_grid.py compares against it when available; older or other builds may not.) This lookup uses
``gather`` and elementwise arithmetic only, so autograd differentiates it to any order with respect to
both the points and the volume, on any device and torch version.

Choices (the papers leave them open; we follow ``F.grid_sample`` so the two are interchangeable):
- Layout: the volume is (B, C, D, H, W) and a point is (x, y, z) with x indexing W, y indexing H and
  z indexing D (as grid_sample; PonderV2 stores its volume as (B, C, Z, Y, X), which matches).
- ``align_corners=True`` (as PonderV2, GNT and mvsplat): -1 and +1 are the *centres* of the first and
  last voxels, so a normalised coordinate c maps to the continuous index (c + 1) / 2 * (size - 1).
- ``padding_mode="border"`` clamps the continuous index into [0, size - 1] before interpolating (zero
  gradient outside, as grid_sample); ``"zeros"`` lets corners outside the volume contribute zero.
- Memory: the 8 corner values of every point are gathered at once, (B, C, 8 N) -- the price of the
  pure-torch double backward; the volume itself is never copied or permuted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError, check_finite, check_shape

PADDING_MODES = ("border", "zeros")


def world_to_grid(points: Tensor, bbox_min, bbox_max) -> Tensor:
    """World points (..., 3) -> normalised grid coordinates (..., 3) in [-1, 1] over the box.

    ``bbox_min``/``bbox_max`` are broadcastable to ``points`` (e.g. (3,) or (B, 1, 3)). With
    ``trilinear_lookup``'s align_corners=True convention they are the centres of the corner voxels.
    """
    if not isinstance(points, Tensor):
        raise InputError(f"world_to_grid: points must be a tensor, got {type(points).__name__}")
    check_shape("world_to_grid: points", points, 3)
    lo = torch.as_tensor(bbox_min, dtype=points.dtype, device=points.device)
    hi = torch.as_tensor(bbox_max, dtype=points.dtype, device=points.device)
    if lo.shape[-1:] != (3,) or hi.shape[-1:] != (3,):
        raise InputError(f"world_to_grid: bbox_min/bbox_max must end in 3, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    if not bool((hi > lo).all()):
        raise InputError("world_to_grid: bbox_max must exceed bbox_min on every axis")
    return 2.0 * (points - lo) / (hi - lo) - 1.0


def grid_to_world(coords: Tensor, bbox_min, bbox_max) -> Tensor:
    """Inverse of :func:`world_to_grid`: normalised coordinates (..., 3) -> world points (..., 3)."""
    check_shape("grid_to_world: coords", coords, 3)
    lo = torch.as_tensor(bbox_min, dtype=coords.dtype, device=coords.device)
    hi = torch.as_tensor(bbox_max, dtype=coords.dtype, device=coords.device)
    return lo + (coords + 1.0) * 0.5 * (hi - lo)


def _check_lookup_inputs(volume: Tensor, points: Tensor, padding_mode: str) -> None:
    if not isinstance(volume, Tensor) or not isinstance(points, Tensor):
        raise InputError("trilinear_lookup: volume and points must be tensors")
    if volume.dim() != 5:
        raise InputError(f"trilinear_lookup: volume must be (B, C, D, H, W), got {tuple(volume.shape)}")
    if points.dim() != 3:
        raise InputError(f"trilinear_lookup: points must be (B, N, 3), got {tuple(points.shape)}")
    check_shape("trilinear_lookup: points", points, volume.shape[0], None, 3)
    if padding_mode not in PADDING_MODES:
        raise InputError(f"trilinear_lookup: padding_mode {padding_mode!r} not in {PADDING_MODES}")
    if points.dtype != volume.dtype or not points.dtype.is_floating_point:
        raise InputError(f"trilinear_lookup: points ({points.dtype}) and volume ({volume.dtype}) must share one float dtype")
    if points.device != volume.device:
        raise InputError(f"trilinear_lookup: points on {points.device}, volume on {volume.device}")
    check_finite("trilinear_lookup: points", points)
    check_finite("trilinear_lookup: volume", volume)


def continuous_index(points: Tensor, size: Tensor) -> Tensor:
    """Normalised coords (B, N, 3) -> continuous voxel index (B, N, 3), align_corners=True."""
    return (points + 1.0) * 0.5 * (size - 1)


def axis_corners_and_weights(idx: Tensor, size: int, padding_mode: str) -> tuple[Tensor, Tensor]:
    """Continuous index (B, N) along one axis -> the two neighbouring integer indices (B, N, 2) and
    their linear weights (B, N, 2) = (1 - f, f).

    f is taken against a detached floor, so the weights are linear in the coordinate inside a cell and
    differentiable to any order; indices are clamped into range (safe to gather), and with "zeros"
    padding the weight of an out-of-range neighbour is zeroed.
    """
    top = size - 1
    if padding_mode == "border":
        idx = idx.clamp(0, top)  # zero gradient outside, as grid_sample's border clipping
    lo = idx.detach().floor()
    if padding_mode == "border":
        lo = lo.clamp(max=max(top - 1, 0))  # keep lo + 1 inside at the upper face (f = 1 there)
    frac = idx - lo  # (B, N)
    lo = lo.long()
    corners = torch.stack([lo, lo + 1], dim=-1)  # (B, N, 2)
    weights = torch.stack([1.0 - frac, frac], dim=-1)  # (B, N, 2)
    if padding_mode == "zeros":
        weights = weights * ((corners >= 0) & (corners <= top))
    return corners.clamp(0, top), weights


def corner_indices_and_weights(idx: Tensor, volume_shape, padding_mode: str) -> tuple[Tensor, Tensor]:
    """Continuous index (B, N, 3) in (x, y, z) -> flat indices (B, N, 8) into D*H*W and weights (B, N, 8).

    The 8 corners are ordered (dz, dy, dx) with dx fastest; each weight is the product of its three
    axis weights (plain products, no ``prod``: cheaper double backward).
    """
    D, H, W = volume_shape
    B, N = idx.shape[:2]
    xc, xw = axis_corners_and_weights(idx[..., 0], W, padding_mode)  # (B, N, 2) each
    yc, yw = axis_corners_and_weights(idx[..., 1], H, padding_mode)
    zc, zw = axis_corners_and_weights(idx[..., 2], D, padding_mode)
    flat = (zc[..., :, None, None] * H + yc[..., None, :, None]) * W + xc[..., None, None, :]  # (B, N, 2, 2, 2)
    weights = zw[..., :, None, None] * yw[..., None, :, None] * xw[..., None, None, :]  # (B, N, 2, 2, 2)
    return flat.reshape(B, N, 8), weights.reshape(B, N, 8)


def gather_corners(volume: Tensor, flat_index: Tensor) -> Tensor:
    """Values of ``volume`` (B, C, D, H, W) at flat corner indices (B, N, 8) -> (B, C, N, 8)."""
    B, C = volume.shape[:2]
    N = flat_index.shape[1]
    flat = volume.reshape(B, C, -1)  # (B, C, D*H*W) view, no copy
    index = flat_index.reshape(B, 1, N * 8).expand(B, C, N * 8)  # stride-0 over C
    return flat.gather(2, index).reshape(B, C, N, 8)


def trilinear_lookup(volume: Tensor, points: Tensor, padding_mode: str = "border") -> Tensor:
    """Trilinear interpolation of ``volume`` (B, C, D, H, W) at ``points`` (B, N, 3) -> (B, N, C).

    ``points`` are normalised coordinates (x -> W, y -> H, z -> D) with align_corners=True: equal in
    value and gradient to ``F.grid_sample(volume, points[:, :, None, None], mode="bilinear",
    align_corners=True, padding_mode=...)``, but twice differentiable w.r.t. points and volume.
    """
    _check_lookup_inputs(volume, points, padding_mode)
    D, H, W = volume.shape[2:]
    size = torch.tensor([W, H, D], dtype=points.dtype, device=points.device)  # (3,) in x, y, z order
    idx = continuous_index(points, size)  # (B, N, 3)
    flat_index, weights = corner_indices_and_weights(idx, (D, H, W), padding_mode)  # (B, N, 8), (B, N, 8)
    values = gather_corners(volume, flat_index)  # (B, C, N, 8)
    out = (values * weights[:, None]).sum(dim=-1)  # (B, C, N)
    return out.transpose(1, 2)  # (B, N, C)
