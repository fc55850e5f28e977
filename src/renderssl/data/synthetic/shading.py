"""Surface attributes at ray hits: normals and view-independent shading.

Normals: world-space unit normals from the analytic gradient at the hit point in the primitive's local
  frame, flipped to face the camera (quads are two-sided).
Shading is view-independent (no specular, no shadows): albedo * (ambient + (1 - ambient) *
  ((1 + n . L) / 2)^2) (half-Lambert, so faces turned from the light keep their texture and every
  orientation gets its own shade) with a fixed world light direction L (``config.light_dir``), clamped
  to [0, 1]; so novel views are well posed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .classes import BOX, ELLIPSOID, QUAD
from .texture import albedo

if TYPE_CHECKING:
    from .layout import SceneLayout


def _local_normals(ptype: Tensor, size: Tensor, p: Tensor) -> Tensor:
    """Unit outward normals (N, 3) in the local frame at local hit points p (N, 3)."""
    size = size.clamp(min=1e-6)
    # quad
    n_quad = torch.zeros_like(p)
    n_quad[:, 2] = 1.0
    # box: the face whose normalised coordinate is largest
    q = p / size
    n_box = F.one_hot(q.abs().argmax(dim=1), 3).to(p) * q.sign()
    # ellipsoid: gradient of sum (p / r)^2
    n_ell = p / (size * size)
    # frustum: side gradient or a cap, whichever surface the point is closest to
    r0, r1, h = size.unbind(-1)
    k = (r1 - r0) / h
    rz = r0 + k * p[:, 2]
    n_side = torch.stack([p[:, 0], p[:, 1], -k * rz], dim=1)
    dist = torch.stack([(p[:, :2].norm(dim=1) - rz).abs() / torch.sqrt(1 + k * k), p[:, 2].abs(), (p[:, 2] - h).abs()], dim=1)
    caps = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    part = dist.argmin(dim=1)  # (N,) 0 side, 1 bottom, 2 top
    n_fru = torch.where((part == 0)[:, None], n_side, caps[part])
    t = ptype[:, None]
    n = torch.where(t == QUAD, n_quad, torch.where(t == BOX, n_box, torch.where(t == ELLIPSOID, n_ell, n_fru)))
    return F.normalize(n, dim=1)


def _shade(layout: SceneLayout, base: Tensor, normals: Tensor) -> Tensor:
    """View-independent Lambert shading (N, 3) in [0, 1] of albedo ``base`` (N, 3) with a fixed world light."""
    light = F.normalize(torch.tensor(layout.config.light_dir, dtype=normals.dtype), dim=0)
    ambient = layout.config.ambient
    shade = ambient + (1.0 - ambient) * (0.5 + 0.5 * (normals @ light)) ** 2  # (N,) half-Lambert
    return (base * shade[:, None]).clamp(0.0, 1.0)


def surface(layout: SceneLayout, prim: Tensor, x: Tensor, d: Tensor) -> dict:
    """Colour and normals (N, 3) at world hit points x (N, 3) of primitives prim (N,) seen along d (N, 3)."""
    rot = layout.rotation[prim]  # (N, 3, 3)
    p = ((x - layout.origin[prim])[:, None, :] @ rot).squeeze(1)  # (N, 3) local = R^T (x - origin)
    n_local = _local_normals(layout.prim_type[prim], layout.size[prim], p)
    n = (rot @ n_local[:, :, None]).squeeze(2)  # (N, 3) world
    n = torch.where(((n * d).sum(1) > 0)[:, None], -n, n)  # face the camera
    return dict(rgb=_shade(layout, albedo(layout, prim, p), n), normals=n)
