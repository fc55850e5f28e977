"""The compiled twin of everything the tiles backend does before compositing (``csrc/project_bin.cpp``).

Three steps, each with its torch twin and a parity test (tests/test_splat_prepare_compiled.py):

- :func:`project_gaussians_compiled` = render/gaussians.py ``project_gaussians``: the EWA projection
  (covariance from the normalised quaternion and scales, W Sigma W^T, the clamped pinhole Jacobian or the
  orthographic one, eps2d blur, antialiased opacity), culling and the alpha >= 1/255 extent, in one C++
  pass per Gaussian over its cameras. The backward is written by hand: it recomputes the per-camera
  terms in registers (nothing but the inputs is saved) and sums each Gaussian's gradient over its
  cameras in camera order, so it is deterministic and needs no atomics. Profiled at 16k surfels,
  320x240, one thread, the torch projection was ~8 ms forward + ~13 ms backward of a ~120 ms
  forward+backward (small batched 3x3 matmuls and their autograd nodes): the largest non-compositing
  cost, hence a compiled version. Our choices: cameras get no gradient here, so when ``K`` or ``c2w``
  require grad (or the dtype is not float32/64) the torch twin is used; torch.maximum/minimum's
  half-gradient on exact ties of the field-of-view clamp is reproduced; at det_orig/det = 0 exactly in
  antialiased mode (torch gives inf/NaN) the opacity factor's gradient is 0.
- :func:`bin_tiles_compiled` = splat_tiles ``_bin_to_tiles`` plus the front-most ``max_per_tile`` cut
  and the row order of ``_rasterize_tiles``: per Gaussian its tile rectangle (the same float formula,
  so the same tiles), per camera image a sort of its valid Gaussians by (depth, flat index), per-tile
  counts, and a counting-sort fill that walks each image front to back, so every tile's list is in
  depth order without a per-tile sort. Ties in depth: the lower flat Gaussian index (b*V + v)*N + n goes
  first (the torch twin's stable argsort). Rows are the non-empty tiles by decreasing count, ties by tile
  id (the twin's stable sort). OpenMP (torch's intra-op threads) over Gaussians and over images.
- :class:`PairCoefficients` = splat_tiles ``log_alpha_coefficients`` of the gathered per-pair inputs
  (mean in the tile's frame, conic, ln clamp(o, 1/255)), one pass over pairs; the backward sums each
  Gaussian's pairs through the Gaussian-major slot -> pair map that binning wrote (deterministic, no
  scatter races) instead of an index_add over pairs.
- :func:`untile_compiled` = the index_copy into the full tile grid + permute + crop that ends
  ``_rasterize_tiles``: one pass writing each image pixel from its tile row (or the fill value), and a
  backward that reads each tile row's pixels back (the tile padding past the image edge gets 0).

Built on first use with ``torch.utils.cpp_extension`` as render/splat_compiled.py does (cached by
torch); when no compiler is available :func:`prepare_kernel` warns once and returns None, and callers
use the torch twins.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import InputError
from ..compiled import load_extension
from ..geometry import Cameras
from .gaussians import Gaussians, Projected, project_gaussians

SOURCE = Path(__file__).parent / "csrc" / "project_bin.cpp"


@functools.lru_cache(maxsize=1)
def prepare_kernel():
    """The compiled extension module, or None when it cannot be built here."""
    return load_extension("project_bin", SOURCE, "CPU projection/binning kernel", "the torch twins", isa=False)


def _supported(*tensors: Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)


# ---------------------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------------------


class _ProjectCompiled(torch.autograd.Function):
    """(means, quats, scales, opacities) (B, N, ...) -> means2d, conics, depths, opacities, extent, valid
    (B, V, N, ...); w2c (B, V, 4, 4) and K (B, V, 3, 3) are constants."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, w2c, K, settings):
        args = [t.contiguous() for t in (means, quats, scales, opacities, w2c, K)]
        means2d, conics, depths, opac, extent, valid = prepare_kernel().project_forward(*args, *settings)
        ctx.save_for_backward(*args)
        ctx.settings = settings
        ctx.mark_non_differentiable(extent, valid)
        return means2d, conics, depths, opac, extent, valid

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, g_opac, _g_extent, _g_valid):
        args = ctx.saved_tensors
        means = args[0]
        B, N, V = means.shape[0], means.shape[1], args[4].shape[1]

        def grad(g, *tail):  # None -> zeros (B, V, N, *tail)
            return means.new_zeros((B, V, N, *tail)) if g is None else g.contiguous()

        g = prepare_kernel().project_backward(*args, *ctx.settings, grad(g_means2d, 2), grad(g_conics, 3),
                                              grad(g_depths), grad(g_opac))
        return (*g, None, None, None)


def project_gaussians_compiled(
    gaussians: Gaussians,
    cameras: Cameras,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    rasterize_mode: str = "classic",
) -> Projected:
    """:func:`~renderssl.render.gaussians.project_gaussians` in C++ (cameras (B, V)); the torch twin
    where the kernel is unavailable, the cameras need gradients or the tensors are not float CPU."""
    if rasterize_mode not in ("classic", "antialiased"):
        raise InputError(f"rasterize: unknown rasterize_mode {rasterize_mode!r}; expected 'classic' or 'antialiased'")
    g = gaussians
    tensors = (g.means, g.quats, g.scales, g.opacities, cameras.K, cameras.c2w)
    if (prepare_kernel() is None or not _supported(*tensors) or len({t.dtype for t in tensors}) != 1
            or cameras.K.requires_grad or cameras.c2w.requires_grad):
        return project_gaussians(gaussians, cameras, near_plane, far_plane, eps2d, rasterize_mode)
    settings = (float(cameras.width), float(cameras.height), float(near_plane), float(far_plane), float(eps2d),
                cameras.model != "pinhole", rasterize_mode == "antialiased")
    out = _ProjectCompiled.apply(g.means, g.quats, g.scales, g.opacities, cameras.w2c, cameras.K, settings)
    return Projected(*out)  # means2d (B, V, N, 2), conics (B, V, N, 3), depths, opacities (B, V, N), extent, valid


# ---------------------------------------------------------------------------------------------------
# Binning and per-pair coefficients
# ---------------------------------------------------------------------------------------------------


@dataclass
class Bins:
    """(Gaussian, tile) pairs sorted by tile then (depth, index), front-most max_per_tile per tile."""

    pair_gauss: Tensor  # (M,) flat Gaussian index (b*V + v)*N + n
    pair_tile: Tensor  # (M,) global tile id (b*V + v)*T + ty*tiles_x + tx
    tile_start: Tensor  # (B*V*T,) first pair of each tile
    tile_count: Tensor  # (B*V*T,) kept pairs of each tile
    active: Tensor  # (rows,) non-empty tiles by decreasing count, ties by id
    row_start: Tensor  # (rows,) tile_start[active]
    row_count: Tensor  # (rows,) tile_count[active]
    gauss_first: Tensor  # (G+1,) each Gaussian's first slot in the Gaussian-major slot list
    pair_slot: Tensor  # (slots,) slot -> sorted pair, -1 where dropped by max_per_tile
    overflow: int  # pairs dropped
    biggest: int  # largest per-tile count before the cut


def bin_tiles_compiled(proj: Projected, tiles_x: int, tiles_y: int, max_per_tile: int) -> Bins:
    """Bin the projected Gaussians (B, V, N) to tiles in C++ (see the module doc)."""
    if max_per_tile < 1:
        raise InputError(f"rasterize: max_per_tile must be >= 1, got {max_per_tile}")
    B, V, N = proj.depths.shape
    with torch.no_grad():
        out = prepare_kernel().bin_tiles(
            proj.means2d.detach().reshape(-1, 2).contiguous(), proj.extent.detach().reshape(-1, 2).contiguous(),
            proj.depths.detach().reshape(-1).contiguous(), proj.valid.reshape(-1).contiguous(), B * V, tiles_x, tiles_y,
            max_per_tile,
        )
    *tensors, stats = out
    overflow, biggest = stats.tolist()
    return Bins(*tensors, overflow=overflow, biggest=biggest)


class PairCoefficients(torch.autograd.Function):
    """means2d (G, 2), conics (G, 3), opacities (G,) -> coef (M, 6) of each pair of ``bins`` in its tile's
    pixel frame (:func:`~renderssl.render.splat_tiles.log_alpha_coefficients` of ln clamp(o, 1/255))."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, bins: Bins, tiles_x: int, tiles_y: int):
        means2d, conics, opacities = means2d.contiguous(), conics.contiguous(), opacities.contiguous()
        ctx.save_for_backward(means2d, conics, opacities)
        ctx.bins, ctx.tiles = bins, (tiles_x, tiles_y)
        return prepare_kernel().pair_coefficients(means2d, conics, opacities, bins.pair_gauss, bins.pair_tile, tiles_x, tiles_y)

    @staticmethod
    def backward(ctx, g_coef):
        means2d, conics, opacities = ctx.saved_tensors
        b = ctx.bins
        g = prepare_kernel().pair_coefficients_backward(g_coef.contiguous(), means2d, conics, opacities, b.gauss_first,
                                                         b.pair_slot, b.pair_tile, *ctx.tiles)
        return (*g, None, None, None)


def prepare_pairs_compiled(proj: Projected, tiles_x: int, tiles_y: int, max_per_tile: int):
    """splat_tiles ``_prepare_pairs`` in C++: (coef (M, 6), pair Gaussian (M,), tile starts and kept counts
    (B*V*T,), active tiles (rows,), overflow, largest count), or None where the kernel cannot run."""
    tensors = (proj.means2d, proj.conics, proj.depths, proj.opacities, proj.extent)
    if prepare_kernel() is None or not _supported(*tensors) or len({t.dtype for t in tensors}) != 1:
        return None
    G = proj.depths.numel()
    bins = bin_tiles_compiled(proj, tiles_x, tiles_y, max_per_tile)
    coef = PairCoefficients.apply(proj.means2d.reshape(G, 2), proj.conics.reshape(G, 3), proj.opacities.reshape(G),
                                  bins, tiles_x, tiles_y)  # (M, 6)
    return coef, bins.pair_gauss, bins.tile_start, bins.tile_count, bins.active, bins.overflow, bins.biggest


class UntileCompiled(torch.autograd.Function):
    """Composited tile rows (rows, P, C) of the tiles ``active`` (rows,) -> images (B*V, H*W, C); pixels of
    tiles without a row get ``fill`` (0 for colour + depth, 1 for transmittance). The torch twin is the
    index_copy + permute + crop at the end of splat_tiles ``_rasterize_tiles``."""

    @staticmethod
    def forward(ctx, rows, active, images: int, tiles_x: int, tiles_y: int, H: int, W: int, fill: float):
        ctx.save_for_backward(active)
        ctx.shape = (tiles_x, tiles_y, H, W)
        return prepare_kernel().untile_forward(rows.contiguous(), active, images, tiles_x, tiles_y, H, W, fill)

    @staticmethod
    def backward(ctx, g_image):
        (active,) = ctx.saved_tensors
        return prepare_kernel().untile_backward(g_image.contiguous(), active, *ctx.shape), None, None, None, None, None, None, None


def untile_compiled(out: Tensor, T: Tensor, active: Tensor, B: int, V: int, tiles_x: int, tiles_y: int, H: int, W: int):
    """(colour + depth (B, V, H*W, C), transmittance (B, V, H*W)) from the composited rows out (rows, P, C)
    and T (rows, P), or None where the kernel cannot run."""
    if prepare_kernel() is None or not _supported(out, T):
        return None
    image = UntileCompiled.apply(out, active, B * V, tiles_x, tiles_y, H, W, 0.0)  # (B*V, H*W, C)
    trans = UntileCompiled.apply(T[..., None], active, B * V, tiles_x, tiles_y, H, W, 1.0)  # (B*V, H*W, 1)
    return image.reshape(B, V, H * W, -1), trans.reshape(B, V, H * W)
