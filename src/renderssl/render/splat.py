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

Outputs: colour with any number of channels D (features can be splatted too), expected z-depth
``sum w z / sum w`` (gsplat's "ED"; 0 where nothing was hit) and alpha = 1 - T.

Backends behind :func:`rasterize`:

- ``dense``: every Gaussian against every pixel, plain autograd. The readable reference.
- ``tiles`` (default): bin to 16x16 tiles using the exact screen-space extent where alpha can reach
  1/255 (sqrt(2 ln(255 o)) standard deviations; gsplat's 3.33 sigma is the o = 1 case), sort the
  (Gaussian, tile) pairs by tile then depth, keep the front-most ``max_per_tile`` per tile (pairs
  beyond are counted in ``overflow``), and composite every tile with a fused autograd function whose
  backward is written by hand (alpha and transmittance are recomputed, nothing per-pixel is stored).
  ln(alpha) is a quadratic polynomial in the pixel coordinates, so one small matmul evaluates a whole
  tile; Gaussians go through in depth chunks (16, 32, then 64 deep, in blocks of tiles of at most 2^19
  alpha entries) and a tile stops once all its pixels have terminated.
  Identical to ``dense`` wherever no tile overflows (up to float rounding of the polynomial form).
- ``compiled``: the tiles backend with its compositing step done by a per-pixel C++ loop
  (render/splat_compiled.py; built on first use, CPU only), gsplat's algorithm on the CPU.
- ``gsplat``: gsplat's CUDA rasterizer, used only when gsplat is installed and the tensors are on CUDA.
- ``auto``: ``gsplat`` for CUDA tensors when installed, else ``compiled`` on CPU when it builds, else
  ``tiles``.
"""

from __future__ import annotations

import math
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
BACKENDS = ("tiles", "dense", "compiled", "gsplat", "auto")


@dataclass
class Gaussians:
    """B scenes of N Gaussians each, parameters after activation."""

    means: Tensor  # (B, N, 3) world
    quats: Tensor  # (B, N, 4) wxyz, need not be normalised
    scales: Tensor  # (B, N, 3) standard deviations along the local axes
    opacities: Tensor  # (B, N) in [0, 1]
    colors: Tensor  # (B, N, D) any D

    def validate(self) -> None:
        B, N = self.means.shape[:2] if self.means.dim() == 3 else (None, None)
        expected = {"means": (B, N, 3), "quats": (B, N, 4), "scales": (B, N, 3), "opacities": (B, N)}
        for name, shape in expected.items():
            t = getattr(self, name)
            if B is None or tuple(t.shape) != shape:
                raise InputError(f"Gaussians.{name}: expected shape {shape if B else '(B, N, 3)'}, got {tuple(t.shape)}")
        if self.colors.dim() != 3 or self.colors.shape[:2] != (B, N):
            raise InputError(f"Gaussians.colors: expected shape ({B}, {N}, D), got {tuple(self.colors.shape)}")
        for name in ("means", "quats", "scales", "opacities", "colors"):
            check_finite(f"Gaussians.{name}", getattr(self, name))


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


# ---------------------------------------------------------------------------------------------------
# Dense backend: the reference
# ---------------------------------------------------------------------------------------------------


def _rasterize_dense(proj: Projected, colors: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor, int, int]:
    """-> (colour+depth (B, V, H*W, D+1), transmittance (B, V, H*W), 0, N)."""
    B, V, N = proj.depths.shape
    order = torch.argsort(torch.where(proj.valid, proj.depths, torch.full_like(proj.depths, float("inf"))), dim=-1)

    def by_depth(t: Tensor) -> Tensor:  # (B, V, N, ...) sorted along N
        return torch.gather(t, 2, order.reshape(B, V, N, *([1] * (t.dim() - 3))).expand_as(t))

    values = torch.cat([colors[:, None].expand(B, V, N, colors.shape[-1]), proj.depths[..., None]], dim=-1)
    opac = torch.where(proj.valid, proj.opacities, torch.zeros_like(proj.opacities))
    pixels = cameras.pixel_centers().reshape(-1, 2)  # (H*W, 2)
    alpha = gaussian_alpha(by_depth(proj.means2d), by_depth(proj.conics), by_depth(opac), pixels)  # (B, V, HW, N)
    out, T = composite(alpha, by_depth(values))
    return out, T, 0, N


# ---------------------------------------------------------------------------------------------------
# Tiles backend
# ---------------------------------------------------------------------------------------------------


def _tile_pixel_monomials(dtype, device) -> Tensor:
    """(TILE*TILE, 6) monomials [u^2, uv, v^2, u, v, 1] of the tile-local pixel centres, row-major."""
    r = torch.arange(TILE, dtype=dtype, device=device) + 0.5
    v, u = torch.meshgrid(r, r, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)], dim=-1)


def log_alpha_coefficients(means2d: Tensor, conics: Tensor, log_opacities: Tensor) -> Tensor:
    """Coefficients c (..., 6) with ln(o) - sigma(p) = c . [u^2, uv, v^2, u, v, 1].

    means2d (..., 2) in the tile's local pixel frame, conics (..., 3) = (A, B, C) of Sigma_2d^-1, and
    sigma(p) = 1/2 A du^2 + B du dv + 1/2 C dv^2 with d = p - mean.
    """
    mx, my = means2d.unbind(-1)
    A, B, C = conics.unbind(-1)
    const = 0.5 * A * mx * mx + B * mx * my + 0.5 * C * my * my
    return torch.stack(
        [-0.5 * A, -B, -0.5 * C, A * mx + B * my, B * mx + C * my, log_opacities - const], dim=-1
    )


class _CompositeTiles(torch.autograd.Function):
    """Fused per-tile alpha and front-to-back compositing with a hand-written backward.

    Inputs: per (Gaussian, tile) pair, sorted by tile then depth, the log-alpha coefficients
    coef (M, 6) in the tile's pixel frame (see :func:`log_alpha_coefficients`) and the Gaussian it
    belongs to, pair_gauss (M,); per-Gaussian values (G, D); per tile row its first pair and pair count
    (rows,), rows sorted by decreasing count. Returns out (rows, P, D) = sum_k w_k v_k and the final
    transmittance (rows, P), P = TILE*TILE.

    Each tile's list is walked in depth chunks (see :func:`_depth_chunks`) gathered from the flat pair
    arrays; a tile leaves the loop once every one of its pixels has terminated (gsplat's T_min rule) or
    its list is exhausted, so saturated regions cost only the Gaussians in front and memory follows the
    pairs, not rows x the longest list. The backward walks the chunks in reverse, carrying
    sum_{j>k} w_j v_j.g + g_T T_final per pixel; nothing of size (rows, P, K) is stored.
    """

    @staticmethod
    def _chunk_terms(feat, coef, T_start, T_all_start):
        """Alpha and transmittance of one depth chunk; T_start / T_all_start (t, P) enter it.

        T_all applies every alpha and decides termination; T_incl applies only the kept ones.
        """
        raw = torch.exp(torch.matmul(feat, coef.transpose(1, 2)))  # (t, P, k) = o exp(-sigma)
        alpha = raw.clamp(max=ALPHA_MAX).masked_fill_(raw < ALPHA_MIN, 0.0)
        through = torch.cumprod(1.0 - alpha, dim=-1)  # (t, P, k)
        T_all = through * T_all_start[..., None]
        kept = T_all > T_MIN  # a prefix of each pixel's list: stop before T would reach T_min
        if bool(kept.all()):
            T_incl = through.mul_(T_start[..., None])
        else:
            alpha = alpha * kept
            T_incl = torch.cumprod(1.0 - alpha, dim=-1).mul_(T_start[..., None])
        T_excl = torch.cat([T_start[..., None], T_incl[..., :-1]], dim=-1)
        return raw, alpha, kept, T_all, T_incl, T_excl

    @staticmethod
    def _slots(row_start, row_count, r, k0, k1, pad):
        """Pair indices (t, k) of depth slots k0..k1 of rows r; slots past a row's list -> ``pad``."""
        k = torch.arange(k0, k1, device=row_start.device)
        return torch.where(k < row_count[r, None], row_start[r, None] + k, pad)

    @staticmethod
    def forward(ctx, coef, values, pair_gauss, row_start, row_count, chunk):
        M, G = coef.shape[0], values.shape[0]
        coef = torch.cat([coef, coef.new_tensor([[0.0, 0, 0, 0, 0, -100.0]])])  # padding pair: alpha 0
        pair_gauss = torch.cat([pair_gauss, pair_gauss.new_tensor([G])])
        values = torch.cat([values, values.new_zeros((1, values.shape[-1]))])
        feat = _tile_pixel_monomials(coef.dtype, coef.device)  # (P, 6)
        n_rows, P = row_count.numel(), feat.shape[0]
        out = values.new_zeros((n_rows, P, values.shape[-1]))
        T_kept, T_all = coef.new_ones((n_rows, P)), coef.new_ones((n_rows, P))
        rows = _Rows(torch.arange(n_rows, device=coef.device))
        schedule = []  # (rows, pair slots, T_kept at chunk start, T_all at chunk start)
        for k0, k1 in _depth_chunks(int(row_count.max()) if n_rows else 0, chunk):
            rows = rows.where(row_count > k0)
            if not len(rows):
                break
            for r in rows.blocks(max(1, _BLOCK_ENTRIES // (P * (k1 - k0)))):
                slots = _CompositeTiles._slots(row_start, row_count, r, k0, k1, M)  # (t, k)
                Ts, Ta = T_kept[r].clone(), T_all[r].clone()  # saved for backward: no views
                _, alpha, _, T_all_c, T_incl, T_excl = _CompositeTiles._chunk_terms(feat, coef[slots], Ts, Ta)
                out[r] += torch.bmm(T_excl - T_incl, values[pair_gauss[slots]])  # w = alpha T_excl
                T_kept[r], T_all[r] = T_incl[..., -1], T_all_c[..., -1]
                schedule.append((r, slots, Ts, Ta))
            rows = rows.where((T_all > T_MIN).any(-1))  # tiles with a live pixel go on
        ctx.schedule = schedule
        ctx.save_for_backward(coef, values, pair_gauss, T_kept)
        return out, T_kept

    @staticmethod
    def backward(ctx, g_out, g_T):
        coef, values, pair_gauss, T_final = ctx.saved_tensors
        feat = _tile_pixel_monomials(coef.dtype, coef.device)
        g_coef, g_values = torch.zeros_like(coef), torch.zeros_like(values)
        if g_out is None:
            g_out = values.new_zeros(T_final.shape + values.shape[-1:])
        later = T_final * g_T if g_T is not None else torch.zeros_like(T_final)  # (rows, P)
        for r, slots, Ts, Ta in reversed(ctx.schedule):
            raw, alpha, kept, _, T_incl, T_excl = _CompositeTiles._chunk_terms(feat, coef[slots], Ts, Ta)
            gauss = pair_gauss[slots]  # (t, k)
            weights = T_excl - T_incl  # (t, P, k)
            go = g_out[r]  # (t, P, D)
            vg = torch.bmm(go, values[gauss].transpose(1, 2))  # (t, P, k) v_k . g_p
            csum = torch.cumsum(weights * vg, dim=-1)
            after = (csum[..., -1:] - csum).add_(later[r][..., None])  # sum_{j>k} w_j v_j.g + g_T T_final
            g_alpha = (T_excl * vg).sub_(after.div_(1.0 - alpha))
            live = kept & (raw >= ALPHA_MIN) & (raw < ALPHA_MAX)
            g_log = g_alpha.mul_(raw).masked_fill_(~live, 0.0)  # d alpha / d log-alpha = alpha
            g_coef.index_add_(0, slots.reshape(-1), torch.matmul(g_log.transpose(1, 2), feat).reshape(-1, 6))
            g_values.index_add_(0, gauss.reshape(-1), torch.bmm(weights.transpose(1, 2), go).reshape(-1, go.shape[-1]))
            later[r] += csum[..., -1]
        return g_coef[:-1], g_values[:-1], None, None, None, None


_BLOCK_ENTRIES = 1 << 19  # alpha entries (rows x pixels x depth slots) composited per block


def _depth_chunks(K: int, chunk: int, first: int = 16) -> list[tuple[int, int]]:
    """Depth ranges [k0, k1) covering 0..K: sizes first, 2 first, ... up to ``chunk``, since most
    pixels of opaque scenes terminate within their first few Gaussians."""
    ranges, k0, size = [], 0, min(first, chunk)
    while k0 < K:
        ranges.append((k0, min(K, k0 + size)))
        k0, size = k0 + size, min(2 * size, chunk)
    return ranges


class _Rows:
    """The tile rows still being composited: a slice while they form a prefix, else an index."""

    def __init__(self, ids: Tensor):
        self.ids = ids
        n = ids.numel()
        self.index = slice(0, n) if n == 0 or int(ids[-1]) == n - 1 else ids

    def __len__(self) -> int:
        return self.ids.numel()

    def where(self, mask: Tensor) -> "_Rows":
        """Keep the rows whose entry in ``mask`` (over all rows) is true."""
        keep = mask[self.ids]
        return self if bool(keep.all()) else _Rows(self.ids[keep])

    def blocks(self, size: int):
        """Consecutive blocks of at most ``size`` rows, as slices or index tensors."""
        for a in range(0, len(self), size):
            b = min(len(self), a + size)
            yield slice(a, b) if isinstance(self.index, slice) else self.ids[a:b]


def _bin_to_tiles(proj: Projected, tiles_x: int, tiles_y: int) -> tuple[Tensor, Tensor, Tensor]:
    """(Gaussian, tile) pairs sorted by tile then depth.

    Returns (gaussian index into the flattened (B*V*N) list, global tile id (b*V + v)*T + tile,
    both (M,), and per-tile counts (B*V*T,)).
    """
    B, V, N = proj.depths.shape
    lo = torch.floor((proj.means2d - proj.extent - 0.5) / TILE)  # (B, V, N, 2) first tile (x, y)
    hi = torch.floor((proj.means2d + proj.extent - 0.5) / TILE)
    lim = torch.tensor([tiles_x - 1, tiles_y - 1], dtype=lo.dtype, device=lo.device)
    lo = torch.minimum(torch.maximum(lo, torch.zeros_like(lim)), lim).long().reshape(-1, 2)
    hi = torch.minimum(torch.maximum(hi, torch.zeros_like(lim)), lim).long().reshape(-1, 2)
    span = hi - lo + 1  # (G, 2)
    n_tiles = torch.where(proj.valid.reshape(-1), span[:, 0] * span[:, 1], torch.zeros_like(span[:, 0]))  # (G,)

    gauss = torch.repeat_interleave(torch.arange(n_tiles.numel(), device=lo.device), n_tiles)  # (M,)
    first = torch.cumsum(n_tiles, 0) - n_tiles
    local = torch.arange(gauss.numel(), device=lo.device) - first[gauss]
    tx = lo[gauss, 0] + local % span[gauss, 0]
    ty = lo[gauss, 1] + local // span[gauss, 0]
    image = gauss // N  # b * V + v
    tile = (image * tiles_y + ty) * tiles_x + tx  # (M,)

    G = B * V * N
    rank = torch.empty(G, dtype=torch.long, device=lo.device)
    rank[torch.argsort(proj.depths.detach().reshape(-1))] = torch.arange(G, device=lo.device)
    depth_rank = rank[gauss]
    order = torch.argsort(tile * G + depth_rank)
    counts = torch.bincount(tile, minlength=B * V * tiles_x * tiles_y)
    return gauss[order], tile[order], counts


def _rasterize_tiles(
    proj: Projected, colors: Tensor, cameras: Cameras, max_per_tile: int, depth_chunk: int = 64, compiled: bool = False
) -> tuple[Tensor, Tensor, int, int]:
    B, V, N = proj.depths.shape
    D = colors.shape[-1]
    G = B * V * N
    tiles_x, tiles_y = -(-cameras.width // TILE), -(-cameras.height // TILE)
    T_all = B * V * tiles_x * tiles_y
    gauss, tile, counts = _bin_to_tiles(proj, tiles_x, tiles_y)

    # Keep the front-most max_per_tile pairs of every tile; count the rest.
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(gauss.numel(), device=gauss.device) - starts[tile]
    overflow = int((counts - max_per_tile).clamp(min=0).sum())
    biggest = int(counts.max()) if counts.numel() else 0
    if overflow:
        keep = pos < max_per_tile
        gauss, tile = gauss[keep], tile[keep]
        counts = counts.clamp(max=max_per_tile)
        starts = torch.cumsum(counts, 0) - counts

    # Non-empty tiles as rows, sorted by decreasing count.
    active = torch.nonzero(counts > 0).squeeze(1)
    active = active[torch.argsort(counts[active], descending=True, stable=True)]
    tile_xy = torch.stack([tile % tiles_x, (tile // tiles_x) % tiles_y], dim=-1)  # (M, 2)
    origins = (tile_xy * TILE).to(proj.means2d.dtype)

    # Per pair: log-alpha coefficients in its tile's pixel frame. Per Gaussian: colour and depth.
    log_opac = torch.log(proj.opacities.clamp(min=ALPHA_MIN)).reshape(G)
    coef = log_alpha_coefficients(
        proj.means2d.reshape(G, 2)[gauss] - origins, proj.conics.reshape(G, 3)[gauss], log_opac[gauss]
    )  # (M, 6)
    values = torch.cat([colors[:, None].expand(B, V, N, D), proj.depths[..., None]], dim=-1).reshape(G, D + 1)
    if compiled:
        from .splat_compiled import CompositeTilesCompiled

        out, T = CompositeTilesCompiled.apply(coef, values, gauss, starts[active], counts[active])
    else:
        out, T = _CompositeTiles.apply(coef, values, gauss, starts[active], counts[active], depth_chunk)

    # Scatter active tiles into the full tile grid; empty tiles are fully transparent.
    P = TILE * TILE
    out_tiles = values.new_zeros((T_all, P, D + 1)).index_copy(0, active, out)
    T_tiles = values.new_ones((T_all, P)).index_copy(0, active, T)

    def untile(t: Tensor) -> Tensor:  # (T_all, P, C) -> (B, V, H*W, C)
        C = t.shape[-1]
        t = t.reshape(B, V, tiles_y, tiles_x, TILE, TILE, C).permute(0, 1, 2, 4, 3, 5, 6)
        t = t.reshape(B, V, tiles_y * TILE, tiles_x * TILE, C)[:, :, : cameras.height, : cameras.width]
        return t.reshape(B, V, -1, C)

    return untile(out_tiles), untile(T_tiles[..., None])[..., 0], overflow, biggest


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

    B, N, D = gaussians.colors.shape
    V = cameras.batch_shape[1]
    backgrounds = None
    if background is not None:
        backgrounds = torch.cat([background, background.new_zeros(1)]).expand(B, V, D + 1)
    colors, alphas, meta = rasterization(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors,
        cameras.w2c, cameras.K, cameras.width, cameras.height,
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


def _check_inputs(gaussians: Gaussians, cameras: Cameras, background: Tensor | None) -> Cameras:
    gaussians.validate()
    B = gaussians.means.shape[0]
    if len(cameras.batch_shape) == 1:
        cameras = Cameras(
            cameras.K.expand(B, -1, 3, 3), cameras.c2w.expand(B, -1, 4, 4), cameras.width, cameras.height, cameras.model
        )
    if len(cameras.batch_shape) != 2 or cameras.batch_shape[0] != B:
        raise InputError(f"rasterize: cameras must have batch shape (B={B}, V) or (V,), got {tuple(cameras.batch_shape)}")
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
) -> SplatOutput:
    """Render B scenes of Gaussians into their V cameras each.

    gaussians: (B, N, ...) parameters after activation; cameras: batch shape (B, V), or (V,) shared by
    every scene; background: (D,) colour behind the Gaussians (default 0).
    """
    if backend not in BACKENDS:
        raise InputError(f"rasterize: unknown backend {backend!r}; expected one of {BACKENDS}")
    cameras = _check_inputs(gaussians, cameras, background)
    if backend == "auto":
        backend = resolve_auto_backend(gaussians.means.device)
    if backend == "compiled" and gaussians.means.device.type != "cpu":
        raise InputError("rasterize: backend 'compiled' runs on CPU tensors; use 'gsplat' or 'tiles' on CUDA")
    if backend == "gsplat":
        if not (gsplat_available() and gaussians.means.is_cuda):
            raise InputError("rasterize: backend 'gsplat' needs the gsplat package and CUDA tensors; use 'tiles' on CPU")
        return _rasterize_gsplat(gaussians, cameras, background, near_plane, far_plane, eps2d, rasterize_mode)

    proj = project_gaussians(gaussians, cameras, near_plane, far_plane, eps2d, rasterize_mode)
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
