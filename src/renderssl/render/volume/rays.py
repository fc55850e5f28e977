"""Points along rays and the two depth conventions.

A ray is o + t d. ``t`` is used exactly as given: a distance along the ray only if d has unit length.
Rendered depth (Σ w t) is therefore distance along the ray when the directions are unit vectors, as
NeuS requires; ``z_depth_from_ray_distance`` converts it to the z-depth along the optical axis of
docs/conventions.md, and ``ray_distance_from_z_depth`` back (as PonderV2 does for its depth targets).
"""

from __future__ import annotations

from torch import Tensor

from ...errors import check_shape
from ._checks import check_tensor


def ray_points(rays_o: Tensor, rays_d: Tensor, t: Tensor) -> Tensor:
    """o + t d -> (R, S, 3)."""
    return rays_o[:, None, :] + rays_d[:, None, :] * t[..., None]


def z_depth_from_ray_distance(t: Tensor, directions: Tensor, optical_axis: Tensor) -> Tensor:
    """Distance t (R,) along unit ``directions`` (R, 3) -> z-depth (R,) along ``optical_axis`` ((3,) or (R, 3)).

    The optical axis is column 2 of the camera-to-world rotation (``c2w[..., :3, 2]``, OpenCV +z).
    """
    check_tensor("z_depth_from_ray_distance: t", t, None)
    check_tensor("z_depth_from_ray_distance: directions", directions, t.shape[0], 3)
    check_shape("z_depth_from_ray_distance: optical_axis", optical_axis, 3)
    return t * (directions * optical_axis).sum(dim=-1)  # (R,)


def ray_distance_from_z_depth(z: Tensor, directions: Tensor, optical_axis: Tensor) -> Tensor:
    """z-depth (R,) -> distance (R,) along unit ``directions`` (R, 3) (PonderV2's depth-target conversion)."""
    check_tensor("ray_distance_from_z_depth: z", z, None)
    check_tensor("ray_distance_from_z_depth: directions", directions, z.shape[0], 3)
    check_shape("ray_distance_from_z_depth: optical_axis", optical_axis, 3)
    return z / (directions * optical_axis).sum(dim=-1)  # (R,)
