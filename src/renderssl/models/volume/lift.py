"""Lift 2D image features into the voxel grid (PonderV2 Eq. 10, the image branch).

PonderV2 (Sec. 3.3, Eq. 10): ``F_dense = B(T_c2i T_l2c X_p, F_image)``: every predefined voxel centre
X_p is moved into each camera's frame (T_l2c, world-to-camera), projected to pixels (T_c2i, the
intrinsics) and the frame's feature map is bilinearly interpolated (B) there. The paper does not say
how frames are combined or which projections count; our choices (issue 12, item 5):

- visible only: a voxel contributes from frame k iff its centre is in front of the camera (z > 0,
  OpenCV camera frame) and projects inside the feature map, ``0 <= u < w`` and ``0 <= v < h``;
- averaged over the frames that see it (sum / count); 0 where no frame does. (UniPAD, PonderV2's image
  code, sums over cameras after weighting by a predicted depth distribution; that depth head is not
  part of Eq. 10 and is not reproduced.)
- pixel convention of renderssl cameras: pixel (i, j) covers [j, j + 1) x [i, i + 1), its centre is
  (j + 0.5, i + 0.5). ``F.grid_sample(..., align_corners=False)`` uses exactly this convention with
  ``g = 2 u / w - 1``; ``padding_mode="border"`` so that a projection in the outer half of a border pixel
  reads that pixel (and not a blend with zeros outside the image).
- ``K_intr`` must be the intrinsics of the *feature map* (h, w): for a stride-s encoder on an (H, W)
  image, ``Cameras.resized(w, h).K``.
- pinhole cameras; poses may carry a scale (``rigid_inverse`` inverts [sR | t]).

Vectorised over scenes B, frames K and voxels: one ``grid_sample`` over (B K) feature maps. Its
output holds (B, K, C, N) values for N voxels, the peak memory of this step (at 128 x 128 x 32 voxels,
K = 5 frames and C = 64 channels: 168 M values per scene).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError, check_finite
from ...geometry.cameras import rigid_inverse


def _check_lift_inputs(features, K_intr, c2w, centres) -> None:
    if not isinstance(features, Tensor) or features.dim() != 5 or not features.dtype.is_floating_point:
        got = getattr(features, "shape", type(features))
        raise InputError(f"lift_image_features: features must be a float tensor (B, K, C, h, w), got {got}")
    B, K = features.shape[:2]
    if not isinstance(K_intr, Tensor) or K_intr.shape != (B, K, 3, 3):
        raise InputError(f"lift_image_features: K_intr must be ({B}, {K}, 3, 3), got {getattr(K_intr, 'shape', type(K_intr))}")
    if not isinstance(c2w, Tensor) or c2w.shape != (B, K, 4, 4):
        raise InputError(f"lift_image_features: c2w must be ({B}, {K}, 4, 4), got {getattr(c2w, 'shape', type(c2w))}")
    if not isinstance(centres, Tensor) or centres.dim() not in (4, 5) or centres.shape[-1] != 3:
        got = getattr(centres, "shape", type(centres))
        raise InputError(f"lift_image_features: centres must be (Z, Y, X, 3) or (B, Z, Y, X, 3), got {got}")
    if centres.dim() == 5 and len(centres) != B:
        raise InputError(f"lift_image_features: centres has {len(centres)} scenes, features {B}")
    check_finite("lift_image_features: K_intr", K_intr)
    check_finite("lift_image_features: c2w", c2w)
    check_finite("lift_image_features: centres", centres)


def project_to_frames(points: Tensor, K_intr: Tensor, c2w: Tensor) -> tuple[Tensor, Tensor]:
    """World points (B, N, 3) into every frame -> (pixels (B, K, N, 2), z-depth (B, K, N))."""
    w2c = rigid_inverse(c2w)  # (B, K, 4, 4)
    cam = torch.einsum("bkij,bnj->bkni", w2c[..., :3, :3], points) + w2c[:, :, None, :3, 3]  # (B, K, N, 3)
    z = cam[..., 2]  # (B, K, N)
    safe_z = torch.where(z > 0, z, torch.ones_like(z))  # no division by <= 0: those are masked out anyway
    xy = cam[..., :2] / safe_z[..., None]  # (B, K, N, 2)
    focal = torch.stack([K_intr[..., 0, 0], K_intr[..., 1, 1]], dim=-1)[:, :, None]  # (B, K, 1, 2)
    principal = K_intr[..., :2, 2][:, :, None]  # (B, K, 1, 2)
    return xy * focal + principal, z  # (B, K, N, 2), (B, K, N); no skew, as Cameras.camera_to_pixels


def lift_image_features(features: Tensor, K_intr: Tensor, c2w: Tensor, centres: Tensor) -> Tensor:
    """Frame features (B, K, C, h, w) -> voxel features (B, C, Z, Y, X), averaged over the frames that see
    each voxel centre (``centres`` (Z, Y, X, 3) shared or (B, Z, Y, X, 3) per scene, world coordinates)."""
    _check_lift_inputs(features, K_intr, c2w, centres)
    B, K, C, h, w = features.shape
    Z, Y, X = centres.shape[-4:-1]
    dtype = features.dtype
    geometry = torch.promote_types(dtype, torch.float32)  # project in >= float32 even for half features
    device = features.device
    points = centres.to(device, geometry).reshape(-1, Z * Y * X, 3).expand(B, -1, -1)  # (B, N, 3)
    uv, z = project_to_frames(points, K_intr.to(device, geometry), c2w.to(device, geometry))  # (B, K, N, 2), (B, K, N)
    u, v = uv.unbind(-1)  # (B, K, N) each
    visible = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)  # (B, K, N)
    size = torch.tensor([w, h], dtype=geometry, device=device)  # (2,)
    grid = torch.where(visible[..., None], 2.0 * uv / size - 1.0, torch.zeros_like(uv))  # (B, K, N, 2)
    sampled = F.grid_sample(
        features.reshape(B * K, C, h, w), grid.to(dtype).reshape(B * K, 1, -1, 2),
        mode="bilinear", padding_mode="border", align_corners=False,
    ).reshape(B, K, C, -1)  # (B, K, C, N)
    weight = visible.to(dtype)  # (B, K, N)
    total = torch.einsum("bkcn,bkn->bcn", sampled, weight)  # (B, C, N)
    count = weight.sum(dim=1).clamp(min=1.0)[:, None]  # (B, 1, N)
    return (total / count).reshape(B, C, Z, Y, X)  # (B, C, Z, Y, X)
