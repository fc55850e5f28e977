"""Gaussians covering the surfaces of a point cloud: flat disks along the surface normals.

Each point becomes a Gaussian with tangent standard deviation ``spacing * tangent_scale`` and
normal standard deviation ``spacing * normal_scale``, oriented so its local z axis is the normal, with
the point's colour and a fixed opacity. ``spacing`` defaults to sqrt(area / N), estimated from the mean
nearest-neighbour distance of a subsample. Used by the renderer benchmark, the data preview, and as the
initialisation of point-based Gaussian heads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.types import PointCloud
from ..errors import InputError
from ..geometry.rotations import rotmat_to_quat
from .splat import Gaussians


def frames_from_normals(normals: Tensor) -> Tensor:
    """(N, 3) unit normals -> (N, 3, 3) rotations whose third column is the normal."""
    z = torch.nn.functional.normalize(normals, dim=-1)
    helper = torch.where(z[:, :1].abs() < 0.9, torch.tensor([1.0, 0.0, 0.0]).to(z), torch.tensor([0.0, 1.0, 0.0]).to(z))
    x = torch.nn.functional.normalize(torch.cross(helper, z, dim=-1), dim=-1)
    y = torch.cross(z, x, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def mean_spacing(points: Tensor, sample: int = 2048, generator: torch.Generator | None = None) -> float:
    """Mean nearest-neighbour distance of up to ``sample`` points against the whole cloud."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    idx = torch.randperm(points.shape[0], generator=g)[:sample]
    d = torch.cdist(points[idx], points)  # (S, N)
    d[torch.arange(idx.numel()), idx] = float("inf")
    return float(d.min(dim=1).values.mean())


def surfel_gaussians(
    cloud: PointCloud,
    opacity: float = 0.9,
    tangent_scale: float = 0.8,
    normal_scale: float = 0.1,
    spacing: float | None = None,
) -> Gaussians:
    """One scene (B = 1) of Gaussians on the points of ``cloud`` (needs normals and colours)."""
    if cloud.normals is None or cloud.colors is None:
        raise InputError(f"surfel_gaussians: point cloud {cloud.name!r} needs normals and colours")
    if len(cloud) == 0:
        raise InputError(f"surfel_gaussians: point cloud {cloud.name!r} is empty")
    spacing = mean_spacing(cloud.points) if spacing is None else spacing
    n = len(cloud)
    scales = torch.tensor([tangent_scale, tangent_scale, normal_scale]) * spacing
    return Gaussians(
        means=cloud.points[None].float(),
        quats=rotmat_to_quat(frames_from_normals(cloud.normals.float()))[None],
        scales=scales.expand(1, n, 3).clone(),
        opacities=torch.full((1, n), opacity),
        colors=cloud.colors[None].float(),
    )
