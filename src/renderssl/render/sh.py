"""View-dependent colour from real spherical harmonics (SH), degrees 0 to 3, as 3DGS and gsplat do.

Mechanism: each Gaussian carries K >= (degree + 1)^2 SH coefficients per channel, coeffs (B, N, K, D);
a camera sees it along the unit direction d = (mean - camera centre) / |mean - camera centre| (world
frame; the camera centre is the translation of c2w) and the colour is

    colour = max(0, sum_{l <= degree} sum_m Y_lm(d) coeff_lm + 0.5),

with the real SH basis Y_lm in 3DGS's order and signs (``eval_sh`` of the 3DGS / Plenoxels ``sh_utils``,
identical to gsplat's ``spherical_harmonics`` and its CUDA kernel), index k = l^2 + l + m:

    l = 0: C0
    l = 1: -C1 y, C1 z, -C1 x
    l = 2: C2[0] xy, C2[1] yz, C2[2] (2z^2 - x^2 - y^2), C2[3] xz, C2[4] (x^2 - y^2)
    l = 3: C3[0] y(3x^2 - y^2), C3[1] xyz, C3[2] y(4z^2 - x^2 - y^2), C3[3] z(2z^2 - 3x^2 - 3y^2),
           C3[4] x(4z^2 - x^2 - y^2), C3[5] z(x^2 - y^2), C3[6] x(x^2 - 3y^2)

(the orthonormal real SH with the Condon-Shortley phase: Y_1,-1 = -sqrt(3/4pi) y etc.). The + 0.5
offset and the clamp at 0 are gsplat's ``rasterization(sh_degree=...)`` (``clamp_min(colors + 0.5, 0)``)
and 3DGS's ``computeColorFromSH`` (``max(result + 0.5, 0)``); there is no upper clamp. So degree 0
gives colour = C0 coeff_0 + 0.5, and a plain RGB colour c is coeff_0 = (c - 0.5) / C0 (:func:`rgb_to_sh`).

Our choices where 3DGS/gsplat leave it open: any number of channels D (3DGS and gsplat use 3); K may
exceed (degree + 1)^2 (the extra coefficients are ignored, as gsplat does, so a model can raise the
degree during training); a zero direction (mean at the camera centre) is normalised with a 1e-12 floor
instead of producing NaN (such a Gaussian is culled by the near plane anyway).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..geometry import Cameras

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)
MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """(degree + 1)^2 basis functions up to ``degree``."""
    return (degree + 1) ** 2


def _check_degree(degree: int) -> None:
    if not isinstance(degree, int) or isinstance(degree, bool) or not 0 <= degree <= MAX_SH_DEGREE:
        raise InputError(f"sh degree must be an int in 0..{MAX_SH_DEGREE}, got {degree!r}")


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis of unit directions: dirs (..., 3) -> (..., (degree + 1)^2), 3DGS order and signs."""
    _check_degree(degree)
    x, y, z = dirs.unbind(-1)  # (...)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)  # (..., (degree + 1)^2)


def view_dirs(means: Tensor, cameras: Cameras) -> Tensor:
    """Unnormalised directions from each camera centre to each mean: means (B, N, 3), cameras (B, V)
    -> (B, V, N, 3)."""
    centres = cameras.c2w[..., :3, 3]  # (B, V, 3)
    return means[:, None] - centres[:, :, None]  # (B, V, N, 3)


def check_sh_coeffs(coeffs: Tensor, degree: int, name: str = "sh coeffs") -> None:
    """coeffs must be (B, N, K, D) with K >= (degree + 1)^2."""
    _check_degree(degree)
    if coeffs.dim() != 4 or coeffs.shape[2] < num_sh_bases(degree):
        raise InputError(
            f"{name}: expected shape (B, N, K >= {num_sh_bases(degree)}, D) for SH degree {degree}, "
            f"got {tuple(coeffs.shape)}"
        )


def sh_to_color(coeffs: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """Colour of each Gaussian seen along each direction.

    coeffs (B, N, K, D) with K >= (degree + 1)^2; dirs (B, V, N, 3) from camera centre to mean, any
    length (normalised here) -> (B, V, N, D) = max(0, sum_k Y_k(d) coeffs_k + 0.5).
    """
    check_sh_coeffs(coeffs, degree, "sh_to_color: coeffs")
    B, N = coeffs.shape[:2]
    if dirs.dim() != 4 or dirs.shape[0] != B or dirs.shape[2:] != (N, 3):
        raise InputError(f"sh_to_color: dirs must have shape ({B}, V, {N}, 3), got {tuple(dirs.shape)}")
    unit = dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # (B, V, N, 3)
    basis = sh_basis(unit, degree)  # (B, V, N, L)
    L = basis.shape[-1]
    color = torch.einsum("bvnl,bnld->bvnd", basis, coeffs[:, :, :L])  # (B, V, N, D)
    return torch.clamp_min(color + 0.5, 0.0)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Degree-0 coefficient of a plain colour: (..., D) -> (..., D) with C0 coeff + 0.5 = rgb."""
    return (rgb - 0.5) / SH_C0
