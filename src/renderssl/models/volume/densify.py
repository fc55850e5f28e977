"""Densify: per-point features -> a fixed dense feature volume (B, C, Z, Y, X) by mean scatter.

PonderV2 (``PonderIndoor.to_dense``) averages the sparse backbone's features into a dense grid of
``grid_shape = (X, Y, Z) = (128, 128, 32)`` cells and stores it as (B, C, Z, Y, X). Its three branches
(pool / trilinear upsample / pool-then-resize), chosen by comparing the scene's resolution at 2 cm with
the grid, only decide how the 2 cm sparse voxels map onto grid cells, one scene at a time. Here every
point is averaged directly into the grid cell that contains it, all scenes at once (one ``index_add``
over a flat (B Z Y X) index, one ``bincount``): this is the pool branch for every scene; a scene coarser
than the grid leaves the cells between its points empty instead of interpolating them (the 3D UNet
that follows fills them), and nothing is resampled. Empty cells are 0. The result is differentiable
with respect to the features (each point's gradient is its cell's gradient / the cell's count).

Grid geometry (our choice, shared with :func:`voxel_centres` and the field's lookup):
- the grid's cells tile the box ``[lo, hi]`` (default :data:`UNIT_BOX` = [-0.5, 0.5]^3, the cube that
  ``unit_cube_transforms`` maps every scene into: x, y centred in [-0.5, 0.5], z from -0.5 up to at most
  0.5; PonderV2's grid spans the same cube). Cell (x, y, z) covers ``lo + [i, i + 1) * (hi - lo) / n``
  per axis, its centre is ``lo + (i + 0.5) * (hi - lo) / n``. The X, Y and Z cells need not be cubes
  (PonderV2's (128, 128, 32) over a cube has cells 4x taller than wide).
- a point's cell is ``floor((p - lo) / (hi - lo) * n)`` clamped into [0, n - 1]: points on the upper
  face (and any stray point outside the box) go to the nearest boundary cell, as PonderV2 clips its
  coordinates into the cube.
- reading the volume back: ``render.grid.trilinear_lookup`` takes align_corners=True coordinates, in
  which -1 / +1 are the centres of the first / last cells. So a world point p in the box is read at
  ``world_to_grid(p, *centre_bounds(grid_shape, box))``; a feature written to cell (x, y, z) is then
  returned exactly at that cell's centre (tests/test_volume_densify.py checks the round trip). Points
  between the outer centres and the box faces (half a cell) read the boundary cell under "border"
  padding. (PonderV2 reads with bounds [-0.55, 0.55] and align_corners=True, half a cell and 5% off its
  own densification grid; not copied.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import InputError, check_finite, check_shape

UNIT_BOX = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))


def box_tensors(box, dtype=torch.float32, device=None) -> tuple[Tensor, Tensor]:
    """``box`` = (lo, hi), each 3 numbers or a tensor (3,) -> (lo (3,), hi (3,)) tensors."""
    try:
        lo, hi = (torch.as_tensor(b, dtype=dtype, device=device) for b in box)
    except (TypeError, ValueError) as e:
        raise InputError(f"box: expected (lo, hi) with 3 numbers each, got {box!r}") from e
    if lo.shape != (3,) or hi.shape != (3,):
        raise InputError(f"box: expected (lo, hi) with 3 numbers each, got shapes {tuple(lo.shape)} and {tuple(hi.shape)}")
    if not bool((hi > lo).all()):
        raise InputError(f"box: hi must exceed lo on every axis, got lo={lo.tolist()} hi={hi.tolist()}")
    return lo, hi


def check_grid_shape(grid_shape) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in grid_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"grid_shape: expected 3 positive sizes (X, Y, Z), got {grid_shape!r}")
    return shape


def voxel_size(grid_shape, box=UNIT_BOX, dtype=torch.float32, device=None) -> Tensor:
    """(3,) cell edge lengths (x, y, z) of a grid of ``grid_shape`` (X, Y, Z) cells tiling ``box``."""
    lo, hi = box_tensors(box, dtype, device)
    n = torch.tensor(check_grid_shape(grid_shape), dtype=dtype, device=device)  # (3,) in x, y, z
    return (hi - lo) / n


def centre_bounds(grid_shape, box=UNIT_BOX, dtype=torch.float32, device=None) -> tuple[Tensor, Tensor]:
    """Centres of the first and last cells, (3,) each: the ``bbox_min`` / ``bbox_max`` to hand to
    ``render.grid.world_to_grid`` so that ``trilinear_lookup`` reads this grid at world points.

    An axis with a single cell has both centres equal (world_to_grid then rejects the box).
    """
    lo, hi = box_tensors(box, dtype, device)
    half = 0.5 * voxel_size(grid_shape, box, dtype, device)  # (3,)
    return lo + half, hi - half


def voxel_centres(grid_shape, box=UNIT_BOX, dtype=torch.float32, device=None) -> Tensor:
    """(Z, Y, X, 3) world coordinates (x, y, z) of the cell centres of a (X, Y, Z) grid over ``box``."""
    X, Y, Z = check_grid_shape(grid_shape)
    lo, _ = box_tensors(box, dtype, device)
    size = voxel_size(grid_shape, box, dtype, device)  # (3,)
    axes = [lo[a] + (torch.arange(n, dtype=dtype, device=device) + 0.5) * size[a] for a, n in enumerate((X, Y, Z))]
    z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")  # (Z, Y, X) each
    return torch.stack([x, y, z], dim=-1)  # (Z, Y, X, 3)


def cell_index(points: Tensor, grid_shape, box=UNIT_BOX) -> Tensor:
    """Points (N, 3) -> int64 cell indices (N, 3) in (x, y, z), clamped into the grid."""
    n = torch.tensor(check_grid_shape(grid_shape), device=points.device)  # (3,)
    lo, hi = box_tensors(box, points.dtype, points.device)
    idx = torch.floor((points - lo) / (hi - lo) * n).long()  # (N, 3)
    return torch.minimum(idx.clamp(min=0), n - 1)


def flat_cell_index(cells: Tensor, batch: Tensor, grid_shape) -> Tensor:
    """Cells (N, 3) in (x, y, z) and scene index (N,) -> flat index (N,) into (B, Z, Y, X)."""
    X, Y, Z = check_grid_shape(grid_shape)
    return ((batch * Z + cells[:, 2]) * Y + cells[:, 1]) * X + cells[:, 0]


def _check_densify_inputs(features, points_unit, batch, num_scenes):
    if not isinstance(features, Tensor) or features.dim() != 2 or not features.dtype.is_floating_point:
        raise InputError(f"densify: features must be a float tensor (N, C), got {getattr(features, 'shape', type(features))}")
    if not isinstance(points_unit, Tensor) or points_unit.dim() != 2 or not points_unit.dtype.is_floating_point:
        raise InputError(f"densify: points_unit must be (N, 3), got {getattr(points_unit, 'shape', type(points_unit))}")
    check_shape("densify: points_unit", points_unit, len(features), 3)
    check_finite("densify: points_unit", points_unit)
    if not isinstance(batch, Tensor) or batch.shape != (len(features),) or batch.dtype.is_floating_point:
        raise InputError(f"densify: batch must be an integer tensor ({len(features)},), got {getattr(batch, 'shape', type(batch))}")
    if int(num_scenes) < 1:
        raise InputError(f"densify: num_scenes must be >= 1, got {num_scenes}")
    if len(batch) and not (0 <= int(batch.min()) and int(batch.max()) < num_scenes):
        raise InputError(f"densify: batch indices must lie in [0, {num_scenes})")


def densify(features: Tensor, points_unit: Tensor, batch: Tensor, num_scenes: int, grid_shape=(128, 128, 32), box=UNIT_BOX) -> Tensor:
    """Mean of the point features (N, C) in every cell of a (X, Y, Z) grid over ``box`` -> (B, C, Z, Y, X).

    ``points_unit`` (N, 3) are the points in the unit-cube frame, ``batch`` (N,) their scene index.
    Empty cells are 0; differentiable w.r.t. ``features``.
    """
    _check_densify_inputs(features, points_unit, batch, num_scenes)
    X, Y, Z = check_grid_shape(grid_shape)
    B, C = int(num_scenes), features.shape[1]
    cells = cell_index(points_unit, grid_shape, box)  # (N, 3), in the points' own precision
    flat = flat_cell_index(cells, batch.long(), grid_shape)  # (N,)
    sums = features.new_zeros(B * Z * Y * X, C).index_add(0, flat, features)  # (B Z Y X, C)
    counts = torch.bincount(flat, minlength=B * Z * Y * X).clamp(min=1).to(features.dtype)  # (B Z Y X,)
    means = sums / counts[:, None]  # (B Z Y X, C)
    return means.reshape(B, Z, Y, X, C).permute(0, 4, 1, 2, 3).contiguous()  # (B, C, Z, Y, X)
