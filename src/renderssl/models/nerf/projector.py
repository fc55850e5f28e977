"""The projector: the samples of target rays projected into every source view (GNT's ``projection.py``).

For every world point x (S samples on each of R target rays, B scenes) and every source view v (V views
per scene), GNT's ``Projector.compute`` gathers what the view transformer attends over:

- ``rgb`` (B, R, S, V, 3) and ``features`` (B, R, S, V, C): the source image and the source feature map
  (:class:`renderssl.models.encoders.resunet.ResUNet`) bilinearly sampled where x projects,
  u = K [R | t]_{w2c} x (pinhole, ``w2c = inverse(c2w)``, OpenCV camera);
- ``mask`` (B, R, S, V) bool: x is in front of the camera, z > ``eps`` (GNT: z > 0), and projects inside
  the image, ``0 <= u <= W`` and ``0 <= v <= H`` (closed: the image area is the union of its pixels'
  squares [j, j + 1) x [i, i + 1), including its far edge; GNT's inbound test is ``0 <= u <= W - 1`` in its
  convention where pixel centres sit at integers, i.e. the hull of the pixel centres);
- ``ray_diff`` (B, R, S, V, 4): the relative direction of the source view's ray to the target ray at x
  (GNT's ``compute_angle``): a = unit(o_target - x), b = unit(c_v - x), d = a - b, feature
  (d / max(|d|, eps), a . b); identical directions give (0, 0, 0, 1). GNT normalises a and b by
  (|.| + 1e-6); here by max(|.|, eps) (``F.normalize``), so unit vectors stay exactly unit.

Pixel convention (renderssl's, DESIGN.md): pixel (i, j) covers [j, j + 1) x [i, i + 1), its centre is
(j + 0.5, i + 0.5); ``F.grid_sample(align_corners=False)`` with g = 2 u / W - 1 reads exactly that: a point
projecting to a pixel centre gets that pixel's value, without interpolation error. GNT instead puts pixel
centres at integer u and samples with ``align_corners=True`` and g = 2 u / (W - 1) - 1, also for the 1/4
feature map (whose centres it thereby stretches onto the image's corner pixels: a misalignment of up to
1.5 image pixels at the border for a 1/4 map). Here the feature map is read at the same normalised
location g as the image, which equals projecting with the feature map's own intrinsics
``Cameras.resized(w, h).K`` (K scaled by w / W, h / H) in the same convention: for an (H/4, W/4) ResUNet map
a point at image pixel u reads the feature map at u / 4.

Padding (our choice): ``padding_mode="border"`` by default, so a point inside the image but in the outer
half of a border pixel reads that pixel (zero padding would blend it with zeros outside the image, up to
half the value; GNT's inbound test never reaches its padding). ``"zeros"`` is accepted (GNT's
``grid_sample`` default). Masked samples keep whatever the sampler returns (the border pixels' values, or
zeros with ``"zeros"``): they are not zeroed here; the ``mask`` says which are valid and the consumer (the
view transformer) must exclude them. Points with z <= eps are projected with z replaced by 1 and every
grid coordinate is clamped to [-2, 2], so no sample is NaN or Inf (values are unchanged by the clamp: both
paddings are constant beyond the image's half-pixel band).

Vectorised: one ``grid_sample`` over all (B V) images and one over all (B V) feature maps (no loop over
scenes, views, rays or samples); memory B V R S (3 + C) values for the sampled maps. GNT handles one scene
(it asserts ``batch_size == 1``) and packs each camera in a 34-vector (H, W, K 4x4, c2w 4x4); here cameras
are ``K`` (B, V, 3, 3) for the image size and ``c2w`` (B, V, 4, 4), as ``geometry.Cameras``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError, check_finite
from ..volume.lift import project_to_frames

PADDING_MODES = ("border", "zeros")


@dataclass
class ProjectedSamples:
    """What every source view says about every sample of every target ray."""

    rgb: Tensor  # (B, R, S, V, 3) bilinearly sampled source colours
    features: Tensor  # (B, R, S, V, C) bilinearly sampled source features
    mask: Tensor  # (B, R, S, V) bool: in front of the source camera and inside its image
    ray_diff: Tensor  # (B, R, S, V, 4) relative direction of the source ray to the target ray at the sample


def sample_points_on_rays(origins: Tensor, dirs: Tensor, t: Tensor) -> Tensor:
    """Points o + t d: origins (B, R, 3), dirs (B, R, 3), ray parameters t (B, R, S) -> (B, R, S, 3).

    t is in units of ``dirs``: with unit directions it is the distance along the ray, with directions of
    unit camera z (``Cameras.rays_at(normalize=False)``) it is z-depth."""
    if not isinstance(origins, Tensor) or origins.dim() != 3 or origins.shape[-1] != 3:
        raise InputError(f"sample_points_on_rays: origins must be (B, R, 3), got {_shape(origins)}")
    if not isinstance(dirs, Tensor) or dirs.shape != origins.shape:
        raise InputError(f"sample_points_on_rays: dirs must be {tuple(origins.shape)} like origins, got {_shape(dirs)}")
    if not isinstance(t, Tensor) or t.dim() != 3 or t.shape[:2] != origins.shape[:2]:
        raise InputError(f"sample_points_on_rays: t must be ({origins.shape[0]}, {origins.shape[1]}, S), got {_shape(t)}")
    return origins[:, :, None] + t[..., None] * dirs[:, :, None]  # (B, R, S, 3)


def relative_directions(points: Tensor, target_origin: Tensor, src_centres: Tensor, eps: float = 1e-6) -> Tensor:
    """GNT's 4-d ray-difference feature: points (B, R, S, 3), target_origin (B, R, 3), source camera centres
    (B, V, 3) -> (B, R, S, V, 4) = (unit(a - b), a . b) with a = unit(o - x), b = unit(c_v - x)."""
    a = F.normalize(target_origin[:, :, None] - points, dim=-1, eps=eps)  # (B, R, S, 3)
    b = F.normalize(src_centres[:, None, None] - points[:, :, :, None], dim=-1, eps=eps)  # (B, R, S, V, 3)
    a = a[:, :, :, None]  # (B, R, S, 1, 3)
    diff = a - b  # (B, R, S, V, 3)
    direction = diff / diff.norm(dim=-1, keepdim=True).clamp(min=eps)  # (B, R, S, V, 3)
    dot = (a * b).sum(dim=-1, keepdim=True)  # (B, R, S, V, 1)
    return torch.cat([direction, dot], dim=-1)  # (B, R, S, V, 4)


def project_samples(
    points: Tensor,
    src_rgb: Tensor,
    src_features: Tensor,
    src_K: Tensor,
    src_c2w: Tensor,
    target_origin: Tensor,
    *,
    eps: float = 1e-6,
    padding_mode: str = "border",
) -> ProjectedSamples:
    """Project the samples of target rays into every source view and sample colours and features there.

    points (B, R, S, 3) world; src_rgb (B, V, 3, H, W); src_features (B, V, C, h, w) covering the same image
    area (e.g. ResUNet's (H/4, W/4)); src_K (B, V, 3, 3) in pixels of the (H, W) images; src_c2w
    (B, V, 4, 4) OpenCV camera-to-world; target_origin (B, R, 3) per-ray origins (or (B, 3), the target
    camera centre). Returns :class:`ProjectedSamples`; see the module docstring for the conventions.
    """
    _check_inputs(points, src_rgb, src_features, src_K, src_c2w, target_origin, eps, padding_mode)
    B, R, S, _ = points.shape
    V, _, H, W = src_rgb.shape[1:]
    C, h, w = src_features.shape[2:]
    if target_origin.dim() == 2:
        target_origin = target_origin[:, None].expand(B, R, 3)  # (B, R, 3)
    geometry = torch.promote_types(points.dtype, torch.float32)  # project in >= float32 even for half maps
    points = points.to(geometry)
    K, c2w = src_K.to(points.device, geometry), src_c2w.to(points.device, geometry)

    uv, z = project_to_frames(points.reshape(B, R * S, 3), K, c2w)  # (B, V, RS, 2), (B, V, RS)
    u, v = uv.unbind(-1)  # (B, V, RS) each
    front = z > eps  # (B, V, RS)
    inside = (u >= 0) & (u <= W) & (v >= 0) & (v <= H)  # (B, V, RS)
    size = torch.tensor([W, H], dtype=geometry, device=points.device)  # (2,)
    grid = (2.0 * uv / size - 1.0).clamp(-2.0, 2.0)  # (B, V, RS, 2); same grid for image and feature map
    grid = torch.where(front[..., None], grid, torch.full_like(grid, -2.0))  # behind: outside, deterministic
    grid = grid.reshape(B * V, R, S, 2)  # (BV, R, S, 2)

    rgb = F.grid_sample(
        src_rgb.reshape(B * V, 3, H, W), grid.to(src_rgb.dtype),
        mode="bilinear", padding_mode=padding_mode, align_corners=False,
    )  # (BV, 3, R, S)
    feats = F.grid_sample(
        src_features.reshape(B * V, C, h, w), grid.to(src_features.dtype),
        mode="bilinear", padding_mode=padding_mode, align_corners=False,
    )  # (BV, C, R, S)
    rgb = rgb.reshape(B, V, 3, R, S).permute(0, 3, 4, 1, 2)  # (B, R, S, V, 3)
    feats = feats.reshape(B, V, C, R, S).permute(0, 3, 4, 1, 2)  # (B, R, S, V, C)
    mask = (front & inside).reshape(B, V, R, S).permute(0, 2, 3, 1)  # (B, R, S, V)
    ray_diff = relative_directions(points, target_origin.to(geometry), c2w[..., :3, 3], eps=eps)  # (B, R, S, V, 4)
    return ProjectedSamples(rgb=rgb, features=feats, mask=mask, ray_diff=ray_diff)


def _shape(x) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_inputs(points, src_rgb, src_features, src_K, src_c2w, target_origin, eps, padding_mode) -> None:
    where = "project_samples"
    if not isinstance(points, Tensor) or points.dim() != 4 or points.shape[-1] != 3 or not points.dtype.is_floating_point:
        raise InputError(f"{where}: points must be a float tensor (B, R, S, 3), got {_shape(points)}")
    B, R = points.shape[:2]
    if not isinstance(src_rgb, Tensor) or src_rgb.dim() != 5 or src_rgb.shape[0] != B or src_rgb.shape[2] != 3:
        raise InputError(f"{where}: src_rgb must be ({B}, V, 3, H, W), got {_shape(src_rgb)}")
    if not src_rgb.dtype.is_floating_point:
        raise InputError(f"{where}: src_rgb must be float in [0, 1], got dtype {src_rgb.dtype}")
    V = src_rgb.shape[1]
    if (not isinstance(src_features, Tensor) or src_features.dim() != 5 or src_features.shape[:2] != (B, V)
            or not src_features.dtype.is_floating_point):
        raise InputError(f"{where}: src_features must be a float tensor ({B}, {V}, C, h, w), got {_shape(src_features)}")
    if not isinstance(src_K, Tensor) or src_K.shape != (B, V, 3, 3):
        raise InputError(f"{where}: src_K must be ({B}, {V}, 3, 3), got {_shape(src_K)}")
    if not isinstance(src_c2w, Tensor) or src_c2w.shape != (B, V, 4, 4):
        raise InputError(f"{where}: src_c2w must be ({B}, {V}, 4, 4), got {_shape(src_c2w)}")
    if not isinstance(target_origin, Tensor) or target_origin.shape not in ((B, R, 3), (B, 3)):
        raise InputError(f"{where}: target_origin must be ({B}, {R}, 3) or ({B}, 3), got {_shape(target_origin)}")
    if padding_mode not in PADDING_MODES:
        raise InputError(f"{where}: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if not eps > 0:
        raise InputError(f"{where}: eps must be > 0, got {eps}")
    check_finite(f"{where}: points", points)
    check_finite(f"{where}: src_K", src_K)
    check_finite(f"{where}: src_c2w", src_c2w)
    check_finite(f"{where}: target_origin", target_origin)


__all__ = ["PADDING_MODES", "ProjectedSamples", "project_samples", "relative_directions", "sample_points_on_rays"]
