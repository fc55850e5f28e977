"""The ``tiles`` backend of :func:`renderssl.render.splat.rasterize`.

Bin every Gaussian to the 16x16 tiles its alpha >= 1/255 ellipse touches, sort the (Gaussian, tile)
pairs by tile then depth, keep the front-most ``max_per_tile`` per tile (the rest counted as
overflow) and composite each tile with a fused autograd function whose backward is written by hand.
ln(alpha) is a quadratic polynomial in the tile-local pixel coordinates, so one small matmul evaluates
a tile's alphas; Gaussians go through in depth chunks (16, 32, then 64 deep, in blocks of at most 2^19
alpha entries) and a tile stops once all its pixels have terminated. ``compiled=True`` hands the
compositing step to the C++ twin in render/splat_compiled.py and binning + per-pair coefficients
(:func:`_prepare_pairs`, the readable twin) to render/splat_prepare_compiled.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import Cameras
from .gaussians import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE, Projected, view_colors


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
    rank[torch.argsort(proj.depths.detach().reshape(-1), stable=True)] = torch.arange(G, device=lo.device)  # ties: lower index first
    depth_rank = rank[gauss]
    order = torch.argsort(tile * G + depth_rank)
    counts = torch.bincount(tile, minlength=B * V * tiles_x * tiles_y)
    return gauss[order], tile[order], counts


def _prepare_pairs(proj: Projected, tiles_x: int, tiles_y: int, max_per_tile: int):
    """Torch twin of render/splat_prepare_compiled.py: per pair (sorted by tile then depth, front-most
    max_per_tile per tile) its log-alpha coefficients (M, 6) and Gaussian (M,); per tile its first pair and
    count (B*V*T,); the non-empty tiles by decreasing count (rows,); overflow; the largest count."""
    B, V, N = proj.depths.shape
    G = B * V * N
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

    # Per pair: log-alpha coefficients in its tile's pixel frame.
    log_opac = torch.log(proj.opacities.clamp(min=ALPHA_MIN)).reshape(G)
    coef = log_alpha_coefficients(
        proj.means2d.reshape(G, 2)[gauss] - origins, proj.conics.reshape(G, 3)[gauss], log_opac[gauss]
    )  # (M, 6)
    return coef, gauss, starts, counts, active, overflow, biggest


def _rasterize_tiles(
    proj: Projected, colors: Tensor, cameras: Cameras, max_per_tile: int, depth_chunk: int = 64, compiled: bool = False
) -> tuple[Tensor, Tensor, int, int]:
    B, V, N = proj.depths.shape
    D = colors.shape[-1]
    G = B * V * N
    tiles_x, tiles_y = -(-cameras.width // TILE), -(-cameras.height // TILE)
    T_all = B * V * tiles_x * tiles_y
    prepared = None
    if compiled:  # the C++ twin of _prepare_pairs; None where it cannot run (no compiler, not float CPU tensors)
        from .splat_prepare_compiled import prepare_pairs_compiled

        prepared = prepare_pairs_compiled(proj, tiles_x, tiles_y, max_per_tile)
    coef, gauss, starts, counts, active, overflow, biggest = prepared or _prepare_pairs(proj, tiles_x, tiles_y, max_per_tile)
    # colors (B, N, D) or per camera (B, V, N, D): each (scene, camera, Gaussian) gets its camera's colour.
    values = torch.cat([view_colors(colors, V), proj.depths[..., None]], dim=-1).reshape(G, D + 1)
    if compiled:
        from .splat_compiled import CompositeTilesCompiled

        out, T = CompositeTilesCompiled.apply(coef, values, gauss, starts[active], counts[active])
    else:
        out, T = _CompositeTiles.apply(coef, values, gauss, starts[active], counts[active], depth_chunk)

    if compiled:  # the untile below in C++ (render/splat_prepare_compiled.py), where it can run
        from .splat_prepare_compiled import untile_compiled

        images = untile_compiled(out, T, active, B, V, tiles_x, tiles_y, cameras.height, cameras.width)
        if images is not None:
            return (*images, overflow, biggest)

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
