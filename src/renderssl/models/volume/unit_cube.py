"""PonderV2's ``to_unit_cube``: one similarity per scene that brings its cloud into the unit cube.

PonderV2 (indoor, ``PonderIndoor.to_unit_cube``) normalises every scene before densifying its features
and rendering it, and moves the scene's cameras with it. Per scene b, with the cloud's axis-aligned box
``[p_min, p_max]``, centre ``c = (p_min + p_max) / 2`` and largest extent ``e = max_a(p_max - p_min)_a``:

    s = 1 / ((1 + pad) * e)
    x' = s (x - c_x),   y' = s (y - c_y),   z' = s (z - z_min) - 0.5

i.e. centre, scale by 1 / max extent, then shift z so that the lowest point sits at z' = -0.5 (PonderV2's
``z_level = -0.5``: the floor of an indoor scene lands on the bottom face of the cube). As a matrix,
``S = [[s I, t], [0, 1]]`` with ``t = (-s c_x, -s c_y, -0.5 - s z_min)``. Every point then lies in
[-0.5, 0.5]^3: x and y in [-0.5, 0.5] / (1 + pad) about 0, z in [-0.5, -0.5 + s e_z] (<= 0.5).

Choices where the official code differs or the paper is silent:
- ``pad`` is relative (a fraction of the largest extent, default 0: the longest axis spans the cube
  exactly). PonderV2 widens the box by an absolute 1e-5 (scene units) per side and then clips the
  points to [-0.5 + 1e-5, 0.5 - 1e-5]; here nothing is clipped (densify assigns a point on the cube's
  upper face to the last voxel).
- Cameras: PonderV2 multiplies its world-to-camera extrinsics by S^-1 (``extrinsic @ inv(S)``), so the
  camera axes carry the scale s. We keep ``c2w`` rigid, as renderssl's convention and
  ``SimilarityTransform.apply_c2w`` do: ``c2w' = S c2w diag(1/s, 1/s, 1/s, 1)``, i.e. the same rotation
  and the centre moved by S. Every point keeps its pixel and its z-depth scales by s, so depth targets
  must be multiplied by :func:`scale_of` (PonderV2 multiplies its ``depth_scale`` likewise). Intrinsics
  of pinhole cameras are unchanged.
- S is computed without gradient (as PonderV2's ``@torch.no_grad``): it is a data normalisation.
- Vectorised over the batch: per-scene min / max by ``scatter_reduce`` over the packed clouds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...data.points import offset_to_batch
from ...errors import InputError, check_finite, check_shape

Z_LEVEL = -0.5  # PonderV2: the scene's lowest point lands on the cube's bottom face


def scene_bounds(points: Tensor, batch: Tensor, num_scenes: int) -> tuple[Tensor, Tensor]:
    """Per-scene axis-aligned box of packed clouds: (mins (B, 3), maxs (B, 3))."""
    index = batch[:, None].expand(-1, 3)  # (N, 3)
    mins = points.new_full((num_scenes, 3), float("inf")).scatter_reduce(0, index, points, "amin")  # (B, 3)
    maxs = points.new_full((num_scenes, 3), float("-inf")).scatter_reduce(0, index, points, "amax")  # (B, 3)
    return mins, maxs


@torch.no_grad()
def unit_cube_transforms(points: Tensor, offset: Tensor, pad: float = 0.0) -> Tensor:
    """Packed clouds (N, 3) with ``offset`` (B,) -> S (B, 4, 4) mapping each scene into the unit cube.

    ``S p = s (p - c) + (0, 0, s (c_z - z_min) - 0.5)``, s = 1 / ((1 + pad) * max extent): see the
    module docstring. Every scene must hold at least one point and have a positive extent.
    """
    if not isinstance(points, Tensor) or not points.dtype.is_floating_point:
        raise InputError("unit_cube_transforms: points must be a float tensor (N, 3)")
    if points.dim() != 2:
        raise InputError(f"unit_cube_transforms: points must be (N, 3), got {tuple(points.shape)}")
    check_shape("unit_cube_transforms: points", points, 3)
    check_finite("unit_cube_transforms: points", points)
    if pad < 0:
        raise InputError(f"unit_cube_transforms: pad must be >= 0, got {pad}")
    batch = offset_to_batch(offset)  # (N,)
    if len(batch) != len(points):
        raise InputError(f"unit_cube_transforms: offset counts {len(batch)} points, points has {len(points)}")
    B = len(offset)
    counts = torch.bincount(batch, minlength=B)  # (B,)
    if bool((counts == 0).any()):
        raise InputError(f"unit_cube_transforms: offset has empty scene(s) {torch.nonzero(counts == 0).flatten().tolist()}")
    mins, maxs = scene_bounds(points.detach(), batch, B)  # (B, 3) each
    extent = (maxs - mins).amax(dim=1)  # (B,)
    if bool((extent <= 0).any()):
        raise InputError("unit_cube_transforms: points: a scene has zero extent (all its points coincide)")
    scale = 1.0 / ((1.0 + pad) * extent)  # (B,)
    centre = 0.5 * (mins + maxs)  # (B, 3)
    shift = -scale[:, None] * centre  # (B, 3)
    shift[:, 2] = Z_LEVEL - scale * mins[:, 2]  # z' = s (z - z_min) - 0.5
    S = torch.zeros(B, 4, 4, dtype=points.dtype, device=points.device)  # (B, 4, 4)
    S[:, :3, :3] = scale[:, None, None] * torch.eye(3, dtype=points.dtype, device=points.device)
    S[:, :3, 3] = shift
    S[:, 3, 3] = 1.0
    return S


def check_transforms(name: str, S: Tensor) -> None:
    if not isinstance(S, Tensor) or S.dim() != 3 or S.shape[1:] != (4, 4):
        raise InputError(f"{name}: S must be (B, 4, 4), got {tuple(S.shape) if isinstance(S, Tensor) else type(S).__name__}")


def scale_of(S: Tensor) -> Tensor:
    """(B, 4, 4) similarities -> (B,) their uniform scales (the norm of the first column)."""
    check_transforms("scale_of", S)
    return S[:, :3, 0].norm(dim=-1)  # (B,)


def apply_to_points(points: Tensor, batch: Tensor, S: Tensor) -> Tensor:
    """Packed points (N, 3) with cloud index ``batch`` (N,) -> S[batch] p (N, 3)."""
    check_transforms("apply_to_points", S)
    check_shape("apply_to_points: points", points, 3)
    if batch.shape != points.shape[:1]:
        raise InputError(f"apply_to_points: batch must be (N,) = ({len(points)},), got {tuple(batch.shape)}")
    if len(batch) and not (0 <= int(batch.min()) and int(batch.max()) < len(S)):
        raise InputError(f"apply_to_points: batch indices must lie in [0, {len(S)})")
    S = S.to(points.dtype)
    linear, shift = S[batch, :3, :3], S[batch, :3, 3]  # (N, 3, 3), (N, 3)
    return torch.einsum("nij,nj->ni", linear, points) + shift  # (N, 3)


def apply_to_cameras(c2w: Tensor, S: Tensor) -> Tensor:
    """Camera-to-world poses (B, V, 4, 4) -> (B, V, 4, 4) in the unit-cube frame, axes kept orthonormal.

    ``c2w' = S c2w diag(1/s, 1/s, 1/s, 1)``: the same rotation, the centre moved by S. A point keeps its
    pixel; its z-depth is multiplied by ``scale_of(S)``.
    """
    check_transforms("apply_to_cameras", S)
    if not isinstance(c2w, Tensor) or c2w.dim() != 4 or c2w.shape[-2:] != (4, 4) or len(c2w) != len(S):
        raise InputError(f"apply_to_cameras: c2w must be (B, V, 4, 4) with B = {len(S)}, got {tuple(c2w.shape)}")
    S = S.to(c2w.dtype)
    out = S[:, None] @ c2w  # (B, V, 4, 4)
    unscale = torch.ones(len(S), 1, 1, 4, dtype=c2w.dtype, device=c2w.device)  # (B, 1, 1, 4)
    unscale[..., :3] = 1.0 / scale_of(S)[:, None, None, None]
    return out * unscale  # columns 0-2 divided by s: (B, V, 4, 4)
