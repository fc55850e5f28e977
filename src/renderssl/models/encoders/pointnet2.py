"""PointNet++ (single-scale grouping) in pure PyTorch: runs on CPU and GPU alike, no CUDA extension.

Batches are FLAT, as everywhere in renderssl: ``points (N, 3)``, ``features (N, C)`` (``C`` may be 0:
pass an ``(N, 0)`` tensor) and ``offset (B,)`` int64 cumulative counts (cloud ``b`` occupies rows
``offset[b-1]:offset[b]``). :class:`PointNet2` maps them to ``(N, out_channels)`` per-point features.

Parameter names and shapes follow the widely used pure-PyTorch reference yanx27/Pointnet_Pointnet2_pytorch
(``models/pointnet2_sem_seg.py`` / ``pointnet2_utils.py``): ``sa1..saL`` are
``PointNetSetAbstraction`` (``mlp_convs.{i}`` Conv2d 1x1 + ``mlp_bns.{i}`` BatchNorm2d) and ``fpL..fp1``
are ``PointNetFeaturePropagation`` (``mlp_convs.{i}`` Conv1d 1x1 + ``mlp_bns.{i}`` BatchNorm1d),
registered in the reference's order (sa1, sa2, ..., fpL, ..., fp1). The ``"ssg"`` preset's state dict
has exactly the keys and shapes of the reference's ``get_model(num_classes)`` without its
classification head (``conv1``, ``bn1``, ``drop1``, ``conv2``); it loads there with ``strict=False``.

Choices (where the papers / reference code leave a choice, or where we differ):

* ``in_channels`` is the reference's ``D`` (the channels of ``l0_points``): sa1's first conv takes
  ``3 + in_channels`` inputs. The reference's sem_seg feeds ``l0_points`` = all 9 S3DIS channels
  (absolute xyz, rgb, room-normalised xyz), hence its ``9 + 3``; the ``"ssg"`` preset keeps
  ``in_channels=9`` so its shapes equal the reference. To reuse such weights, pass that 9-channel
  layout as ``features``. Absolute xyz is never added to the features implicitly.
* Grouped input = ``cat([grouped_xyz - centre, grouped_features])`` (relative xyz FIRST, not divided by
  the radius, as the reference's SSG; VoteNet divides by the radius, we don't). FP input =
  ``cat([skip_features, interpolated_coarse_features])`` (skip FIRST, as the reference).
* fp1 gets no skip features (the reference's and the original TF sem_seg pass ``None``); set
  ``fp1_skip=True`` to concatenate the input features there (fp1 then takes ``in_channels`` more).
* Farthest point sampling is :func:`renderssl.data.points.farthest_point_sampling`: it starts at each
  cloud's FIRST point (the CUDA pointnet2 convention; the reference starts at a random point), greedy
  max-min squared distance, ties -> lowest index, no point picked twice. The CUDA kernel's skip of
  points with ``|p|^2 <= 1e-3`` (meant for zero padding) is not reproduced. A cloud with ``n < npoint``
  points keeps ``min(npoint, n)`` samples at that level (all of its points).
* Ball query: the first ``nsample`` points in index order with ``d^2 < r^2`` (strict, as the CUDA
  kernel; the reference uses ``<=``), among the centre's own cloud; short rows are filled with the first
  hit; a centre with no hit (impossible inside the encoder, where centres are cloud points) gets the
  cloud's first point, as the CUDA kernel's zero-initialised index.
* Interpolation (FP): the 3 nearest known points of the same cloud, weights ``1 / (d^2 + 1e-8)`` on
  SQUARED distances (as the reference's ``dist_recip = 1 / (dists + 1e-8)`` on ``square_distance``),
  normalised to sum 1; ties (our choice): the 3 smallest by ``(d^2, index)``. A cloud with fewer than 3 known
  points uses those it has (weight 0 for the missing ones; the reference's special case for 1 known point is
  the same thing).
* Neighbour searches run without gradient; the distances that enter the interpolation weights and the
  relative xyz are recomputed with gradient, so gradients reach ``points`` as well as ``features``.
* Shared MLPs run over ALL groups of ALL clouds at once (the 1x1 convs as matmuls on channel-last
  tensors, BatchNorm on a channel-last 4D view), so BatchNorm statistics cover the real groups only,
  never padding; with ``B`` clouds of ``npoint`` samples they equal the reference's ``(B, C, ns, S)``.
  In training mode a batch must hold more than one point in total (BatchNorm1d at full resolution).

Vectorisation and memory: FPS, ball query and the 3-NN search pad the flat batch INTERNALLY to
``(B, Nmax)`` (padding is never sampled, grouped or interpolated from). FPS loops over its iterations in
Python (inherent), each iteration vectorised over all clouds. On float CPU tensors the three searches run
as C++ twins with identical results (:mod:`renderssl.data.point_ops_compiled`: 5-17x faster each, 1.6x on a
``gs3_rgbd_tiny`` step, where the torch searches were ~36% of it); the torch code is the readable twin and
the fallback (CUDA, no compiler). Ball query and 3-NN work on chunks of
query points so that the distance block holds at most ``chunk_entries`` entries (default 2^24 on GPU,
2^18 on CPU where cache-sized blocks run ~5x faster): memory stays bounded at scene scale (200k points).
A chunk that lies inside one cloud reads that cloud's points directly (no gather, no padding columns).
Ball query keeps the first ``nsample`` hits per row from the chunk's (row-major) hit list, no sort.
Everything else is plain batched tensor code: no loop over points, centres or clouds.

Presets (:data:`PRESETS`, :func:`build_pointnet2`):

* ``"ssg"``: yanx27's ``pointnet2_sem_seg`` (npoint 1024/256/64/16, radius 0.1/0.2/0.4/0.8, nsample 32,
  SA mlps [32,32,64]/[64,64,128]/[128,128,256]/[256,256,512], FP mlps [256,256]/[256,256]/[256,128]/
  [128,128,128], in_channels 9); out 128. Radii in units of a normalised 1 m block (S3DIS).
* ``"scene"``: metre-scale rooms (GS³'s back-projected RGB-D clouds): VoteNet's backbone SA levels
  (npoint 2048/1024/512/256, radius 0.2/0.4/0.8/1.2, nsample 64/32/16/16, mlps [64,64,128]/
  [128,128,256]/[128,128,256]/[128,128,256]); VoteNet has two FP layers [256,256] back to level 2, we
  keep those (fp4, fp3) and add the sem_seg pair fp2 [256,128], fp1 [128,128,128] down to full
  resolution, so out_channels = 128 as GS³'s PointNet++ ("configured to output 128-dimensional
  features"). in_channels 3 (RGB).
* ``"small"``: CPU tests and demos: npoint 512/128/32/8, radius 0.2/0.4/0.8/1.6 (metres), nsample 16,
  mlps [16,16,32]/[32,32,64]/[64,64,128]/[128,128,128], FP [128,128]/[128,128]/[128,64]/[64,64,64];
  out 64, in_channels 3.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.point_ops_compiled import ball_query_compiled, three_nn_compiled
from ...data.point_ops_compiled import usable as compiled_points_usable
from ...data.points import check_points, cloud_index, farthest_point_sampling, offset_to_counts, pad_clouds
from ...errors import InputError, check_finite
from .presets import apply_preset

DEFAULT_CHUNK_ENTRIES = 2 ** 24  # largest (queries x Nmax) distance block built at once (GPU)
CPU_CHUNK_ENTRIES = 2 ** 18  # on CPU: cache-sized blocks are ~5x faster than 2^24 ones
FP_EPS = 1e-8  # interpolation weight 1 / (d^2 + FP_EPS), d^2 squared distance, as the reference


# ---------------------------------------------------------------------------------------------------
# neighbour searches


def _default_chunk(device: torch.device) -> int:
    """Distance-block size: small enough to stay in cache on CPU (much faster there), large on GPU."""
    return DEFAULT_CHUNK_ENTRIES if device.type != "cpu" else CPU_CHUNK_ENTRIES


def _check_queries(fn: str, what: str, queries: Tensor, query_offset: Tensor, data: Tensor,
                   data_offset: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Validate the queries and both offsets (data clouds non-empty, query clouds may be empty); returns
    the ``(batch, counts)`` of the queries and of the data (:func:`cloud_index`)."""
    check_points(f"{fn}: {what}", queries)
    data_clouds = cloud_index(data_offset, len(data), data.device, f"{fn}: offset", allow_empty=False)
    query_clouds = cloud_index(query_offset, len(queries), data.device, f"{fn}: {what}_offset")
    if len(query_clouds[1]) != len(data_clouds[1]):
        raise InputError(f"{fn}: {what}_offset has {len(query_clouds[1])} clouds, offset has {len(data_clouds[1])}")
    if queries.device != data.device:
        raise InputError(f"{fn}: {what} on {queries.device}, points on {data.device}")
    return query_clouds, data_clouds


def _distance_blocks(queries: Tensor, query_clouds: tuple[Tensor, Tensor], data: Tensor,
                     data_clouds: tuple[Tensor, Tensor], chunk_entries: int | None):
    """Yield ``(lo, hi, start, d2)`` over chunks of queries: ``d2`` (hi - lo, ncols) squared distances from
    queries ``lo:hi`` to the points of their own cloud, column j = the cloud's j-th point (+inf where a
    cloud has fewer than ncols points); ``start`` (hi - lo, 1) the flat row of each query's cloud's first
    point. A chunk inside one cloud uses that cloud's points directly (ncols = its size); a chunk that
    spans clouds gathers the (B, Nmax) padded layout (ncols = Nmax). ``*_clouds``: ``(batch, counts)``."""
    (qbatch, q_b), (batch, n_b) = query_clouds, data_clouds
    starts, nmax = n_b.cumsum(0) - n_b, int(n_b.max())
    planes = pad_clouds(data, batch, n_b, math.inf).permute(2, 0, 1).contiguous()  # (3, B, Nmax), inf: never near
    queries = queries.to(data.dtype)
    qoff = [0] + q_b.cumsum(0).tolist()
    sizes, first = n_b.tolist(), starts.tolist()
    chunk_entries = _default_chunk(data.device) if chunk_entries is None else int(chunk_entries)
    if chunk_entries < 1:
        raise InputError(f"chunk_entries must be >= 1, got {chunk_entries}")
    step = max(1, chunk_entries // nmax)
    total = queries.shape[0]
    for lo in range(0, total, step):
        hi = min(total, lo + step)
        q = queries[lo:hi]
        b_lo, b_hi = bisect_right(qoff, lo) - 1, bisect_right(qoff, hi - 1) - 1
        if b_lo == b_hi:  # one cloud: broadcast its own points, no gather, no padding columns
            cols = planes[:, b_lo, : sizes[b_lo]]
            x, y, z = cols[0][None], cols[1][None], cols[2][None]
            start = starts.new_full((hi - lo, 1), first[b_lo])
        else:
            b = qbatch[lo:hi]
            x, y, z = planes[0, b], planes[1, b], planes[2, b]
            start = starts[b, None]
        d2 = (x - q[:, 0:1]).square_()
        tmp = (y - q[:, 1:2]).square_()
        d2 += tmp
        torch.sub(z, q[:, 2:3], out=tmp).square_()
        d2 += tmp
        del tmp
        yield lo, hi, start, d2


@torch.no_grad()
def ball_query(radius: float, nsample: int, points: Tensor, offset: Tensor, centres: Tensor, centre_offset: Tensor,
               chunk_entries: int | None = None) -> Tensor:
    """pointnet2 ball query on a flat batch -> (M, nsample) int64 flat indices into ``points``.

    Row m lists, in index order, the first ``nsample`` points of centre m's own cloud with squared
    distance strictly below ``radius**2``; rows with fewer hits repeat the first hit; a centre with no
    hit at all gets its cloud's first point. Centres are processed in chunks so that a (chunk, Nmax)
    distance block has at most ``chunk_entries`` entries (Nmax = largest cloud; default 2^18 on CPU,
    2^24 elsewhere; padding never matches). On float CPU tensors a C++ twin returns the same rows
    (:mod:`renderssl.data.point_ops_compiled`); the torch code below is the readable twin.
    """
    fn = "ball_query"
    check_points(f"{fn}: points", points)
    centre_clouds, clouds = _check_queries(fn, "centres", centres, centre_offset, points, offset)
    if not radius > 0:
        raise InputError(f"{fn}: radius must be > 0, got {radius}")
    if nsample < 1:
        raise InputError(f"{fn}: nsample must be >= 1, got {nsample}")
    if compiled_points_usable(points, centres):  # the C++ twin: the same rows (data/point_ops_compiled.py)
        return ball_query_compiled(radius, nsample, points, clouds[1], centres, centre_clouds[0])  # (M, nsample)
    r2 = float(radius) ** 2
    out = torch.zeros((centres.shape[0], nsample), dtype=torch.long, device=points.device)
    for lo, hi, start, d2 in _distance_blocks(centres, centre_clouds, points, clouds, chunk_entries):
        row, col = (d2 < r2).nonzero(as_tuple=True)  # all hits, row-major: index order within a row
        del d2
        nhit = torch.bincount(row, minlength=hi - lo)
        row_first = torch.cumsum(nhit, 0) - nhit  # position of each row's first hit in the hit list
        rank = torch.arange(row.numel(), device=row.device) - row_first[row]
        keep = rank < nsample
        local = torch.zeros((hi - lo, nsample), dtype=torch.long, device=points.device)
        local[row[keep], rank[keep]] = col[keep]
        have = torch.arange(nsample, device=points.device)[None] < nhit[:, None]
        out[lo:hi] = torch.where(have, local, local[:, :1]) + start  # fill with the first hit (0 if none)
    return out


@torch.no_grad()
def _three_nn(unknown: Tensor, unknown_clouds: tuple[Tensor, Tensor], known: Tensor,
              known_clouds: tuple[Tensor, Tensor], chunk_entries: int | None) -> tuple[Tensor, Tensor]:
    """(N, 3) flat indices into ``known`` of the 3 nearest known points of the same cloud, and a (N, 3)
    bool mask of which of them exist (a cloud may have fewer than 3 known points; missing ones point at the
    cloud's first point). Ties (our choice): the 3 smallest by ``(d^2, index)``, in that order; topk leaves
    the order among equal values unspecified, so rows whose 3rd value is shared beyond the 3 picked are
    re-picked by a stable sort, and every row's 3 are put in ``(d^2, index)`` order. On float CPU tensors
    a C++ twin returns the same indices (:mod:`renderssl.data.point_ops_compiled`)."""
    (ubatch, _), (_, k_b) = unknown_clouds, known_clouds
    if compiled_points_usable(known, unknown):
        return three_nn_compiled(unknown, ubatch, known, k_b)  # (N, 3), (N, 3)
    idx = torch.zeros((unknown.shape[0], 3), dtype=torch.long, device=known.device)
    exists = torch.zeros((unknown.shape[0], 3), dtype=torch.bool, device=known.device)
    for lo, hi, start, d2 in _distance_blocks(unknown, unknown_clouds, known, known_clouds, chunk_entries):
        kk = min(3, d2.shape[1])
        vals, j = d2.topk(kk, dim=1, largest=False, sorted=True)  # (rows, kk)
        tied = (d2 <= vals[:, -1:]).sum(1) > kk  # (rows,) the kk-th value is shared by an unpicked column
        if bool(tied.any()):
            j[tied] = d2[tied].sort(dim=1, stable=True).indices[:, :kk]  # lowest columns among equal values
        j = j.sort(dim=1).values  # (rows, kk) by column, then stably by value: (d2, column) order
        j = j.gather(1, d2.gather(1, j).sort(dim=1, stable=True).indices)
        real = j < k_b[ubatch[lo:hi], None]  # padding (d2 = inf) sits at columns >= the cloud's size
        idx[lo:hi] = start  # missing ones (kk < 3 or padding): the cloud's first point, whatever the chunking
        idx[lo:hi, :kk] = torch.where(real, j, 0) + start
        exists[lo:hi, :kk] = real
    return idx, exists


def three_nn_interpolate(unknown: Tensor, unknown_offset: Tensor, known: Tensor, known_offset: Tensor,
                         known_features: Tensor, chunk_entries: int | None = None) -> Tensor:
    """Inverse-distance interpolation from the 3 nearest known points of the same cloud -> (N, C).

    Weights ``w_i = 1 / (d_i^2 + 1e-8)`` with ``d_i^2`` the SQUARED distance (as the reference), normalised
    to sum 1. The search runs without gradient in chunks of ``chunk_entries`` (queries x Nmax) entries
    (default 2^18 on CPU, 2^24 elsewhere); the weights are recomputed with gradient, so gradients reach
    ``known_features``, ``known`` and ``unknown``. Clouds with fewer than 3 known points use the ones
    they have.
    """
    fn = "three_nn_interpolate"
    check_points(f"{fn}: known", known)
    unknown_clouds, known_clouds = _check_queries(fn, "unknown", unknown, unknown_offset, known, known_offset)
    if known_features.ndim != 2 or known_features.shape[0] != known.shape[0]:
        raise InputError(f"{fn}: known_features: expected shape ({known.shape[0]}, C), got {tuple(known_features.shape)}")
    idx, exists = _three_nn(unknown, unknown_clouds, known, known_clouds, chunk_entries)
    d2 = (unknown[:, None, :] - known[idx]).square().sum(-1)  # (N, 3), with gradient
    recip = torch.where(exists, 1.0 / (d2 + FP_EPS), torch.zeros_like(d2))
    weight = recip / recip.sum(1, keepdim=True)
    return (known_features[idx] * weight.unsqueeze(-1).to(known_features.dtype)).sum(1)


# ---------------------------------------------------------------------------------------------------
# layers


class _SharedMLP(nn.Module):
    """The reference's shared MLP: ``mlp_convs.{i}`` 1x1 ``conv`` + ``mlp_bns.{i}`` ``bn``, one per width."""

    def __init__(self, in_channel: int, mlp: list[int] | tuple[int, ...], chunk_entries: int | None, conv, bn):
        super().__init__()
        self.in_channel = int(in_channel)
        self.chunk_entries = chunk_entries
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        last = in_channel
        for width in mlp:
            self.mlp_convs.append(conv(last, width, 1))
            self.mlp_bns.append(bn(width))
            last = width
        self.out_channels = last


class PointNetSetAbstraction(_SharedMLP):
    """SSG set abstraction (reference names): FPS centres, ball-query groups, shared MLP, max-pool.

    ``in_channel`` counts the 3 relative-xyz channels, as the reference: ``in_channel = C + 3``.
    """

    def __init__(self, npoint: int, radius: float, nsample: int, in_channel: int, mlp: list[int] | tuple[int, ...],
                 chunk_entries: int | None = None):
        super().__init__(in_channel, mlp, chunk_entries, nn.Conv2d, nn.BatchNorm2d)
        self.npoint, self.radius, self.nsample = int(npoint), float(radius), int(nsample)

    def forward(self, points: Tensor, features: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, 3), (N, C), (B,) -> centres (M, 3), features (M, out_channels), centre offsets (B,)."""
        counts = offset_to_counts(offset).clamp(max=self.npoint)  # (B,) samples per cloud
        centres = points[farthest_point_sampling(points, counts, offset)]  # (M, 3), cloud by cloud
        centre_offset = counts.cumsum(0)  # (B,)
        group = ball_query(self.radius, self.nsample, points, offset, centres, centre_offset, self.chunk_entries)
        rel = points[group] - centres[:, None, :]  # (M, ns, 3), not divided by the radius (as the reference)
        x = torch.cat([rel.to(features.dtype), features[group]], dim=-1)  # (M, ns, 3 + C)
        m, ns = group.shape
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = F.linear(x, conv.weight.flatten(1), conv.bias)  # 1x1 conv on channel-last groups
            y = bn(x.view(1, m, ns, -1).permute(0, 3, 1, 2))  # NHWC view: stats over all real groups
            x = F.relu(y.permute(0, 2, 3, 1).reshape(m, ns, -1), inplace=True)
        return centres, x.max(dim=1).values, centre_offset  # max (not amax): its backward is a scatter


class PointNetFeaturePropagation(_SharedMLP):
    """Feature propagation (reference names): 3-NN interpolation, concat skip, shared MLP.

    ``in_channel`` = skip channels + coarse channels; the MLP input is ``cat([skip, interpolated])``.
    """

    def __init__(self, in_channel: int, mlp: list[int] | tuple[int, ...], chunk_entries: int | None = None):
        super().__init__(in_channel, mlp, chunk_entries, nn.Conv1d, nn.BatchNorm1d)

    def forward(self, points: Tensor, offset: Tensor, coarse_points: Tensor, coarse_offset: Tensor,
                skip: Tensor | None, coarse_features: Tensor) -> Tensor:
        """Fine (N, 3), (B,); coarse (S, 3), (B,); skip (N, C1) or None; coarse features (S, C2) -> (N, out)."""
        x = three_nn_interpolate(points, offset, coarse_points, coarse_offset, coarse_features, self.chunk_entries)
        if skip is not None:
            x = torch.cat([skip, x], dim=-1)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(bn(F.linear(x, conv.weight.flatten(1), conv.bias)), inplace=True)  # BatchNorm1d on (N, C)
        return x


# ---------------------------------------------------------------------------------------------------
# encoder


PRESETS: dict[str, dict] = {
    "ssg": dict(
        in_channels=9,
        npoints=(1024, 256, 64, 16), radii=(0.1, 0.2, 0.4, 0.8), nsamples=(32, 32, 32, 32),
        sa_mlps=((32, 32, 64), (64, 64, 128), (128, 128, 256), (256, 256, 512)),
        fp_mlps=((256, 256), (256, 256), (256, 128), (128, 128, 128)),
    ),
    "scene": dict(
        in_channels=3,
        npoints=(2048, 1024, 512, 256), radii=(0.2, 0.4, 0.8, 1.2), nsamples=(64, 32, 16, 16),
        sa_mlps=((64, 64, 128), (128, 128, 256), (128, 128, 256), (128, 128, 256)),
        fp_mlps=((256, 256), (256, 256), (256, 128), (128, 128, 128)),
    ),
    "small": dict(
        in_channels=3,
        npoints=(512, 128, 32, 8), radii=(0.2, 0.4, 0.8, 1.6), nsamples=(16, 16, 16, 16),
        sa_mlps=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128, 128)),
        fp_mlps=((128, 128), (128, 128), (128, 64), (64, 64, 64)),
    ),
}


@dataclass
class PointNet2Config:
    """Per-level lists run from the finest level (sa1) to the coarsest (saL).

    ``fp_mlps[i]`` is the MLP of ``fp{L - i}``: listed in execution order (coarsest first, as the
    reference builds fp4, fp3, fp2, fp1); the last width of the last one is ``out_channels``.
    """

    preset: str | None = "ssg"  # fills every field below left at None
    in_channels: int | None = None  # feature channels, xyz not counted (the reference's D); 0 = xyz only
    npoints: tuple[int, ...] | None = None
    radii: tuple[float, ...] | None = None
    nsamples: tuple[int, ...] | None = None
    sa_mlps: tuple[tuple[int, ...], ...] | None = None
    fp_mlps: tuple[tuple[int, ...], ...] | None = None
    fp1_skip: bool = False  # concatenate the input features to fp1's input (the reference doesn't)
    chunk_entries: int | None = None  # neighbour-search distance block size; None: 2^18 on CPU, 2^24 on GPU

    def __post_init__(self):
        def bad(field: str, msg: str):
            raise InputError(f"pointnet2.{field}: {msg}")

        apply_preset(self, PRESETS, "pointnet2", ("in_channels", "npoints", "radii", "nsamples", "sa_mlps", "fp_mlps"))

        def ints(field: str, values, minimum: int) -> tuple[int, ...]:
            try:
                out = tuple(values)
            except TypeError:
                bad(field, f"expected a sequence, got {values!r}")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in out):
                bad(field, f"expected integers >= {minimum}, got {list(out)}")
            return out

        if isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int) or self.in_channels < 0:
            bad("in_channels", f"expected an integer >= 0, got {self.in_channels!r}")
        self.npoints = ints("npoints", self.npoints, 1)
        levels = len(self.npoints)
        if levels == 0:
            bad("npoints", "at least one level is needed")
        self.nsamples = ints("nsamples", self.nsamples, 1)
        try:
            self.radii = tuple(float(r) for r in self.radii)
        except (TypeError, ValueError):
            bad("radii", f"expected a sequence of numbers, got {self.radii!r}")
        if any(not r > 0 or r == float("inf") for r in self.radii):
            bad("radii", f"expected finite radii > 0, got {list(self.radii)}")
        try:
            self.sa_mlps = tuple(ints("sa_mlps", m, 1) for m in self.sa_mlps)
            self.fp_mlps = tuple(ints("fp_mlps", m, 1) for m in self.fp_mlps)
        except TypeError:
            bad("sa_mlps/fp_mlps", "expected a sequence of sequences of widths")
        for name in ("radii", "nsamples", "sa_mlps", "fp_mlps"):
            if len(getattr(self, name)) != levels:
                bad(name, f"has {len(getattr(self, name))} levels, npoints has {levels}")
        for name in ("sa_mlps", "fp_mlps"):
            if any(len(m) == 0 for m in getattr(self, name)):
                bad(name, "every level needs at least one layer")
        if self.chunk_entries is not None and (
                isinstance(self.chunk_entries, bool) or not isinstance(self.chunk_entries, int) or self.chunk_entries < 1):
            bad("chunk_entries", f"expected an integer >= 1, got {self.chunk_entries!r}")
        self.fp1_skip = bool(self.fp1_skip)

    @property
    def levels(self) -> int:
        return len(self.npoints)

    @property
    def out_channels(self) -> int:
        return self.fp_mlps[-1][-1]


class PointNet2(nn.Module):
    """PointNet++ SSG encoder: ``forward(points (N, 3), features (N, C), offset (B,)) -> (N, out_channels)``."""

    def __init__(self, config: PointNet2Config | None = None):
        super().__init__()
        self.config = config = config if config is not None else PointNet2Config()
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        widths = [config.in_channels] + [m[-1] for m in config.sa_mlps]  # feature width of every level
        levels = config.levels
        for i in range(levels):
            self.add_module(f"sa{i + 1}", PointNetSetAbstraction(
                config.npoints[i], config.radii[i], config.nsamples[i], widths[i] + 3, config.sa_mlps[i],
                config.chunk_entries))
        coarse = widths[levels]
        for j, mlp in enumerate(config.fp_mlps):
            level = levels - j  # fp{level}: from level `level` to level `level - 1`
            skip = widths[level - 1] if level > 1 or config.fp1_skip else 0
            self.add_module(f"fp{level}", PointNetFeaturePropagation(skip + coarse, mlp, config.chunk_entries))
            coarse = mlp[-1]

    def _check_input(self, points: Tensor, features: Tensor, offset: Tensor) -> Tensor:
        """Validate the input; returns ``offset`` as int64 on the points' device."""
        check_points("PointNet2: points", points)
        n = points.shape[0]
        if not isinstance(features, Tensor) or features.ndim != 2 or tuple(features.shape) != (n, self.in_channels):
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise InputError(f"PointNet2: features: expected shape ({n}, {self.in_channels}) "
                             f"(pass an ({n}, 0) tensor when in_channels = 0), got {got}")
        if not features.dtype.is_floating_point:
            raise InputError(f"PointNet2: features: expected a floating-point tensor, got {features.dtype}")
        _, counts = cloud_index(offset, n, points.device, "PointNet2: offset", allow_empty=False)
        check_finite("PointNet2: features", features)
        if self.training and n < 2:
            raise InputError("PointNet2: training mode needs more than one point in the batch (BatchNorm)")
        return counts.cumsum(0)

    def forward(self, points: Tensor, features: Tensor, offset: Tensor) -> Tensor:
        """(N, 3) points, (N, in_channels) features, (B,) offsets -> (N, out_channels) per-point features."""
        offset = self._check_input(points, features, offset)
        levels = self.config.levels
        xyz, feats, offs = [points], [features], [offset]
        for i in range(levels):
            p, f, o = getattr(self, f"sa{i + 1}")(xyz[-1], feats[-1], offs[-1])
            xyz.append(p)
            feats.append(f)
            offs.append(o)
        x = feats[levels]
        for level in range(levels, 0, -1):
            skip = feats[level - 1] if level > 1 or self.config.fp1_skip else None
            x = getattr(self, f"fp{level}")(xyz[level - 1], offs[level - 1], xyz[level], offs[level], skip, x)
        return x


def build_pointnet2(preset: str = "ssg", **overrides) -> PointNet2:
    return PointNet2(PointNet2Config(preset=preset, **overrides))


__all__ = [
    "PRESETS", "PointNet2", "PointNet2Config", "PointNetSetAbstraction", "PointNetFeaturePropagation",
    "build_pointnet2", "ball_query", "three_nn_interpolate",
]
