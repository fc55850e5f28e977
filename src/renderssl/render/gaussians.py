"""3D Gaussians for splatting and the math every rasterizer backend shares (gsplat's classic mode):
covariance from quaternion and scales, EWA projection to screen space with the eps2d blur and culling,
the per-pixel alpha rule and front-to-back compositing. See render/splat.py for the backends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError, check_finite
from ..geometry import Cameras
from ..geometry.rotations import quat_to_rotmat

ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
TILE = 16

@dataclass
class Gaussians:
    """B scenes of N Gaussians each, parameters after activation."""

    means: Tensor  # (B, N, 3) world
    quats: Tensor  # (B, N, 4) wxyz, need not be normalised
    scales: Tensor  # (B, N, 3) standard deviations along the local axes
    opacities: Tensor  # (B, N) in [0, 1]
    colors: Tensor  # (B, N, D) any D, or (B, V, N, D): one colour per camera (view-dependent, e.g. SH)

    def validate(self) -> None:
        B, N = self.means.shape[:2] if self.means.dim() == 3 else (None, None)
        expected = {"means": (B, N, 3), "quats": (B, N, 4), "scales": (B, N, 3), "opacities": (B, N)}
        for name, shape in expected.items():
            t = getattr(self, name)
            if B is None or tuple(t.shape) != shape:
                raise InputError(f"Gaussians.{name}: expected shape {shape if B else '(B, N, 3)'}, got {tuple(t.shape)}")
        c = self.colors
        if not ((c.dim() == 3 and c.shape[:2] == (B, N)) or (c.dim() == 4 and c.shape[0] == B and c.shape[2] == N)):
            raise InputError(f"Gaussians.colors: expected shape ({B}, {N}, D) or ({B}, V, {N}, D), got {tuple(c.shape)}")
        for name in ("means", "quats", "scales", "opacities", "colors"):
            check_finite(f"Gaussians.{name}", getattr(self, name))


def view_colors(colors: Tensor, V: int) -> Tensor:
    """Colours per camera: (B, N, D) shared by every camera (expanded, no copy) or (B, V, N, D) -> (B, V, N, D)."""
    if colors.dim() == 4:
        return colors
    B, N, D = colors.shape
    return colors[:, None].expand(B, V, N, D)


@dataclass
class SplatOutput:
    color: Tensor  # (B, V, D, H, W)
    depth: Tensor  # (B, V, 1, H, W) expected z-depth, 0 where alpha = 0
    alpha: Tensor  # (B, V, 1, H, W)
    visible: Tensor  # (B, V, N) bool: projected in front of the camera and inside the image
    overflow: int = 0  # (Gaussian, tile) pairs dropped because a tile held more than max_per_tile
    max_per_tile: int = 0  # largest number of Gaussians binned to one tile


@dataclass
class Projected:
    """Screen-space Gaussians for each (scene, camera)."""

    means2d: Tensor  # (B, V, N, 2) pixels
    conics: Tensor  # (B, V, N, 3) upper triangle (a, b, c) of Sigma_2d^-1
    depths: Tensor  # (B, V, N) camera z
    opacities: Tensor  # (B, V, N) after antialiasing compensation
    extent: Tensor  # (B, V, N, 2) half-width/height in pixels of the region where alpha >= 1/255
    valid: Tensor  # (B, V, N) bool


# ---------------------------------------------------------------------------------------------------
# Projection (shared by the torch backends)
# ---------------------------------------------------------------------------------------------------


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """Sigma = (R S)(R S)^T: (..., 4), (..., 3) -> (..., 3, 3)."""
    M = quat_to_rotmat(quats) * scales[..., None, :]  # (..., 3, 3) = R diag(s)
    return M @ M.transpose(-1, -2)


def project_gaussians(
    gaussians: Gaussians,
    cameras: Cameras,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    rasterize_mode: str = "classic",
) -> Projected:
    """EWA-project Gaussians (B, N) into cameras (B, V)."""
    w2c = cameras.w2c  # (B, V, 4, 4)
    W, t = w2c[..., :3, :3], w2c[..., :3, 3]
    means_c = torch.einsum("bvij,bnj->bvni", W, gaussians.means) + t[:, :, None]  # (B, V, N, 3)
    cov_w = covariance_3d(gaussians.quats, gaussians.scales)  # (B, N, 3, 3)
    cov_c = W[:, :, None] @ cov_w[:, None] @ W[:, :, None].transpose(-1, -2)  # (B, V, N, 3, 3)

    x, y, z = means_c.unbind(-1)  # (B, V, N)
    K = cameras.K[:, :, None]  # (B, V, 1, 3, 3)
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]  # (B, V, 1)
    zero = torch.zeros_like(z)
    if cameras.model == "pinhole":
        z_safe = torch.where(z > 0, z, torch.ones_like(z))
        lim_xp = (cameras.width - cx) / fx + 0.3 * (0.5 * cameras.width / fx)
        lim_xn = cx / fx + 0.3 * (0.5 * cameras.width / fx)
        lim_yp = (cameras.height - cy) / fy + 0.3 * (0.5 * cameras.height / fy)
        lim_yn = cy / fy + 0.3 * (0.5 * cameras.height / fy)
        tx = z_safe * torch.minimum(torch.maximum(x / z_safe, -lim_xn), lim_xp)
        ty = z_safe * torch.minimum(torch.maximum(y / z_safe, -lim_yn), lim_yp)
        J = torch.stack(
            [fx / z_safe, zero, -fx * tx / z_safe**2, zero, fy / z_safe, -fy * ty / z_safe**2], dim=-1
        ).reshape(z.shape + (2, 3))  # (B, V, N, 2, 3)
        means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)  # (B, V, N, 2)
    else:
        J = torch.stack([fx + zero, zero, zero, zero, fy + zero, zero], dim=-1).reshape(z.shape + (2, 3))
        means2d = torch.stack([fx * x + cx, fy * y + cy], dim=-1)
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # (B, V, N, 2, 2)

    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    valid = (z > near_plane) & (z < far_plane) & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # (B, V, N, 3)

    opacities = gaussians.opacities[:, None].expand_as(z)
    if rasterize_mode == "antialiased":
        opacities = opacities * torch.sqrt(torch.clamp(det_orig / det_safe, min=0.0))
    elif rasterize_mode != "classic":
        raise InputError(f"rasterize: unknown rasterize_mode {rasterize_mode!r}; expected 'classic' or 'antialiased'")

    with torch.no_grad():
        # alpha >= 1/255 needs d^T Sigma^-1 d <= 2 ln(255 o): the ellipse's bounding box.
        q_max = 2.0 * torch.log(torch.clamp(opacities.detach() * 255.0, min=1.0))  # (B, V, N)
        extent = torch.sqrt(q_max[..., None] * torch.stack([a, c], dim=-1).clamp(min=0))  # (B, V, N, 2)
        size = torch.tensor([cameras.width, cameras.height], dtype=extent.dtype, device=extent.device)
        on_screen = ((means2d + extent) > 0).all(-1) & ((means2d - extent) < size).all(-1)
        valid = valid & on_screen & (q_max > 0)
    return Projected(means2d, conics, z, opacities, extent, valid)


def gaussian_alpha(means2d: Tensor, conics: Tensor, opacities: Tensor, pixels: Tensor) -> Tensor:
    """alpha (..., P, K) of K Gaussians (..., K, 2|3|) at pixel centres (..., P, 2), thresholds applied."""
    d = means2d[..., None, :, :] - pixels[..., :, None, :]  # (..., P, K, 2)
    dx, dy = d.unbind(-1)
    A, B, C = (v[..., None, :] for v in conics.unbind(-1))
    sigma = 0.5 * (A * dx * dx + C * dy * dy) + B * dx * dy  # (..., P, K) >= 0: the conic is positive definite
    raw = opacities[..., None, :] * torch.exp(-sigma)
    return torch.where(raw >= ALPHA_MIN, torch.clamp(raw, max=ALPHA_MAX), torch.zeros_like(raw))


def composite(alpha: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing with early termination, plain autograd.

    alpha (..., P, K) sorted front to back, values (..., K, D) -> (sum_k w_k v_k (..., P, D),
    final transmittance (..., P)).
    """
    T_incl = torch.cumprod(1.0 - alpha, dim=-1)  # (..., P, K)
    kept = (T_incl > T_MIN).to(alpha.dtype)  # a prefix along K
    alpha = alpha * kept
    T_incl = torch.cumprod(1.0 - alpha, dim=-1)
    T_excl = torch.cat([torch.ones_like(T_incl[..., :1]), T_incl[..., :-1]], dim=-1)
    weights = alpha * T_excl  # (..., P, K)
    return weights @ values, T_incl[..., -1]
