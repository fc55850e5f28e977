"""Differentiable 3D Gaussian splatting over B scenes x V cameras in one call.

The math is gsplat's (classic mode):

- covariance Sigma = R S S^T R^T from a wxyz quaternion (normalised here) and post-activation scales;
- EWA projection: Sigma_2d = J W Sigma W^T J^T with W the world-to-camera rotation and J the affine
  Jacobian of the projection at the mean (pinhole: [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]
  with tx/z, ty/z clamped to 1.3x the field of view as gsplat does; orthographic: diag(fx, fy));
- blur: Sigma_2d += eps2d * I (0.3); ``rasterize_mode="antialiased"`` also scales opacity by
  sqrt(det Sigma_2d / det(Sigma_2d + eps2d I));
- culling: Gaussians with z outside [near_plane, far_plane] or a singular Sigma_2d are dropped;
- per pixel centre p (pixel (i, j) has centre (j + .5, i + .5)), with d = mean_2d - p:
  alpha = min(0.99, o exp(-1/2 d^T Sigma_2d^-1 d)); alpha < 1/255 is skipped (gsplat's extra guard
  against a negative exponent is omitted: the exponent of a positive-definite conic is >= 0);
- front-to-back compositing in camera-z order, w_k = alpha_k prod_{j<k}(1 - alpha_j), stopping before
  the Gaussian that would bring transmittance to <= 1e-4 (gsplat's T_min); color = sum w c + T bg.

Colours: ``Gaussians.colors`` (B, N, D) is seen alike by every camera; (B, V, N, D) gives each camera
its own (view-dependent colour): every backend composites, for camera v, the colours [:, v]. With
``sh_degree`` set, ``Gaussians.colors`` holds spherical-harmonics coefficients (B, N, K, D), K >=
(sh_degree + 1)^2, and each camera's colours are ``sh_to_color`` of the direction from its centre to
each mean (render/sh.py: 3DGS's basis, + 0.5, clamped at 0, as gsplat's ``rasterization(sh_degree=)``
for perspective and orthographic cameras alike). Our choice: the SH colours are evaluated in torch for
every backend, gsplat included (its fused SH kernel is not used), so all backends see the same colours.

Outputs: colour with any number of channels D (features can be splatted too), expected z-depth
``sum w z / sum w`` (gsplat's "ED"; 0 where nothing was hit) and alpha = 1 - T.

Backends behind :func:`rasterize`:

- ``dense``: every Gaussian against every pixel, plain autograd. The readable reference.
- ``tiles`` (default): Gaussians binned to 16x16 tiles by the exact screen extent where alpha can reach
  1/255 (sqrt(2 ln(255 o)) standard deviations; gsplat's 3.33 sigma is the o = 1 case), front-most
  ``max_per_tile`` per tile (the rest counted in ``overflow``), composited by a fused autograd function
  with a hand-written backward (render/splat_tiles.py). Identical to ``dense`` wherever no tile
  overflows (up to float rounding).
- ``compiled``: the tiles backend with its compositing step done by a per-pixel C++ loop
  (render/splat_compiled.py; built on first use, CPU only), gsplat's algorithm on the CPU, and its
  projection, binning and per-pair coefficients in C++ too (render/splat_prepare_compiled.py).
- ``gsplat``: gsplat's CUDA rasterizer, used only when gsplat is installed and the tensors are on CUDA.
- ``auto``: ``gsplat`` for CUDA tensors when installed, else ``compiled`` on CPU when it builds, else
  ``tiles``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..errors import InputError, check_finite
from ..geometry import Cameras
from .gaussians import (
    ALPHA_MAX, ALPHA_MIN, T_MIN, TILE, Gaussians, Projected, SplatOutput, composite, covariance_3d, gaussian_alpha,
    project_gaussians, view_colors,
)
from .sh import check_sh_coeffs, sh_to_color, view_dirs
from .splat_tiles import _rasterize_tiles

BACKENDS = ("tiles", "dense", "compiled", "gsplat", "auto")

__all__ = [
    "ALPHA_MAX", "ALPHA_MIN", "BACKENDS", "T_MIN", "TILE", "Gaussians", "Projected", "SplatOutput", "composite",
    "covariance_3d", "gaussian_alpha", "gsplat_available", "project_gaussians", "rasterize", "rasterize_sh",
]


# ---------------------------------------------------------------------------------------------------
# Dense backend: the reference
# ---------------------------------------------------------------------------------------------------


def _rasterize_dense(proj: Projected, colors: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor, int, int]:
    """-> (colour+depth (B, V, H*W, D+1), transmittance (B, V, H*W), 0, N)."""
    B, V, N = proj.depths.shape
    order = torch.argsort(torch.where(proj.valid, proj.depths, torch.full_like(proj.depths, float("inf"))), dim=-1)

    def by_depth(t: Tensor) -> Tensor:  # (B, V, N, ...) sorted along N
        return torch.gather(t, 2, order.reshape(B, V, N, *([1] * (t.dim() - 3))).expand_as(t))

    values = torch.cat([view_colors(colors, V), proj.depths[..., None]], dim=-1)  # (B, V, N, D+1)
    opac = torch.where(proj.valid, proj.opacities, torch.zeros_like(proj.opacities))
    pixels = cameras.pixel_centers().reshape(-1, 2)  # (H*W, 2)
    alpha = gaussian_alpha(by_depth(proj.means2d), by_depth(proj.conics), by_depth(opac), pixels)  # (B, V, HW, N)
    out, T = composite(alpha, by_depth(values))
    return out, T, 0, N


# ---------------------------------------------------------------------------------------------------
# gsplat backend (CUDA only)
# ---------------------------------------------------------------------------------------------------


def gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _rasterize_gsplat(gaussians, cameras, background, near_plane, far_plane, eps2d, rasterize_mode) -> SplatOutput:
    from gsplat import rasterization

    B, N = gaussians.opacities.shape
    V, D = cameras.batch_shape[1], gaussians.colors.shape[-1]
    # gsplat appends the depth channel's zero background itself in RGB+ED mode.
    backgrounds = None if background is None else background.expand(B, V, D)
    colors, alphas, meta = rasterization(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors,
        cameras.w2c, cameras.K, cameras.width, cameras.height,  # colors (B, N, D) or (B, V, N, D): gsplat takes both
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, backgrounds=backgrounds,
        render_mode="RGB+ED", rasterize_mode=rasterize_mode, camera_model=cameras.model, packed=False,
    )  # (B, V, H, W, D+1), (B, V, H, W, 1)
    colors = colors.permute(0, 1, 4, 2, 3)
    alphas = alphas.permute(0, 1, 4, 2, 3)
    visible = meta["radii"].reshape(B, V, N, -1).amax(-1) > 0
    return SplatOutput(colors[:, :, :D], colors[:, :, D:], alphas, visible)


# ---------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------


def resolve_auto_backend(device: torch.device) -> str:
    if device.type == "cuda":
        return "gsplat" if gsplat_available() else "tiles"
    from .splat_compiled import compiled_kernel

    return "compiled" if device.type == "cpu" and compiled_kernel() is not None else "tiles"


def _per_scene_cameras(cameras: Cameras, B: int) -> Cameras:
    """Cameras (V,) shared by every scene -> (B, V); (B, V) checked and returned."""
    if len(cameras.batch_shape) == 1:
        cameras = Cameras(
            cameras.K.expand(B, -1, 3, 3), cameras.c2w.expand(B, -1, 4, 4), cameras.width, cameras.height, cameras.model
        )
    if len(cameras.batch_shape) != 2 or cameras.batch_shape[0] != B:
        raise InputError(f"rasterize: cameras must have batch shape (B={B}, V) or (V,), got {tuple(cameras.batch_shape)}")
    return cameras


def _colors_from_sh(gaussians: Gaussians, cameras: Cameras, sh_degree: int) -> Gaussians:
    """Gaussians whose colors are SH coefficients (B, N, K, D) -> per-camera colours (B, V, N, D)."""
    coeffs = gaussians.colors
    check_sh_coeffs(coeffs, sh_degree, "rasterize: Gaussians.colors (SH coefficients, sh_degree set)")
    replace(gaussians, colors=coeffs[:, :, 0]).validate()  # every other field's shape and finiteness
    check_finite("Gaussians.colors", coeffs)
    cameras = _per_scene_cameras(cameras, gaussians.means.shape[0])
    return replace(gaussians, colors=sh_to_color(coeffs, view_dirs(gaussians.means, cameras), sh_degree))


def _check_inputs(gaussians: Gaussians, cameras: Cameras, background: Tensor | None) -> Cameras:
    gaussians.validate()
    B = gaussians.means.shape[0]
    cameras = _per_scene_cameras(cameras, B)
    V = cameras.batch_shape[1]
    if gaussians.colors.dim() == 4 and gaussians.colors.shape[1] != V:
        raise InputError(
            f"rasterize: per-camera Gaussians.colors (B, V, N, D) must have V = {V} like the cameras, "
            f"got {tuple(gaussians.colors.shape)}"
        )
    D = gaussians.colors.shape[-1]
    if background is not None and tuple(background.shape) != (D,):
        raise InputError(f"rasterize: background must have shape ({D},) like the colour channels, got {tuple(background.shape)}")
    return cameras


def rasterize(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Tensor | None = None,
    backend: str = "tiles",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    rasterize_mode: str = "classic",
    max_per_tile: int = 65536,
    sh_degree: int | None = None,
) -> SplatOutput:
    """Render B scenes of Gaussians into their V cameras each.

    gaussians: (B, N, ...) parameters after activation, colors (B, N, D) or per camera (B, V, N, D);
    cameras: batch shape (B, V), or (V,) shared by every scene; background: (D,) colour behind the
    Gaussians (default 0); sh_degree: None, or 0..3 when gaussians.colors holds SH coefficients
    (B, N, K, D) turned into per-camera colours by render/sh.py (see :func:`rasterize_sh`).
    """
    if backend not in BACKENDS:
        raise InputError(f"rasterize: unknown backend {backend!r}; expected one of {BACKENDS}")
    if sh_degree is not None:
        gaussians = _colors_from_sh(gaussians, cameras, sh_degree)
    cameras = _check_inputs(gaussians, cameras, background)
    if backend == "auto":
        backend = resolve_auto_backend(gaussians.means.device)
    if backend == "compiled" and gaussians.means.device.type != "cpu":
        raise InputError("rasterize: backend 'compiled' runs on CPU tensors; use 'gsplat' or 'tiles' on CUDA")
    if backend == "gsplat":
        if not (gsplat_available() and gaussians.means.is_cuda):
            raise InputError("rasterize: backend 'gsplat' needs the gsplat package and CUDA tensors; use 'tiles' on CPU")
        return _rasterize_gsplat(gaussians, cameras, background, near_plane, far_plane, eps2d, rasterize_mode)

    project = project_gaussians
    if backend == "compiled":  # its C++ twin (render/splat_prepare_compiled.py), torch where that cannot run
        from .splat_prepare_compiled import project_gaussians_compiled as project
    proj = project(gaussians, cameras, near_plane, far_plane, eps2d, rasterize_mode)
    if backend == "dense":
        out, T, overflow, biggest = _rasterize_dense(proj, gaussians.colors, cameras)
    else:
        if max_per_tile < 1:
            raise InputError(f"rasterize: max_per_tile must be >= 1, got {max_per_tile}")
        out, T, overflow, biggest = _rasterize_tiles(proj, gaussians.colors, cameras, max_per_tile, compiled=backend == "compiled")

    B, V = cameras.batch_shape
    H, W = cameras.height, cameras.width
    D = gaussians.colors.shape[-1]
    alpha = 1.0 - T  # (B, V, HW)
    color, depth_sum = out[..., :D], out[..., D]
    if background is not None:
        color = color + T[..., None] * background
    depth = depth_sum / alpha.clamp(min=1e-10)
    return SplatOutput(
        color=color.transpose(-1, -2).reshape(B, V, D, H, W),
        depth=depth.reshape(B, V, 1, H, W),
        alpha=alpha.reshape(B, V, 1, H, W),
        visible=proj.valid,
        overflow=overflow,
        max_per_tile=biggest,
    )


def rasterize_sh(gaussians: Gaussians, cameras: Cameras, sh_degree: int, **kwargs) -> SplatOutput:
    """:func:`rasterize` of Gaussians whose ``colors`` are SH coefficients (B, N, K, D), K >=
    (sh_degree + 1)^2: each camera sees max(0, sum_k Y_k(dir) c_k + 0.5) with dir from its centre to the
    mean (render/sh.py). Same keyword arguments as :func:`rasterize`."""
    return rasterize(gaussians, cameras, sh_degree=sh_degree, **kwargs)
