"""GS³'s Gaussian heads: k 3D Gaussians per visible pixel or point, from per-element features.

Two centre parameterisations (GS³ Sec. 3.2, both selectable through ``GaussianHeadConfig.center``):

``depth_bins`` (:class:`DepthBinGaussianHead`, GS³ Eq. 3; pixelSplat's mechanism): every element (a
pixel of an image, or a point that came from a pixel of an RGB-D frame) has a known ray: the camera
centre and the direction through its pixel. The head predicts a categorical distribution over Z depth
bins between the scene's near and far planes (softmax of Z logits) and one offset per bin
(sigmoid, in [0, 1]; GS³: delta in [0, 1]^Z). The k most probable bins (top-k, distinct) give the k
Gaussians of the element; bin i with offset delta sits at normalised position (i + delta) / Z, which
:func:`depth_from_bins` maps to z-depth (:func:`bins_from_depth` is its inverse). The Gaussian's mean is
``origin + depth * direction`` with the direction scaled to unit camera z, so ``depth`` is z-depth along
the optical axis (OpenCV), never distance along the ray.

``point_offset`` (:class:`PointGaussianHead`, GS³ Eq. 4-5): mu_j = p_i + delta mu_j, the point plus a
learned offset, k Gaussians per point.

Both heads receive elements packed cloud by cloud (renderssl's point batching: features (N, C), an
``offset`` (B,) of cumulative counts) and a ``keep`` (N,) mask: only kept (visible) elements go
through the network and make Gaussians (GS³ Sec. 3.4: the masked half produces none). The Gaussians
of scene b are its kept elements in packed order, k consecutive slots each, padded to the largest
scene; padding slots have opacity 0 (the rasterizer culls them: they draw nothing and get no
gradient), ``valid`` False and ``source`` -1.

Activations (parameters leave the heads activated, as ``render.splat`` expects):

- scale (3): ``(scale_min_px + (scale_max_px - scale_min_px) sigmoid(s)) * footprint``, where
  footprint is the world size of one pixel at the Gaussian: ``depth (1/fx + 1/fy) / 2`` for
  depth-bin Gaussians. With the defaults 0.1 and 3.0 px this is exactly pixelSplat's
  ``(0.5 + 14.5 sigmoid(s)) * 0.1 * depth * (1/fx + 1/fy)``. Point Gaussians take the footprint per
  point from the caller (our choice: the world size of the point's source pixel, ``z (1/fx + 1/fy) / 2``
  for a back-projected RGB-D pixel; a float is one size for all), so both heads size Gaussians in
  pixels of the input and the defaults do not depend on the scene's units or the resolution.
- rotation (4): wxyz quaternion ``normalize(q + (1, 0, 0, 0))`` (our choice: a zero output is the
  identity). Depth-bin Gaussians predict it in the camera frame and it is rotated to the world by the
  camera's c2w rotation, ``q_world = q_c2w * q`` (pixelSplat rotates Sigma by c2w likewise); point
  Gaussians predict it in the world frame (the points are in the world; there is no camera).
- opacity: depth-bin Gaussians: ``opacity="probability_x_alpha"`` (default, our choice)
  ``p_bin * sigmoid(a)``: GS³ Eq. 3 predicts an alpha per Gaussian, and top-k selection is not
  differentiable, so multiplying by the chosen bin's probability (pixelSplat's "opacity = pdf at the
  bucket") is what lets the rendering loss reach the bin logits; ``"probability"`` is pixelSplat's
  ``p_bin`` alone (its division by the number of Gaussians per pixel is not needed: top-k bins are
  distinct, so the k probabilities already sum to <= 1). Point Gaussians: ``sigmoid(a)``.
- colour: spherical-harmonics coefficients of degree ``sh_degree``, ``(B, M, (d+1)^2, 3)``; the raw
  output times pixelSplat's per-degree mask (1 for degree 0, ``0.1 * 0.25^l`` for degree l >= 1, so
  that view dependence starts small). Degree 0 is the plain colour ``max(0, C0 * coeff + 0.5)``
  (:func:`sh0_to_color`; gsplat's and render/sh.py's convention, so both renders agree).
  ``HeadOutput.gaussians.colors`` holds this degree-0 colour; :meth:`HeadOutput.sh_gaussians` holds the
  coefficients for ``rasterize(..., sh_degree=d)`` (render/sh.py: view-dependent, degrees 0..3).
- sub-pixel shift (depth bins only, pixelSplat; ``subpixel_shift``): the ray passes through
  ``pixel + (sigmoid(t) - 0.5)`` pixels, so a zero output is the pixel itself.
- point offset: ``delta mu = max_offset_px * footprint * tanh(o)`` (our choice: bounded, in pixels of
  the source view like the scales; a zero output leaves the Gaussian on its point).

Network (GS³: "a lightweight feed-forward network f_theta", otherwise unspecified): pixelSplat's
``ReLU -> Linear`` (``hidden_dim = 0``), or ``Linear -> ReLU -> Linear`` through ``hidden_dim``
channels after a leading ReLU. One categorical distribution per element is shared by its k Gaussians
(GS³: "selecting the top-k depth bins"); each Gaussian has its own scale, rotation, alpha, shift and
colour (GS³ Eq. 3 lists k sets; pixelSplat shares them: our choice follows GS³).

Paper defaults and our choices where GS³ is silent: Z = 32 bins (pixelSplat); spacing
``bin_spacing="depth"``, uniform in depth between near and far, as GS³'s text says ("we uniformly
discretize the depth range into Z bins"), ``"disparity"`` is pixelSplat's and mvsplat's uniform
spacing in 1/depth; k = 3 Gaussians per element (pixelSplat's number; GS³ gives none); top-k always,
in training as in evaluation (pixelSplat samples bins by inverse CDF while training; GS³ says top-k).
Only pinhole cameras carry depth-bin rays (orthographic rays have no depth-proportional footprint).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ...data.points import cloud_index
from ...errors import InputError
from ...geometry import Cameras
from ...geometry.rotations import quat_multiply, rotmat_to_quat
from ...render.gaussians import Gaussians
from ...render.sh import MAX_SH_DEGREE, SH_C0

C0 = SH_C0  # degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
CENTERS = ("depth_bins", "point_offset")
SPACINGS = ("depth", "disparity")
OPACITIES = ("probability_x_alpha", "probability")


# ---------------------------------------------------------------------------------------------------
# Depth bins
# ---------------------------------------------------------------------------------------------------


def _check_range(near, far, spacing: str, where: str) -> None:
    if spacing not in SPACINGS:
        raise InputError(f"{where}: spacing {spacing!r} is not one of {list(SPACINGS)}")
    near_t, far_t = torch.as_tensor(near), torch.as_tensor(far)
    near_ok = (near_t > 0) if spacing == "disparity" else (near_t >= 0)
    if not bool(near_ok.all()):
        raise InputError(f"{where}: near must be {'> 0' if spacing == 'disparity' else '>= 0'}, got {near_t.min().item()}")
    if not bool((far_t > near_t).all()):
        raise InputError(f"{where}: far must be > near everywhere")


def _normalized_to_depth(r: Tensor, near, far, spacing: str) -> Tensor:
    """Normalised bin position r in [0, 1] (0 = near, 1 = far) -> z-depth."""
    if spacing == "depth":
        return near + r * (far - near)
    return 1.0 / (1.0 / near - r * (1.0 / near - 1.0 / far))  # pixelSplat: 1 / ((1 - r)(1/n - 1/f) + 1/f)


def _depth_to_normalized(depth: Tensor, near, far, spacing: str) -> Tensor:
    if spacing == "depth":
        return (depth - near) / (far - near)
    return (1.0 / near - 1.0 / depth) / (1.0 / near - 1.0 / far)


def depth_from_bins(index: Tensor, offset: Tensor, near, far, num_bins: int, spacing: str = "depth") -> Tensor:
    """Bin ``index`` (...) int in [0, Z) and ``offset`` (...) in [0, 1] -> z-depth (...).

    ``near``/``far``: floats or tensors broadcastable to ``index``. The normalised position
    ``(index + offset) / Z`` is spaced uniformly in depth (``spacing="depth"``) or in disparity
    (``"disparity"``, pixelSplat) between near (0) and far (1).
    """
    if num_bins < 1:
        raise InputError(f"depth_from_bins: num_bins must be >= 1, got {num_bins}")
    _check_range(near, far, spacing, "depth_from_bins")
    r = (index.to(offset.dtype) + offset) / num_bins  # (...)
    depth = _normalized_to_depth(r, near, far, spacing)  # (...)
    lo, hi = (torch.as_tensor(v, dtype=depth.dtype, device=depth.device) for v in (near, far))
    return torch.minimum(torch.maximum(depth, lo), hi)  # rounding never leaves [near, far]


def bins_from_depth(depth: Tensor, near, far, num_bins: int, spacing: str = "depth") -> tuple[Tensor, Tensor]:
    """z-depth (...) -> (bin index (...) int64 in [0, Z), offset (...) in [0, 1]), the inverse of
    :func:`depth_from_bins`. Depths outside [near, far] are clamped to it. A depth on a bin boundary
    belongs to the upper bin with offset 0 (far: the last bin, offset 1); positions within a few ulps of
    a boundary are snapped to it, so ``(i, 0)`` round-trips to ``(i, 0)`` and not ``(i - 1, 1 - eps)``.
    """
    if num_bins < 1:
        raise InputError(f"bins_from_depth: num_bins must be >= 1, got {num_bins}")
    _check_range(near, far, spacing, "bins_from_depth")
    if not depth.is_floating_point():
        raise InputError(f"bins_from_depth: depth must be a floating-point tensor, got {depth.dtype}")
    t = _depth_to_normalized(depth, near, far, spacing).clamp(0.0, 1.0) * num_bins  # (...) in [0, Z]
    snapped = t.round()
    tol = 16 * torch.finfo(t.dtype).eps * max(num_bins, 1)
    t = torch.where((t - snapped).abs() <= tol, snapped, t)
    index = t.floor().clamp(max=num_bins - 1)  # (...)
    return index.to(torch.int64), t - index


# ---------------------------------------------------------------------------------------------------
# Spherical harmonics coefficients
# ---------------------------------------------------------------------------------------------------


def num_sh_coeffs(degree: int) -> int:
    return (degree + 1) ** 2


def sh0_to_color(sh: Tensor) -> Tensor:
    """Plain colour of the degree-0 term: SH (..., K, 3) -> max(0, C0 * sh[..., 0, :] + 0.5) (..., 3),
    what render/sh.py's ``sh_to_color`` gives at degree 0 from any direction."""
    return (C0 * sh[..., 0, :] + 0.5).clamp_min(0.0)


def color_to_sh0(rgb: Tensor) -> Tensor:
    """The degree-0 coefficient (..., 3) whose plain colour is ``rgb`` (..., 3)."""
    return (rgb - 0.5) / C0


def sh_degree_mask(degree: int) -> Tensor:
    """((d+1)^2,) pixelSplat's per-coefficient scale: 1 for degree 0, 0.1 * 0.25^l for degree l."""
    mask = torch.ones(num_sh_coeffs(degree))
    for l in range(1, degree + 1):
        mask[l * l:(l + 1) ** 2] = 0.1 * 0.25**l
    return mask


# ---------------------------------------------------------------------------------------------------
# Config and outputs
# ---------------------------------------------------------------------------------------------------


@dataclass
class GaussianHeadConfig:
    in_dim: int = 128  # per-element feature channels (GS³: 128-d encoders)
    center: str = "depth_bins"  # depth_bins (Eq. 3) | point_offset (Eq. 4-5)
    gaussians_per_element: int = 3  # k (pixelSplat's 3; GS³ gives no value)
    hidden_dim: int = 0  # 0: ReLU -> Linear (pixelSplat); else ReLU -> Linear -> ReLU -> Linear
    sh_degree: int = 0
    scale_min_px: float = 0.1  # scales in pixels of the source view (pixelSplat: 0.5 * 0.2)
    scale_max_px: float = 3.0  # (pixelSplat: 15 * 0.2)
    # depth_bins
    num_bins: int = 32  # Z
    bin_spacing: str = "depth"  # depth (GS³'s text) | disparity (pixelSplat)
    opacity: str = "probability_x_alpha"  # probability_x_alpha | probability (pixelSplat)
    subpixel_shift: bool = True  # pixelSplat's (sigmoid - 0.5) pixel shift of the ray
    # point_offset
    max_offset_px: float = 4.0  # |delta mu| per axis <= max_offset_px source-pixel footprints

    def __post_init__(self):
        def bad(name, why):
            raise InputError(f"GaussianHeadConfig.{name}: {why} (got {getattr(self, name)!r})")

        if self.center not in CENTERS:
            bad("center", f"expected one of {list(CENTERS)}")
        if self.bin_spacing not in SPACINGS:
            bad("bin_spacing", f"expected one of {list(SPACINGS)}")
        if self.opacity not in OPACITIES:
            bad("opacity", f"expected one of {list(OPACITIES)}")
        for name in ("in_dim", "gaussians_per_element", "num_bins"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        if self.hidden_dim < 0:
            bad("hidden_dim", "must be >= 0")
        if not 0 <= self.sh_degree <= MAX_SH_DEGREE:
            bad("sh_degree", f"must be in 0..{MAX_SH_DEGREE} (render/sh.py)")
        if not 0 < self.scale_min_px <= self.scale_max_px:
            bad("scale_min_px", "need 0 < scale_min_px <= scale_max_px")
        if self.max_offset_px < 0:
            bad("max_offset_px", "must be >= 0")
        if self.center == "depth_bins" and self.gaussians_per_element > self.num_bins:
            bad("gaussians_per_element", f"top-k needs k <= num_bins ({self.num_bins})")


@dataclass
class HeadOutput:
    gaussians: Gaussians  # (B, M, ...) M = k * most kept elements of a scene; colours: degree-0 colour
    sh: Tensor  # (B, M, (d+1)^2, 3) spherical-harmonics coefficients
    valid: Tensor  # (B, M) bool: a real Gaussian (False: padding, opacity 0)
    source: Tensor  # (B, M) int64 packed index of the element it came from, -1 for padding
    depth: Tensor | None = None  # (B, M) z-depth along its ray (depth_bins; 0 for padding)
    bin_logits: Tensor | None = None  # (n, Z) logits of the n kept elements (depth_bins)
    bin_index: Tensor | None = None  # (n, k) chosen bins of the kept elements (depth_bins)

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[-2] ** 0.5)) - 1

    def sh_gaussians(self) -> Gaussians:
        """The Gaussians with ``colors`` = SH coefficients (B, M, (d+1)^2, 3), for
        ``rasterize(..., sh_degree=self.sh_degree)`` (view-dependent colour, render/sh.py)."""
        return replace(self.gaussians, colors=self.sh)


@dataclass
class PixelRays:
    """Per-element pinhole rays: camera centre, direction with unit camera z (the ray parameter is
    z-depth), the camera's c2w rotation and focal lengths, and the scene's near/far."""

    origins: Tensor  # (N, 3) world
    directions: Tensor  # (N, 3) world, camera z component 1
    rotations: Tensor  # (N, 3, 3) c2w rotation
    focal: Tensor  # (N, 2) fx, fy pixels
    near: Tensor  # (N,)
    far: Tensor  # (N,)

    def __len__(self) -> int:
        return self.origins.shape[0]

    def select(self, index: Tensor) -> "PixelRays":
        return PixelRays(*(getattr(self, f)[index] for f in ("origins", "directions", "rotations", "focal", "near", "far")))

    @staticmethod
    def from_pixels(cameras: Cameras, uv: Tensor, view: Tensor, batch: Tensor, near, far) -> "PixelRays":
        """Rays through pixel coordinates ``uv`` (N, 2) (centres at j + 0.5) of camera ``view`` (N,) of
        scene ``batch`` (N,) in ``cameras`` with batch shape (B, V); ``near``/``far``: floats or (B,)."""
        if cameras.model != "pinhole":
            raise InputError(f"PixelRays.from_pixels: cameras.model must be 'pinhole' for depth-bin rays, got {cameras.model!r}")
        if len(cameras.batch_shape) != 2:
            raise InputError(f"PixelRays.from_pixels: cameras must have batch shape (B, V), got {tuple(cameras.batch_shape)}")
        N = uv.shape[0]
        if uv.shape != (N, 2) or view.shape != (N,) or batch.shape != (N,):
            raise InputError(
                f"PixelRays.from_pixels: expected uv (N, 2), view (N,), batch (N,), got "
                f"{tuple(uv.shape)}, {tuple(view.shape)}, {tuple(batch.shape)}"
            )
        B, V = cameras.batch_shape
        if N and (int(view.min()) < 0 or int(view.max()) >= V or int(batch.min()) < 0 or int(batch.max()) >= B):
            raise InputError(f"PixelRays.from_pixels: view must index 0..{V - 1} and batch 0..{B - 1}")
        K = cameras.K[batch, view]  # (N, 3, 3)
        c2w = cameras.c2w[batch, view]  # (N, 4, 4)
        R = c2w[:, :3, :3]  # (N, 3, 3)
        focal = torch.stack([K[:, 0, 0], K[:, 1, 1]], dim=-1)  # (N, 2)
        xy = (uv.to(K.dtype) - K[:, :2, 2]) / focal  # (N, 2)
        d_cam = torch.cat([xy, torch.ones_like(xy[:, :1])], dim=-1)  # (N, 3), z = 1
        dirs = (R @ d_cam[..., None]).squeeze(-1)  # (N, 3)
        near_t = torch.as_tensor(near, dtype=K.dtype, device=K.device).expand(B)[batch]  # (N,)
        far_t = torch.as_tensor(far, dtype=K.dtype, device=K.device).expand(B)[batch]  # (N,)
        _check_range(near_t, far_t, "depth", "PixelRays.from_pixels")
        return PixelRays(c2w[:, :3, 3], dirs, R, focal, near_t, far_t)


def image_elements(cameras: Cameras) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every pixel of every view of cameras (B, V), packed scene by scene in (b, v, i, j) order ->
    (uv (B V H W, 2), view (B V H W,), batch (B V H W,), offset (B,) cumulative counts)."""
    B, V = cameras.batch_shape
    H, W = cameras.height, cameras.width
    uv = cameras.pixel_centers().reshape(1, 1, H * W, 2).expand(B, V, H * W, 2).reshape(-1, 2)  # (BVHW, 2)
    idx = torch.arange(B * V * H * W, device=cameras.device)
    view = (idx // (H * W)) % V  # (BVHW,)
    batch = idx // (V * H * W)  # (BVHW,)
    offset = torch.arange(1, B + 1, device=cameras.device) * (V * H * W)  # (B,)
    return uv, view, batch, offset


# ---------------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------------


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    if hidden_dim == 0:
        return nn.Sequential(nn.ReLU(), nn.Linear(in_dim, out_dim))
    return nn.Sequential(nn.ReLU(), nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def _pad_scenes(values: Tensor, batch: Tensor, num_scenes: int, fill: float = 0.0) -> Tensor:
    """(n, k, ...) rows of kept elements in packed order with scene index ``batch`` (n,) ->
    (B, m * k, ...), m = most rows in a scene, each scene's rows first, the rest ``fill``."""
    n, k = values.shape[:2]
    counts = torch.bincount(batch, minlength=num_scenes)  # (B,)
    m = int(counts.max()) if n else 0
    starts = counts.cumsum(0) - counts  # (B,)
    pos = torch.arange(n, device=values.device) - starts[batch]  # (n,) slot within its scene
    out = values.new_full((num_scenes, m, k) + tuple(values.shape[2:]), fill)  # (B, m, k, ...)
    out = out.index_put((batch, pos), values)  # differentiable scatter
    return out.reshape((num_scenes, m * k) + tuple(values.shape[2:]))


class _GaussianHeadBase(nn.Module):
    def __init__(self, config: GaussianHeadConfig, center_dims: int):
        super().__init__()
        self.config = config
        S = num_sh_coeffs(config.sh_degree)
        # per Gaussian: scale 3, rotation 4, alpha 1, [shift 2 | offset 3], SH 3 S
        self.per_gaussian = 3 + 4 + 1 + center_dims + 3 * S
        self.register_buffer("sh_mask", sh_degree_mask(config.sh_degree), persistent=False)

    def _kept(self, features: Tensor, offset: Tensor | None, keep: Tensor | None, where: str) -> tuple[Tensor, Tensor, int]:
        """-> (indices of kept elements (n,), their scene (n,), B)."""
        if features.dim() != 2 or features.shape[1] != self.config.in_dim:
            raise InputError(f"{where}: features must be (N, in_dim={self.config.in_dim}), got {tuple(features.shape)}")
        N = features.shape[0]
        batch, counts = cloud_index(offset, N, features.device)
        if keep is None:
            idx = torch.arange(N, device=features.device)
        else:
            if keep.shape != (N,) or keep.dtype != torch.bool:
                raise InputError(f"{where}: keep must be a bool tensor of shape ({N},), got {keep.dtype} {tuple(keep.shape)}")
            idx = keep.nonzero().squeeze(-1)  # (n,)
        return idx, batch[idx], len(counts)

    def _split_common(self, raw: Tensor) -> dict[str, Tensor]:
        """(n, k, per_gaussian) -> the activated-later raw parts shared by both heads."""
        S = num_sh_coeffs(self.config.sh_degree)
        scale, rot, alpha, center, sh = raw.split([3, 4, 1, self.per_gaussian - 8 - 3 * S, 3 * S], dim=-1)
        return {"scale": scale, "rotation": rot, "alpha": alpha.squeeze(-1), "center": center,
                "sh": sh.reshape(raw.shape[:2] + (S, 3))}

    def _activate_common(self, parts: dict[str, Tensor], footprint: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> (scales (n, k, 3), local quaternions (n, k, 4) wxyz, SH (n, k, S, 3))."""
        cfg = self.config
        span = cfg.scale_max_px - cfg.scale_min_px
        scales = (cfg.scale_min_px + span * torch.sigmoid(parts["scale"])) * footprint[..., None]  # (n, k, 3)
        identity = parts["rotation"].new_tensor([1.0, 0.0, 0.0, 0.0])
        quats = nn.functional.normalize(parts["rotation"] + identity, dim=-1)  # (n, k, 4)
        sh = parts["sh"] * self.sh_mask.to(parts["sh"].dtype)[:, None]  # (n, k, S, 3)
        return scales, quats, sh

    def _assemble(self, means, quats, scales, opacities, sh, idx, batch, B, depth=None, **extra) -> HeadOutput:
        """Per-element (n, k, ...) parameters -> padded per-scene HeadOutput."""
        n, k = means.shape[:2]
        source = _pad_scenes(idx[:, None].expand(n, k), batch, B, fill=-1)  # (B, M)
        sh_p = _pad_scenes(sh, batch, B)  # (B, M, S, 3)
        gaussians = Gaussians(
            means=_pad_scenes(means, batch, B),  # (B, M, 3)
            quats=_pad_scenes(quats, batch, B, fill=0.0) + (source < 0)[..., None] * quats.new_tensor([1.0, 0, 0, 0]),
            scales=_pad_scenes(scales, batch, B, fill=1e-6),  # (B, M, 3)
            opacities=_pad_scenes(opacities, batch, B),  # (B, M), 0 for padding
            colors=sh0_to_color(sh_p) * (source >= 0)[..., None],  # (B, M, 3)
        )
        return HeadOutput(
            gaussians=gaussians, sh=sh_p, valid=source >= 0, source=source,
            depth=None if depth is None else _pad_scenes(depth, batch, B), **extra,
        )


class DepthBinGaussianHead(_GaussianHeadBase):
    """k Gaussians per kept pixel (or pixel-backed point) along its ray, at the top-k depth bins.

    Raw output per element: Z bin logits, Z bin offsets, then for each of the k Gaussians scale (3),
    rotation (4), alpha (1), sub-pixel shift (2), SH (3 (d+1)^2); :meth:`split_raw` names them and
    :meth:`decode` activates them, so tests and methods can feed chosen raw values.
    """

    def __init__(self, config: GaussianHeadConfig):
        if config.center != "depth_bins":
            raise InputError(f"DepthBinGaussianHead: config.center must be 'depth_bins', got {config.center!r}")
        super().__init__(config, center_dims=2)
        Z, k = config.num_bins, config.gaussians_per_element
        self.out_dim = 2 * Z + k * self.per_gaussian
        self.net = _mlp(config.in_dim, config.hidden_dim, self.out_dim)

    def split_raw(self, raw: Tensor) -> dict[str, Tensor]:
        """(n, out_dim) -> {logits (n, Z), offsets (n, Z), scale (n, k, 3), rotation (n, k, 4),
        alpha (n, k), center = sub-pixel shift (n, k, 2), sh (n, k, S, 3)} (raw, before activation)."""
        Z, k = self.config.num_bins, self.config.gaussians_per_element
        logits, offsets, rest = raw.split([Z, Z, k * self.per_gaussian], dim=-1)
        parts = self._split_common(rest.reshape(raw.shape[0], k, self.per_gaussian))
        parts.update(logits=logits, offsets=offsets)
        return parts

    def decode(self, parts: dict[str, Tensor], rays: PixelRays, idx: Tensor, batch: Tensor, num_scenes: int) -> HeadOutput:
        """Raw parts of the n kept elements (their packed indices ``idx`` (n,), scenes ``batch`` (n,)) and
        their rays (n) -> activated, padded Gaussians."""
        cfg = self.config
        k = cfg.gaussians_per_element
        logits = parts["logits"]  # (n, Z)
        probs = torch.softmax(logits, dim=-1)  # (n, Z)
        p_bin, bin_index = probs.topk(k, dim=-1)  # (n, k) each
        delta = torch.sigmoid(parts["offsets"]).gather(-1, bin_index)  # (n, k) in [0, 1]
        near, far = rays.near[:, None], rays.far[:, None]  # (n, 1)
        depth = depth_from_bins(bin_index, delta, near, far, cfg.num_bins, cfg.bin_spacing)  # (n, k)

        dirs = rays.directions[:, None].expand(-1, k, -1)  # (n, k, 3)
        if cfg.subpixel_shift:
            shift = (torch.sigmoid(parts["center"]) - 0.5) / rays.focal[:, None]  # (n, k, 2) camera xy at z = 1
            dirs = dirs + torch.einsum("nij,nkj->nki", rays.rotations[:, :, :2], shift)  # (n, k, 3)
        means = rays.origins[:, None] + depth[..., None] * dirs  # (n, k, 3)

        footprint = depth * 0.5 * (1.0 / rays.focal).sum(-1, keepdim=True)  # (n, k) world size of a pixel
        scales, quats_cam, sh = self._activate_common(parts, footprint)
        q_c2w = rotmat_to_quat(rays.rotations).to(quats_cam.dtype)  # (n, 4)
        quats = quat_multiply(q_c2w[:, None].expand_as(quats_cam), quats_cam)  # (n, k, 4) world
        opacities = p_bin  # (n, k) the chosen bins' probabilities: the logits' gradient path
        if cfg.opacity == "probability_x_alpha":
            opacities = opacities * torch.sigmoid(parts["alpha"])
        return self._assemble(means, quats, scales, opacities, sh, idx, batch, num_scenes, depth=depth,
                              bin_logits=logits, bin_index=bin_index)

    def forward(self, features: Tensor, rays: PixelRays, offset: Tensor | None = None, keep: Tensor | None = None) -> HeadOutput:
        """features (N, in_dim) of N elements packed scene by scene (``offset`` (B,) cumulative counts;
        None: one scene), their rays (N), ``keep`` (N,) bool (None: all) -> Gaussians of the kept ones."""
        if len(rays) != features.shape[0]:
            raise InputError(f"DepthBinGaussianHead: rays has {len(rays)} elements, features {features.shape[0]}")
        idx, batch, B = self._kept(features, offset, keep, "DepthBinGaussianHead")
        raw = self.net(features[idx])  # (n, out_dim)
        return self.decode(self.split_raw(raw), rays.select(idx), idx, batch, B)


class PointGaussianHead(_GaussianHeadBase):
    """k Gaussians per kept point at mu = p + delta mu (GS³ Eq. 4-5).

    Raw output per point, for each of the k Gaussians: scale (3), rotation (4), alpha (1), offset (3),
    SH (3 (d+1)^2).
    """

    def __init__(self, config: GaussianHeadConfig):
        if config.center != "point_offset":
            raise InputError(f"PointGaussianHead: config.center must be 'point_offset', got {config.center!r}")
        super().__init__(config, center_dims=3)
        self.out_dim = config.gaussians_per_element * self.per_gaussian
        self.net = _mlp(config.in_dim, config.hidden_dim, self.out_dim)

    def split_raw(self, raw: Tensor) -> dict[str, Tensor]:
        """(n, out_dim) -> {scale (n, k, 3), rotation (n, k, 4), alpha (n, k), center = offset (n, k, 3),
        sh (n, k, S, 3)} (raw)."""
        return self._split_common(raw.reshape(raw.shape[0], self.config.gaussians_per_element, self.per_gaussian))

    def decode(self, parts: dict[str, Tensor], points: Tensor, footprint: Tensor, idx: Tensor, batch: Tensor,
               num_scenes: int) -> HeadOutput:
        """Raw parts of the n kept points (n, 3) with footprints (n,) -> activated, padded Gaussians."""
        fp = footprint[:, None].expand(-1, self.config.gaussians_per_element)  # (n, k)
        delta = self.config.max_offset_px * fp[..., None] * torch.tanh(parts["center"])  # (n, k, 3)
        means = points[:, None] + delta  # (n, k, 3)  Eq. 5
        scales, quats, sh = self._activate_common(parts, fp)
        opacities = torch.sigmoid(parts["alpha"])  # (n, k)
        return self._assemble(means, quats, scales, opacities, sh, idx, batch, num_scenes)

    def forward(self, features: Tensor, points: Tensor, footprint: Tensor | float, offset: Tensor | None = None,
                keep: Tensor | None = None) -> HeadOutput:
        """features (N, in_dim), points (N, 3) world, packed cloud by cloud (``offset`` (B,); None: one
        cloud); ``footprint`` (N,) or a float: world size of each point's source pixel; ``keep`` (N,) bool
        (None: all) -> Gaussians of the kept points."""
        N = features.shape[0]
        if points.shape != (N, 3):
            raise InputError(f"PointGaussianHead: points must be (N={N}, 3), got {tuple(points.shape)}")
        fp = torch.as_tensor(footprint, dtype=points.dtype, device=points.device)
        fp = fp.expand(N) if fp.dim() == 0 else fp
        if fp.shape != (N,):
            raise InputError(f"PointGaussianHead: footprint must be a float or of shape ({N},), got {tuple(fp.shape)}")
        idx, batch, B = self._kept(features, offset, keep, "PointGaussianHead")
        if not bool((fp[idx] > 0).all()):
            raise InputError("PointGaussianHead: footprint must be > 0 at every kept point")
        raw = self.net(features[idx])  # (n, out_dim)
        return self.decode(self.split_raw(raw), points[idx], fp[idx], idx, batch, B)


def build_gaussian_head(config: GaussianHeadConfig) -> DepthBinGaussianHead | PointGaussianHead:
    return DepthBinGaussianHead(config) if config.center == "depth_bins" else PointGaussianHead(config)


def pixel_footprint(K: Tensor, depth: Tensor) -> Tensor:
    """World size of one pixel at z-depth ``depth`` (...) for intrinsics ``K`` (..., 3, 3):
    depth (1/fx + 1/fy) / 2 (the footprint :class:`PointGaussianHead` takes for back-projected pixels)."""
    return depth * 0.5 * (1.0 / K[..., 0, 0] + 1.0 / K[..., 1, 1])


__all__ = [
    "C0", "CENTERS", "OPACITIES", "SPACINGS", "DepthBinGaussianHead", "GaussianHeadConfig", "HeadOutput", "PixelRays",
    "PointGaussianHead", "bins_from_depth", "build_gaussian_head", "color_to_sh0", "depth_from_bins", "image_elements",
    "num_sh_coeffs", "pixel_footprint", "sh0_to_color", "sh_degree_mask",
]
