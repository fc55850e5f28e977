"""Rendering a layout: world rays -> hit, colour, normals and labels; cameras -> images.

Each view's rays are cast together, in chunks of ``CHUNK_RAYS`` to bound memory at large sizes, one
view at a time so a frame rendered alone has the same bits as in its whole scene (the lazily read
synthetic scenes of :mod:`renderssl.data.scenes` render single frames); per ray only the winning
primitive's normal and texture are evaluated. Background (no hit)
has the config's background colour, semantic = instance = -1, depth 0 and normal 0.
``render_layout`` casts ``Cameras.rays(normalize=False)`` (unit camera-z directions), so the hit's ray
parameter is the z-depth.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...geometry import Cameras
from .intersect import cast_rays
from .layout import SceneLayout
from .shading import surface

CHUNK_RAYS = 1 << 16


def render_rays(layout: SceneLayout, origins: Tensor, dirs: Tensor, chunk: int = CHUNK_RAYS) -> dict:
    """Render world rays (R, 3): t (inf = miss), rgb, normals (R, 3), semantic, instance, primitive (R,) (-1 = miss)."""
    outs = [_render_chunk(layout, o, d) for o, d in zip(origins.split(chunk), dirs.split(chunk))]
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


@torch.no_grad()
def _render_chunk(layout: SceneLayout, origins: Tensor, dirs: Tensor) -> dict:
    R = origins.shape[0]
    t, prim = cast_rays(layout, origins, dirs)  # (R,), (R,)
    hit = prim >= 0
    rgb = torch.tensor(layout.config.background, dtype=torch.float32).repeat(R, 1)  # (R, 3)
    normals = torch.zeros(R, 3)
    idx = hit.nonzero().squeeze(1)
    if idx.numel():
        ph = prim[idx]
        surf = surface(layout, ph, origins[idx] + t[idx, None] * dirs[idx], dirs[idx])
        rgb[idx], normals[idx] = surf["rgb"], surf["normals"]
    safe = prim.clamp(min=0)
    return dict(
        t=t, rgb=rgb, normals=normals, primitive=prim,
        semantic=torch.where(hit, layout.semantic[safe], -1), instance=torch.where(hit, layout.instance[safe], -1),
    )


def render_layout(layout: SceneLayout, cameras: Cameras) -> dict:
    """Render a layout from cameras (V,): rgb (V, 3, H, W), depth (V, 1, H, W) z-depth (0 = none),
    normals (V, 3, H, W) world, semantic and instance (V, H, W) int64 (-1 = none).

    Views are cast one at a time, so a view's pixels do not depend on which other views are rendered
    with it (vectorised math rounds by position in an array): a frame rendered alone, as the lazily read
    scenes of :mod:`renderssl.data.scenes` do, has the same bits as in the whole scene."""
    cams = cameras.reshape(-1)
    views = [render_view(layout, cams[v : v + 1]) for v in range(cams.batch_shape[0])]
    return {k: torch.cat([view[k] for view in views]) for k in views[0]}


def render_view(layout: SceneLayout, camera: Cameras) -> dict:
    """One view (a camera of batch shape (1,)) of :func:`render_layout`."""
    H, W = camera.height, camera.width
    origins, dirs = camera.rays(normalize=False)  # (1, H, W, 3), unit camera-z: t is z-depth
    out = render_rays(layout, origins.reshape(-1, 3), dirs.reshape(-1, 3))
    depth = torch.where(out["primitive"] >= 0, out["t"], 0.0)  # (R,)

    def image(x: Tensor, c: int) -> Tensor:
        return x.reshape(1, H, W, c).permute(0, 3, 1, 2).contiguous()

    return dict(
        rgb=image(out["rgb"], 3), depth=image(depth[:, None], 1), normals=image(out["normals"], 3),
        semantic=out["semantic"].reshape(1, H, W), instance=out["instance"].reshape(1, H, W),
    )
