"""Exact ray / primitive intersection and the nearest hit of world rays against a layout.

Four ray-cast kinds, each batched over all its primitives at once (P primitives x R rays, laid out
(P, 3, R) so that per-component slices are contiguous): quads (z = 0 rectangles, two-sided), boxes,
ellipsoids and capped frustums, each in its local frame (``layout.py``). Quadratics use the
numerically stable root pair (q / a, c / q); hits need t > ``T_MIN``; a miss is t = inf.

Rays: ``Cameras.rays(normalize=False)`` has unit camera-z directions, so the ray parameter of the
nearest hit IS the z-depth (pinhole and ortho), never a distance along the ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .classes import BOX, ELLIPSOID, FRUSTUM, QUAD

if TYPE_CHECKING:
    from .layout import SceneLayout

T_MIN = 1e-4  # smallest accepted ray parameter (metres of z-depth for camera rays)
INF = float("inf")


def _rays_to_local(origin: Tensor, rotation: Tensor, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """World rays (R, 3) -> local rays (Pt, 3, R) of Pt primitives (rotation local-to-world).

    Components first and rays last, so every per-component slice is contiguous along the rays.
    """
    o_local = torch.einsum("pji,pjr->pir", rotation, o.T[None] - origin[:, :, None])  # (Pt, 3, R) = R^T (o - origin)
    d_local = torch.einsum("pji,jr->pir", rotation, d.T)  # (Pt, 3, R)
    return o_local, d_local


def _positive(t: Tensor, valid: Tensor) -> Tensor:
    """t where valid and t > T_MIN, else inf (NaN-safe)."""
    return torch.where(valid & (t > T_MIN), t, INF)


def _stable_roots(a: Tensor, half_b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Roots of a t^2 + 2 half_b t + c (numerically stable pair) and the mask of real roots."""
    disc = half_b * half_b - a * c
    real = disc >= 0
    q = -(half_b + torch.where(half_b >= 0, 1.0, -1.0) * disc.clamp(min=0).sqrt())
    return q / a, c / q, real


def _safe(d: Tensor) -> Tensor:
    """Direction components bounded away from 0 (keeps slab and plane divisions finite)."""
    return torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)


def intersect_quads(o: Tensor, d: Tensor, size: Tensor) -> Tensor:
    """Local rays (P, 3, R) vs rectangles z = 0, |x| <= size_x, |y| <= size_y (size (P, 3)) -> t (P, R), inf = miss."""
    t = -o[:, 2] / _safe(d[:, 2])  # (P, R)
    x = o[:, 0] + t * d[:, 0]
    y = o[:, 1] + t * d[:, 1]
    return _positive(t, (x.abs() <= size[:, 0, None]) & (y.abs() <= size[:, 1, None]))


def intersect_boxes(o: Tensor, d: Tensor, half: Tensor) -> Tensor:
    """Local rays (P, 3, R) vs centred boxes of half extents (P, 3) -> nearest t (P, R)."""
    inv = 1.0 / _safe(d)
    half = half[:, :, None]  # (P, 3, 1)
    t1, t2 = (-half - o) * inv, (half - o) * inv  # (P, 3, R)
    t_near = torch.minimum(t1, t2).amax(dim=1)  # (P, R)
    t_far = torch.maximum(t1, t2).amin(dim=1)
    t = torch.where(t_near > T_MIN, t_near, t_far)
    return _positive(t, t_far >= t_near)


def intersect_ellipsoids(o: Tensor, d: Tensor, radii: Tensor) -> Tensor:
    """Local rays (P, 3, R) vs centred axis-aligned ellipsoids of radii (P, 3) -> nearest t (P, R)."""
    inv_r = 1.0 / radii[:, :, None]  # (P, 3, 1)
    os, ds = o * inv_r, d * inv_r  # unit-sphere space, same t
    a = (ds * ds).sum(1)  # (P, R)
    half_b = (os * ds).sum(1)
    c = (os * os).sum(1) - 1.0
    r1, r2, real = _stable_roots(a, half_b, c)
    t_lo, t_hi = torch.minimum(r1, r2), torch.maximum(r1, r2)
    t = torch.where(t_lo > T_MIN, t_lo, t_hi)
    return _positive(t, real)


def intersect_frustums(o: Tensor, d: Tensor, size: Tensor) -> Tensor:
    """Local rays (P, 3, R) vs capped frustums on z in [0, h], radius r0 -> r1 (size (P, 3) = r0, r1, h) -> t (P, R)."""
    r0, r1, h = size[:, :, None].unbind(1)  # (P, 1) each
    k = (r1 - r0) / h  # radius slope
    ox, oy, oz = o.unbind(1)  # (P, R) each
    dx, dy, dz = d.unbind(1)
    rz = r0 + k * oz  # (P, R) radius at the origin's height
    a = dx * dx + dy * dy - k * k * dz * dz
    half_b = ox * dx + oy * dy - k * rz * dz
    c = ox * ox + oy * oy - rz * rz
    s1, s2, real = _stable_roots(a, half_b, c)
    sides = torch.stack([s1, s2])  # (2, P, R)
    z_side = oz + sides * dz
    side_ok = real & (z_side >= 0) & (z_side <= h) & sides.isfinite()
    inv_dz = 1.0 / _safe(dz)
    caps = torch.stack([-oz * inv_dz, (h - oz) * inv_dz])  # (2, P, R) bottom, top
    cap_x, cap_y = ox + caps * dx, oy + caps * dy
    cap_r = torch.stack([r0, r1])  # (2, P, 1)
    cap_ok = cap_x * cap_x + cap_y * cap_y <= cap_r * cap_r
    t = _positive(torch.cat([sides, caps]), torch.cat([side_ok, cap_ok]))  # (4, P, R)
    return t.amin(dim=0)


_INTERSECTORS = {QUAD: intersect_quads, BOX: intersect_boxes, ELLIPSOID: intersect_ellipsoids, FRUSTUM: intersect_frustums}


def cast_rays(layout: SceneLayout, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest hit of world rays (R, 3) -> (t (R,) with inf = miss, primitive index (R,), -1 = miss)."""
    R = origins.shape[0]
    if len(layout) == 0:
        return origins.new_full((R,), INF), torch.full((R,), -1, dtype=torch.int64)
    t_all = origins.new_full((len(layout), R), INF)  # (P, R)
    for ptype, intersect in _INTERSECTORS.items():
        ids = layout.type_index(ptype)
        if ids.numel():
            o_l, d_l = _rays_to_local(layout.origin[ids], layout.rotation[ids], origins, dirs)
            t_all[ids] = intersect(o_l, d_l, layout.size[ids])
    t, prim = t_all.min(dim=0)  # (R,)
    return t, torch.where(t.isfinite(), prim, -1)
