"""Feature-volume lookup: trilinear interpolation that is twice differentiable.

PonderV2 reads its dense feature volume at every ray sample and differentiates the resulting SDF with
respect to the sample position (the normal, and the eikonal loss on its norm). Back-propagating the
eikonal loss therefore needs the *second* derivative of the lookup with respect to the points. PonderV2
uses a CUDA extension (SmoothSampler) because torch's 3D ``F.grid_sample`` historically had no double
backward for its grid input. (Checked here: torch 2.13's CPU grid_sample does pass gradgradcheck, and
tests/test_grid.py compares against it when available; older or other builds may not.) This lookup is
built from torch ops whose derivatives are again such ops (below), so it is differentiable to any order
with respect to both the points and the volume, on any device and torch version.

Choices (the papers leave them open; we follow ``F.grid_sample`` so the two are interchangeable):
- Layout: the volume is (B, C, D, H, W) and a point is (x, y, z) with x indexing W, y indexing H and
  z indexing D (as grid_sample; PonderV2 stores its volume as (B, C, Z, Y, X), which matches).
- ``align_corners=True`` (as PonderV2, GNT and mvsplat): -1 and +1 are the *centres* of the first and
  last voxels, so a normalised coordinate c maps to the continuous index (c + 1) / 2 * (size - 1).
- ``padding_mode="border"`` clamps the continuous index into [0, size - 1] before interpolating (zero
  gradient outside, as grid_sample); ``"zeros"`` lets corners outside the volume contribute zero.
- Mechanism (our choice, measured on the PonderV2 tiny steps, where the former gather-multiply-sum over a
  (B, C, N, 8) tensor and its autograd were ~30-40% of a pretraining step): the volume is copied once per
  lookup into a channels-last row table T (B*D*H*W, C) (a cheap copy next to the points' work), every
  point's 8 corners become row indices f (B*N, 8) and weights w (B*N, 8), and the lookup is
  ``interp(w, T) = sum_k w_k T[f_k]``: one ``F.embedding_bag(mode="sum", per_sample_weights=w)``, no
  (B*N, 8, C) temporary. ``interp`` and the two other bilinear maps its derivatives need, ``corner_dot``
  (d/dw: row gather + bmm, in cache-sized chunks on CPU) and ``splat`` (d/dT: the transpose, as an
  embedding_bag over the (point, corner) pairs grouped by table row with one int32 sort per lookup,
  shared by its first- and second-order splats; no dense zero-filled scatter of 8*B*N rows), are three
  ``autograd.Function``s whose backward calls the other two's ``apply``: autograd records them under
  ``create_graph``, so the lookup stays differentiable to any order w.r.t. points (through the weights,
  ordinary torch ops) and volume. ``trilinear_lookup_twin`` keeps the former readable implementation;
  tests/test_grid_fast.py checks values, first and second derivatives against it to float64 round-off.
- Finiteness: points and volume are checked on every call unless the caller passes ``check_volume=False``
  for a volume it has checked itself (the SDF field checks its volume once when it is bound, then reads
  it 2+ times per step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError, check_finite, check_shape

PADDING_MODES = ("border", "zeros")


def world_to_grid(points: Tensor, bbox_min, bbox_max) -> Tensor:
    """World points (..., 3) -> normalised grid coordinates (..., 3) in [-1, 1] over the box.

    ``bbox_min``/``bbox_max`` are broadcastable to ``points`` (e.g. (3,) or (B, 1, 3)). With
    ``trilinear_lookup``'s align_corners=True convention they are the centres of the corner voxels.
    """
    if not isinstance(points, Tensor):
        raise InputError(f"world_to_grid: points must be a tensor, got {type(points).__name__}")
    check_shape("world_to_grid: points", points, 3)
    lo = torch.as_tensor(bbox_min, dtype=points.dtype, device=points.device)
    hi = torch.as_tensor(bbox_max, dtype=points.dtype, device=points.device)
    if lo.shape[-1:] != (3,) or hi.shape[-1:] != (3,):
        raise InputError(f"world_to_grid: bbox_min/bbox_max must end in 3, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    if not bool((hi > lo).all()):
        raise InputError("world_to_grid: bbox_max must exceed bbox_min on every axis")
    return 2.0 * (points - lo) / (hi - lo) - 1.0


def grid_to_world(coords: Tensor, bbox_min, bbox_max) -> Tensor:
    """Inverse of :func:`world_to_grid`: normalised coordinates (..., 3) -> world points (..., 3)."""
    check_shape("grid_to_world: coords", coords, 3)
    lo = torch.as_tensor(bbox_min, dtype=coords.dtype, device=coords.device)
    hi = torch.as_tensor(bbox_max, dtype=coords.dtype, device=coords.device)
    return lo + (coords + 1.0) * 0.5 * (hi - lo)


def _check_lookup_inputs(volume: Tensor, points: Tensor, padding_mode: str, check_volume: bool = True) -> None:
    if not isinstance(volume, Tensor) or not isinstance(points, Tensor):
        raise InputError("trilinear_lookup: volume and points must be tensors")
    if volume.dim() != 5:
        raise InputError(f"trilinear_lookup: volume must be (B, C, D, H, W), got {tuple(volume.shape)}")
    if points.dim() != 3:
        raise InputError(f"trilinear_lookup: points must be (B, N, 3), got {tuple(points.shape)}")
    check_shape("trilinear_lookup: points", points, volume.shape[0], None, 3)
    if padding_mode not in PADDING_MODES:
        raise InputError(f"trilinear_lookup: padding_mode {padding_mode!r} not in {PADDING_MODES}")
    if points.dtype != volume.dtype or not points.dtype.is_floating_point:
        raise InputError(f"trilinear_lookup: points ({points.dtype}) and volume ({volume.dtype}) must share one float dtype")
    if points.device != volume.device:
        raise InputError(f"trilinear_lookup: points on {points.device}, volume on {volume.device}")
    check_finite("trilinear_lookup: points", points)
    if check_volume:
        check_finite("trilinear_lookup: volume", volume)


def continuous_index(points: Tensor, size: Tensor) -> Tensor:
    """Normalised coords (B, N, 3) -> continuous voxel index (B, N, 3), align_corners=True."""
    return (points + 1.0) * 0.5 * (size - 1)


def axis_corners_and_weights(idx: Tensor, size: int, padding_mode: str) -> tuple[Tensor, Tensor]:
    """Continuous index (B, N) along one axis -> the two neighbouring integer indices (B, N, 2) and
    their linear weights (B, N, 2) = (1 - f, f).

    f is taken against a detached floor, so the weights are linear in the coordinate inside a cell and
    differentiable to any order; indices are clamped into range (safe to gather), and with "zeros"
    padding the weight of an out-of-range neighbour is zeroed.
    """
    top = size - 1
    if padding_mode == "border":
        idx = idx.clamp(0, top)  # zero gradient outside, as grid_sample's border clipping
    lo = idx.detach().floor()
    if padding_mode == "border":
        lo = lo.clamp(max=max(top - 1, 0))  # keep lo + 1 inside at the upper face (f = 1 there)
    frac = idx - lo  # (B, N)
    lo = lo.long()
    corners = torch.stack([lo, lo + 1], dim=-1)  # (B, N, 2)
    weights = torch.stack([1.0 - frac, frac], dim=-1)  # (B, N, 2)
    if padding_mode == "zeros":
        weights = weights * ((corners >= 0) & (corners <= top))
    return corners.clamp(0, top), weights


def corner_indices_and_weights(idx: Tensor, volume_shape, padding_mode: str) -> tuple[Tensor, Tensor]:
    """Continuous index (B, N, 3) in (x, y, z) -> flat indices (B, N, 8) into D*H*W and weights (B, N, 8).

    The 8 corners are ordered (dz, dy, dx) with dx fastest; each weight is the product of its three
    axis weights (plain products, no ``prod``: cheaper double backward).
    """
    D, H, W = volume_shape
    B, N = idx.shape[:2]
    xc, xw = axis_corners_and_weights(idx[..., 0], W, padding_mode)  # (B, N, 2) each
    yc, yw = axis_corners_and_weights(idx[..., 1], H, padding_mode)
    zc, zw = axis_corners_and_weights(idx[..., 2], D, padding_mode)
    flat = (zc[..., :, None, None] * H + yc[..., None, :, None]) * W + xc[..., None, None, :]  # (B, N, 2, 2, 2)
    weights = zw[..., :, None, None] * yw[..., None, :, None] * xw[..., None, None, :]  # (B, N, 2, 2, 2)
    return flat.reshape(B, N, 8), weights.reshape(B, N, 8)


def gather_corners(volume: Tensor, flat_index: Tensor) -> Tensor:
    """Values of ``volume`` (B, C, D, H, W) at flat corner indices (B, N, 8) -> (B, C, N, 8) (the twin's)."""
    B, C = volume.shape[:2]
    N = flat_index.shape[1]
    flat = volume.reshape(B, C, -1)  # (B, C, D*H*W) view, no copy
    index = flat_index.reshape(B, 1, N * 8).expand(B, C, N * 8)  # stride-0 over C
    return flat.gather(2, index).reshape(B, C, N, 8)


# --- the fast path: three bilinear primitives that differentiate into one another -------------------------
# With the volume as a row table T (B*M, C) (M = D*H*W, one row per voxel), flat corner rows f (B*N, 8) and
# weights w (B*N, 8), the lookup is out = interp(w, T) with
#   interp(w, T)[n]    = sum_k w[n, k] T[f[n, k]]                    (B*N, C)   embedding_bag, mode "sum"
#   corner_dot(g, T)   = <g[n], T[f[n, k]]>                          (B*N, 8)   row gather + bmm
#   splat(w, g)[m]     = sum_{(n, k): f[n, k] = m} w[n, k] g[n]      (B*M, C)   embedding_bag over the pairs grouped by row
# Each is bilinear, and the derivatives of each are the other two:
#   interp:     d/dw = corner_dot(g, T),  d/dT = splat(w, g)
#   corner_dot: d/dg = interp(h, T),      d/dT = splat(h, g)
#   splat:      d/dw = corner_dot(g, G),  d/dg = interp(w, G)
# so backward() of each calls the others' ``apply``: autograd records them under create_graph and the
# lookup is differentiable to any order w.r.t. w (hence the points) and T (hence the volume).


class _Rows:
    """The flat corner rows of one lookup, (B*N, 8) into a (n_rows, C) table, and (built on first use, then
    shared by every splat of this lookup, first and second order) the same pairs grouped by table row:
    ``points`` (8*B*N,) the point of each pair sorted by row (stable), ``order`` (8*B*N,) its position in
    the flattened (B*N, 8), ``starts`` (n_rows,) where each row's group begins."""

    def __init__(self, rows: Tensor, n_rows: int):
        if rows.dim() != 2 or rows.shape[1] != 8:
            raise InputError(f"trilinear_lookup: corner rows must be (P, 8), got {tuple(rows.shape)}")
        self.rows, self.n_rows = rows, n_rows  # (B*N, 8)
        self._grouped = None

    def grouped(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._grouped is None:
            flat = self.rows.reshape(-1)  # (8*B*N,)
            key = flat.int() if self.n_rows < 2**31 else flat  # int32 keys: measured ~3x faster to sort on CPU
            ordered, order = torch.sort(key, stable=True)  # (8*B*N,) each
            starts = torch.searchsorted(ordered, torch.arange(self.n_rows, dtype=key.dtype, device=key.device))  # (n_rows,)
            self._grouped = (order.bitwise_right_shift(3), order, starts)  # point = position // 8 (a shift: int64 division is slow)
        return self._grouped


def _interp(w: Tensor, table: Tensor, rows: _Rows) -> Tensor:
    """(B*N, 8) weights, (B*M, C) table -> (B*N, C) weighted sums of each point's 8 rows."""
    return torch.nn.functional.embedding_bag(rows.rows, table, mode="sum", per_sample_weights=w.contiguous())


_DOT_CHUNK_BYTES = 1 << 19  # CPU: gather ~512 KB of corner rows at a time, so the bmm reads them from cache


def _corner_dot(g: Tensor, table: Tensor, rows: _Rows) -> Tensor:
    """(B*N, C) g, (B*M, C) table -> (B*N, 8) dot products of g[n] with its 8 rows.

    A row gather (chunk, 8, C) then a bmm with g (chunk, C, 1). On CPU the points go in chunks of
    ``_DOT_CHUNK_BYTES`` of gathered rows (our choice: the one-shot (B*N, 8, C) gather leaves the cache and
    measured ~2.5x slower than 512-point chunks at C = 32); on other devices in one shot (fewer launches).
    """
    index = rows.rows  # (B*N, 8)
    P, K = index.shape
    C = table.shape[1]
    g = g.contiguous()
    if table.device.type != "cpu":
        values = table.index_select(0, index.reshape(-1)).view(P, K, C)  # (B*N, 8, C)
        return torch.bmm(values, g.view(P, C, 1)).view(P, K)  # (B*N, 8)
    step = max(1, _DOT_CHUNK_BYTES // (K * C * table.element_size()))  # points per chunk
    out = g.new_empty(P, K, 1)  # (B*N, 8, 1)
    buf = table.new_empty(min(step, P) * K, C)  # (chunk*8, C), reused
    flat = index.reshape(-1)  # (B*N*8,)
    for s in range(0, P, step):  # chunks of points, not samples: ceil(B*N / step) iterations
        e = min(s + step, P)
        values = torch.index_select(table, 0, flat[s * K : e * K], out=buf[: (e - s) * K])  # (chunk*8, C)
        torch.bmm(values.view(e - s, K, C), g[s:e, :, None], out=out[s:e])  # (chunk, 8, 1)
    return out.view(P, K)


def _splat(w: Tensor, g: Tensor, rows: _Rows) -> Tensor:
    """(B*N, 8) w, (B*N, C) g -> (n_rows, C): w[n, k] g[n] added into row rows[n, k].

    The transpose of ``_interp``, as an ``_interp`` over the pairs grouped by table row: one embedding_bag
    whose bag m holds the points reading row m (empty bags give zero rows), weighted by their corner weights."""
    points, order, starts = rows.grouped()  # (8*B*N,), (8*B*N,), (n_rows,)
    weights = w.reshape(-1).index_select(0, order)  # (8*B*N,) in grouped order
    return torch.nn.functional.embedding_bag(points, g.contiguous(), starts, mode="sum", per_sample_weights=weights)


class _Interp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, table, rows):
        ctx.save_for_backward(w, table)
        ctx.rows = rows
        return _interp(w, table, rows)

    @staticmethod
    def backward(ctx, g):
        w, table = ctx.saved_tensors
        gw = _CornerDot.apply(g, table, ctx.rows) if ctx.needs_input_grad[0] else None
        gt = _Splat.apply(w, g, ctx.rows) if ctx.needs_input_grad[1] else None
        return gw, gt, None


class _CornerDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, table, rows):
        ctx.save_for_backward(g, table)
        ctx.rows = rows
        return _corner_dot(g, table, rows)

    @staticmethod
    def backward(ctx, h):
        g, table = ctx.saved_tensors
        gg = _Interp.apply(h, table, ctx.rows) if ctx.needs_input_grad[0] else None
        gt = _Splat.apply(h, g, ctx.rows) if ctx.needs_input_grad[1] else None
        return gg, gt, None


class _Splat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, g, rows):
        ctx.save_for_backward(w, g)
        ctx.rows = rows
        return _splat(w, g, rows)

    @staticmethod
    def backward(ctx, big):
        w, g = ctx.saved_tensors
        gw = _CornerDot.apply(g, big, ctx.rows) if ctx.needs_input_grad[0] else None
        gg = _Interp.apply(w, big, ctx.rows) if ctx.needs_input_grad[1] else None
        return gw, gg, None


def _lookup_setup(volume: Tensor, points: Tensor, padding_mode: str) -> tuple[Tensor, Tensor]:
    """Continuous index -> flat corner indices (B, N, 8) into D*H*W and weights (B, N, 8)."""
    D, H, W = volume.shape[2:]
    size = torch.tensor([W, H, D], dtype=points.dtype, device=points.device)  # (3,) in x, y, z order
    idx = continuous_index(points, size)  # (B, N, 3)
    return corner_indices_and_weights(idx, (D, H, W), padding_mode)  # (B, N, 8), (B, N, 8)


def trilinear_lookup(volume: Tensor, points: Tensor, padding_mode: str = "border", check_volume: bool = True) -> Tensor:
    """Trilinear interpolation of ``volume`` (B, C, D, H, W) at ``points`` (B, N, 3) -> (B, N, C).

    ``points`` are normalised coordinates (x -> W, y -> H, z -> D) with align_corners=True: equal in
    value and gradient to ``F.grid_sample(volume, points[:, :, None, None], mode="bilinear",
    align_corners=True, padding_mode=...)``, but differentiable to any order w.r.t. points and volume.
    The result is contiguous (B, N, C). ``check_volume=False`` skips the volume's finiteness scan (the
    caller has checked it).
    """
    _check_lookup_inputs(volume, points, padding_mode, check_volume)
    B, C = volume.shape[:2]
    N, M = points.shape[1], volume[0, 0].numel()
    flat_index, weights = _lookup_setup(volume, points, padding_mode)  # (B, N, 8), (B, N, 8)
    offset = torch.arange(B, device=volume.device).mul_(M).view(B, 1, 1)  # (B, 1, 1) first row of each scene
    rows = _Rows((flat_index + offset).view(B * N, 8), B * M)  # (B*N, 8) rows of the table
    table = volume.reshape(B, C, M).transpose(1, 2).reshape(B * M, C)  # (B*M, C) channels-last copy
    out = _Interp.apply(weights.reshape(B * N, 8), table, rows)  # (B*N, C)
    return out.view(B, N, C)


def trilinear_lookup_twin(volume: Tensor, points: Tensor, padding_mode: str = "border") -> Tensor:
    """The readable twin of :func:`trilinear_lookup` (its former implementation): the 8 corners gathered
    channels-first (B, C, N, 8), multiplied by the weights and summed, every op differentiated by autograd.
    Same values and derivatives of every order to round-off; several times slower (tests/test_grid_fast.py)."""
    _check_lookup_inputs(volume, points, padding_mode)
    flat_index, weights = _lookup_setup(volume, points, padding_mode)  # (B, N, 8), (B, N, 8)
    values = gather_corners(volume, flat_index)  # (B, C, N, 8)
    out = (values * weights[:, None]).sum(dim=-1)  # (B, C, N)
    return out.transpose(1, 2)  # (B, N, C)
