"""The point-cloud data path: RGB-D frames -> world cloud -> joint point/camera augmentation -> grid
sampling -> point masks (PonderV2, GS³).

Batching follows renderssl and Pointcept: points ``(N, 3)`` of several clouds concatenated cloud by
cloud, with ``offset`` ``(B,)`` cumulative counts or, equivalently, ``batch`` ``(N,)`` cloud indices;
``offset=None`` means a single cloud. Every random draw comes from an explicit ``torch.Generator``
(drawn on the CPU, then moved to the points' device); functions that draw refuse ``generator=None``.

Choices where the papers are silent
-----------------------------------
Frames: ``viewset_to_pointcloud`` back-projects the valid depth (> 0) of every frame of a scene and
  ``fuse_frames`` that of the chosen frames (it selects them, then calls ``viewset_to_pointcloud``):
  points come frame by frame, pixels in row-major order; every ``stride``-th pixel in both directions;
  per-pixel colours, normals, semantic and instance labels come along when the scene has them;
  ``max_points`` keeps a uniform random subset in the original order, drawn from ``generator`` (seed 0
  when None, so the result stays deterministic).
Grid coordinates: ``floor((p - min over the cloud) / g)``, so every cloud's coordinates start at 0 on
  each axis and do not depend on where the cloud sits. Pointcept computes ``floor(p / g) - min floor(p / g)``
  instead (voxel edges fixed to the world origin); the two agree up to that shift of voxel edges.
  ``g`` is one size or one per axis.
Voxel keys: exact mixed-radix packing of (cloud, x, y, z) into one int64, after subtracting the
  coordinate minimum, not Pointcept's FNV hash (which can collide). A range too large for int64 raises.
Grid sampling keeps exactly one point per occupied voxel per cloud and returns the kept indices in
  ascending order, so the kept points keep their original order. ``"random"`` picks a uniformly random
  point of each voxel (Pointcept's train mode draws ``randint(max count) % count``, slightly non-uniform
  when voxel counts differ; here every point of a voxel has exactly the same chance);
  ``"first"`` the lowest index; ``"center"`` the point nearest (Euclidean, metres) to the voxel centre,
  ties to the lowest index. Pointcept's test mode (every point in one of several sampled copies) is not
  provided. Grid coordinates of the kept points are ``grid_coordinates(points)[kept]``: recomputing them
  on the subset could shift them, as the subset's minimum can differ from the cloud's.
Augmentation (``PointAugmentConfig``):
  * x' = s F Rz Ry Rx (x - c) + c: rotation about x, then y, then z, then uniform scale s, then
    a mirror F = diag(-1, 1, 1) (Pointcept's order: rotate, scale, flip). The pivot c is the centre of
    the cloud's x-y bounding box at its lowest z (the point that Pointcept's CenterShift moves to the
    origin before rotating), so the cloud stays where it was; ``random_point_transform`` alone pivots
    on the world origin unless a pivot is given.
  * Angles uniform in [-rotate_xy, rotate_xy] about x and y, [-rotate_z, rotate_z] about z (GS³: pi/64
    and pi; these are the defaults), applied to every sample (Pointcept applies each rotation with p=0.5).
  * Scale uniform in ``scale`` = (0.9, 1.1) (Pointcept's ScanNet RandomScale); the flip mirrors x only,
    with ``flip_prob`` = 0.5 (a y-mirror equals the x-mirror followed by a half turn about z, which the
    default z-rotation already draws).
  * No translation, jitter or colour augmentation (PonderV2 says "etc."; nothing names them).
  * Points, normals and cameras move together through one ``SimilarityTransform``: normals by F R,
    c2w' = T c2w, so every point keeps its pixel and its z-depth scales by s.
  * Dropout removes exactly round(ratio N) points (halves round up; Pointcept keeps int(N (1 - ratio)))
    with probability ``dropout_prob``, and keeps the survivors in their original order. Default off
    (``dropout_ratio`` = 0); PonderV2's pretraining uses 0.8 with probability 1.
  * Per-point keys are ``POINT_KEYS``; other entries of a sample pass through unchanged.
  * Draw order from the generator: 3 angles, flip, scale, then (only with dropout) the dropout coin
    and the dropout mask.
Masks (True = masked, i.e. removed from the encoder's input):
  * Counts are round(ratio n) per cloud with halves rounded up, exact (not a Bernoulli draw per point).
  * Point groups: each cloud of n points gets G = ceil(n / points_per_group) centres by farthest point
    sampling, and every point joins its nearest centre (ties to the first centre; a centre always joins
    its own group), so the groups partition the cloud and none is empty. PonderV2 names "2048 groups of
    64 points" without saying how they are formed; Point-MAE-style kNN groups would overlap and leave
    points out, which a mask over points cannot express. Groups are equal in size only on average, so the
    masked fraction of points is ``ratio`` on average, while the masked fraction of groups is exact.
    ``point_group_mask`` draws the FPS start points first, then the group mask, so ``point_groups`` with
    an identically seeded generator gives its groups.
  * Farthest point sampling (also PointNet++'s sampler) starts at the first point of each cloud
    (pointops' choice) or, with a generator, at a uniformly random point, then takes the point of
    greatest squared distance to its nearest pick (ties to the lowest index); it never picks a point
    twice, even among coincident points. It is batched over clouds by padding (padding is never picked):
    a Python loop over the samples, O(S_max B N_max) work on per-axis coordinate planes.
  * Nearest centres minimise |c|^2 - 2 p.c (a batched matrix product, coordinates taken from each cloud's
    minimum), exact up to float rounding: a point almost equidistant from two centres may join either.
    They are searched in chunks of at most ``MAX_PAIRS_PER_CHUNK`` point-centre pairs (B G_max c <= 2^22).
  * Block mask (PonderV2 code's optional mask): blocks are ``floor(coords / block_size)`` of the grid
    coordinates, so they are anchored at each cloud's minimum; round(ratio K) of the K occupied blocks
    of each cloud are masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError, check_finite
from ..geometry import Cameras, SimilarityTransform, axis_angle_to_rotmat
from .point_ops_compiled import fps_compiled
from .point_ops_compiled import usable as compiled_points_usable
from .types import PointCloud, ViewSet

GRID_MODES = ("random", "first", "center")
POINT_KEYS = ("points", "colors", "normals", "semantic", "instance")  # per-point entries of a sample
MAX_PAIRS_PER_CHUNK = 1 << 22  # point-centre pairs per chunk of the nearest-centre search (16 MB float32)
INT64_MAX = 2**63 - 1


# ---- checks ---------------------------------------------------------------------------------------
def check_points(name: str, points) -> None:
    """Raise :class:`InputError` unless ``points`` is a finite floating (N, 3) tensor."""
    if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[1] != 3:
        got = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise InputError(f"{name}: expected a tensor of shape (N, 3), got {got}")
    if not points.is_floating_point():
        raise InputError(f"{name}: expected floating-point coordinates, got {points.dtype}")
    check_finite(name, points)


def check_coords(coords) -> None:
    """Raise :class:`InputError` unless ``coords`` is an integer (N, 3) tensor."""
    if not isinstance(coords, Tensor) or coords.dim() != 2 or coords.shape[1] != 3 or coords.is_floating_point():
        got = f"{tuple(coords.shape)} {coords.dtype}" if isinstance(coords, Tensor) else type(coords).__name__
        raise InputError(f"coords: expected an (N, 3) integer tensor, got {got}")


def check_ratio(name: str, ratio: float) -> None:
    if not 0.0 <= float(ratio) < 1.0:
        raise InputError(f"{name}: must lie in [0, 1), got {ratio}")


def check_index(name: str, index, length: int | None = None) -> None:
    """Raise :class:`InputError` unless ``index`` is a 1-D integer tensor (of ``length`` entries)."""
    ok = isinstance(index, Tensor) and index.dim() == 1 and not index.is_floating_point() and index.dtype != torch.bool
    if not ok or (length is not None and len(index) != length):
        got = f"{tuple(index.shape)} {index.dtype}" if isinstance(index, Tensor) else type(index).__name__
        want = f"({length},)" if length is not None else "1-D"
        raise InputError(f"{name}: expected a {want} integer tensor, got {got}")


def require_generator(generator, where: str) -> None:
    if not isinstance(generator, torch.Generator):
        raise InputError(f"generator: {where} draws random numbers and needs a torch.Generator, got {generator!r}")


def mask_count(counts: Tensor, ratio: float) -> Tensor:
    """round(ratio * n) for (B,) counts, halves rounded up."""
    return torch.floor(counts.double() * float(ratio) + 0.5).long()  # (B,)


# ---- offsets --------------------------------------------------------------------------------------
def offset_to_counts(offset: Tensor, name: str = "offset") -> Tensor:
    """(B,) cumulative counts -> (B,) counts per cloud; errors name the argument ``name``."""
    check_index(name, offset)
    counts = torch.diff(offset, prepend=offset.new_zeros(1))  # (B,)
    if bool((counts < 0).any()):
        raise InputError(f"{name}: cumulative counts must be non-negative and non-decreasing, got {offset.tolist()}")
    return counts


def offset_to_batch(offset: Tensor) -> Tensor:
    """(B,) cumulative counts -> (N,) cloud index of every point."""
    counts = offset_to_counts(offset)
    return torch.repeat_interleave(torch.arange(len(counts), device=offset.device), counts)  # (N,)


def batch_to_offset(batch: Tensor, num_clouds: int | None = None) -> Tensor:
    """(N,) sorted cloud indices -> (B,) cumulative counts; ``num_clouds`` keeps trailing empty clouds."""
    check_index("batch", batch)
    if len(batch) and bool((batch[0] < 0) | (batch[1:] < batch[:-1]).any()):
        raise InputError("batch: cloud indices must be non-negative and sorted (each cloud's points contiguous)")
    if num_clouds is not None and len(batch) and int(batch[-1]) >= num_clouds:
        raise InputError(f"num_clouds: {num_clouds} clouds, but batch holds cloud index {int(batch[-1])}")
    return torch.bincount(batch, minlength=num_clouds or 0).cumsum(0)  # (B,)


def split_by_offset(x: Tensor, offset: Tensor) -> list[Tensor]:
    """(N, ...) -> one (n_b, ...) tensor per cloud."""
    counts = offset_to_counts(offset)
    if int(counts.sum()) != len(x):
        raise InputError(f"offset: counts sum to {int(counts.sum())}, but there are {len(x)} entries")
    return list(torch.split(x, counts.tolist()))


def cloud_index(offset: Tensor | None, num_points: int, device, name: str = "offset",
                allow_empty: bool = True) -> tuple[Tensor, Tensor]:
    """(batch (N,), counts (B,)) int64 of points batched by ``offset`` (one cloud when None); errors name
    the argument ``name``; ``allow_empty=False`` also demands at least one cloud and no empty one."""
    if offset is None:
        return torch.zeros(num_points, dtype=torch.int64, device=device), torch.tensor([num_points], device=device)
    counts = offset_to_counts(offset, name).to(device=device, dtype=torch.int64)  # (B,)
    if int(counts.sum()) != num_points:
        raise InputError(f"{name}: counts sum to {int(counts.sum())}, but there are {num_points} points")
    if not allow_empty and (len(counts) == 0 or bool((counts == 0).any())):
        raise InputError(f"{name}: expected at least one cloud and no empty one, got {offset.tolist()}")
    return torch.repeat_interleave(torch.arange(len(counts), device=device), counts), counts


def pad_clouds(x: Tensor, batch: Tensor, counts: Tensor, fill: float) -> Tensor:
    """(N, C) rows batched by cloud -> (B, max n_b, C), padded with ``fill``."""
    starts = counts.cumsum(0) - counts  # (B,)
    out = x.new_full((len(counts), int(counts.max()), x.shape[1]), fill)  # (B, M, C)
    out[batch, torch.arange(len(x), device=x.device) - starts[batch]] = x
    return out


# ---- frames -> cloud ------------------------------------------------------------------------------
def viewset_to_pointcloud(viewset: ViewSet, stride: int = 1, max_points: int | None = None,
                          generator: torch.Generator | None = None) -> PointCloud:
    """Back-project the valid depth of every ``stride``-th pixel of every view into one world point
    cloud with colours, normals, semantic and instance labels. ``max_points`` keeps a random subset
    (in original order) drawn from ``generator`` (seed 0 if None, so the result stays deterministic)."""
    if viewset.depth is None:
        raise InputError(f"viewset_to_pointcloud: viewset {viewset.name!r} has no depth")
    if int(stride) < 1:
        raise InputError(f"viewset_to_pointcloud: stride must be >= 1, got {stride}")
    world = viewset.cameras().backproject_depth(viewset.depth)  # (V, H, W, 3)
    grid = (slice(None), slice(None, None, stride), slice(None, None, stride))
    valid = viewset.depth[:, 0][grid] > 0  # (V, h, w)

    def gather(x: Tensor | None, channels_first: bool) -> Tensor | None:
        if x is None:
            return None
        x = x.permute(0, 2, 3, 1) if channels_first else x  # (V, H, W, C) or (V, H, W)
        return x[grid][valid]

    cloud = PointCloud(
        points=gather(world, False), colors=gather(viewset.rgb, True), normals=gather(viewset.normals, True),
        semantic=gather(viewset.semantic, False), instance=gather(viewset.instance, False), name=viewset.name,
    )
    if max_points is not None and len(cloud) > max_points:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        keep = torch.randperm(len(cloud), generator=g)[:max_points].sort().values
        cloud = cloud.select(keep)
    return cloud


def fuse_frames(viewset: ViewSet, frames=None, stride: int = 1, max_points: int | None = None,
                generator: torch.Generator | None = None) -> PointCloud:
    """Back-project the valid depth of ``frames`` (default all) of one scene into one world cloud with
    whatever per-pixel data the viewset has (colours, normals, semantic, instance)."""
    if frames is not None:
        ids = torch.as_tensor(frames).reshape(-1)  # (F,)
        if ids.numel() == 0 or ids.is_floating_point() or bool(((ids < 0) | (ids >= len(viewset))).any()):
            raise InputError(f"frames: expected frame indices in [0, {len(viewset)}), got {frames!r}")
        viewset = viewset.select(ids)
    return viewset_to_pointcloud(viewset, stride, max_points, generator)


# ---- grid sampling --------------------------------------------------------------------------------
def grid_size_tensor(grid_size, like: Tensor) -> Tensor:
    """(3,) voxel size in metres from one size or three."""
    g = torch.as_tensor(grid_size, dtype=like.dtype, device=like.device).reshape(-1)
    g = g.expand(3) if g.numel() == 1 else g
    if g.numel() != 3 or not bool((torch.isfinite(g) & (g > 0)).all()):
        raise InputError(f"grid_size: expected one or three positive finite sizes (metres), got {grid_size!r}")
    return g


def cloud_min(points: Tensor, batch: Tensor, num_clouds: int) -> Tensor:
    """(B, 3) per-cloud minimum of (N, 3) points (0 for empty clouds)."""
    index = batch[:, None].expand(-1, 3)  # (N, 3)
    return points.new_zeros(num_clouds, 3).scatter_reduce(0, index, points, "amin", include_self=False)


def grid_coordinates(points: Tensor, grid_size, offset: Tensor | None = None) -> Tensor:
    """(N, 3) int64 voxel coordinates floor((p - cloud min) / g): each cloud starts at 0 on each axis."""
    check_points("points", points)
    g = grid_size_tensor(grid_size, points)  # (3,)
    batch, counts = cloud_index(offset, len(points), points.device)
    lo = cloud_min(points, batch, len(counts))  # (B, 3)
    return torch.floor((points - lo[batch]) / g).long()  # (N, 3)


def voxel_keys(coords: Tensor, batch: Tensor | None = None) -> Tensor:
    """(N,) int64 key per point, equal exactly for equal (cloud, coords); keys sort by cloud, then x, y, z."""
    check_coords(coords)
    if batch is None:
        batch = torch.zeros(len(coords), dtype=torch.int64, device=coords.device)
    check_index("batch", batch, len(coords))
    if len(coords) == 0:
        return torch.zeros(0, dtype=torch.int64, device=coords.device)
    if int(batch.min()) < 0:
        raise InputError("batch: cloud indices must be non-negative")
    local = coords.long() - coords.min(0).values  # (N, 3) >= 0
    sx, sy, sz = (local.max(0).values + 1).tolist()
    if (int(batch.max()) + 1) * sx * sy * sz > INT64_MAX:
        raise InputError(f"coords: a range of {sx} x {sy} x {sz} voxels over {int(batch.max()) + 1} clouds does not "
                         "fit an int64 key; use a coarser grid")
    return ((batch.long() * sx + local[:, 0]) * sy + local[:, 1]) * sz + local[:, 2]  # (N,)


def lowest_per_key(keys: Tensor, score: Tensor) -> Tensor:
    """Ascending indices of the lowest-``score`` entry of each distinct key (ties: lowest index)."""
    order = torch.argsort(score, stable=True)  # (N,)
    order = order[torch.argsort(keys[order], stable=True)]  # (N,) by key, then score, then index
    sorted_keys = keys[order]
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return order[first].sort().values  # (V,)


def grid_sample(points: Tensor, grid_size, offset: Tensor | None = None, mode: str = "random",
                generator: torch.Generator | None = None) -> Tensor:
    """Ascending indices of the kept points: exactly one per occupied voxel per cloud (PonderV2's G(., g))."""
    if mode not in GRID_MODES:
        raise InputError(f"mode: expected one of {GRID_MODES}, got {mode!r}")
    if mode == "random":
        require_generator(generator, "grid_sample(mode='random')")
    coords = grid_coordinates(points, grid_size, offset)  # (N, 3)
    batch, counts = cloud_index(offset, len(points), points.device)
    if mode == "first":
        score = torch.zeros(len(points), device=points.device)  # (N,) ties: lowest index
    elif mode == "random":
        score = torch.rand(len(points), generator=generator, dtype=torch.float64).to(points.device)  # (N,)
    else:
        g = grid_size_tensor(grid_size, points)  # (3,)
        local = points - cloud_min(points, batch, len(counts))[batch]  # (N, 3)
        score = ((local - (coords + 0.5) * g) ** 2).sum(-1)  # (N,) squared distance to the voxel centre
    return lowest_per_key(voxel_keys(coords, batch), score)


# ---- augmentation ---------------------------------------------------------------------------------
@dataclass
class PointAugmentConfig:
    """Joint point/camera augmentation (module docstring: order, pivot, draws)."""

    rotate_z: float = math.pi  # max |angle| about z, radians (GS³: pi)
    rotate_xy: float = math.pi / 64  # max |angle| about x and about y, radians (GS³: pi/64)
    scale: tuple[float, float] = (0.9, 1.1)  # uniform scale range (Pointcept ScanNet)
    flip_prob: float = 0.5  # probability of mirroring x
    dropout_ratio: float = 0.0  # fraction of points removed (PonderV2 pretraining: 0.8)
    dropout_prob: float = 1.0  # probability that a sample gets dropout

    def __post_init__(self):
        self.scale = tuple(self.scale)

        def bad(name, why):
            raise InputError(f"PointAugmentConfig.{name}: {why} (got {getattr(self, name)!r})")

        for name in ("rotate_z", "rotate_xy"):
            if not 0.0 <= getattr(self, name) <= math.pi:
                bad(name, "must lie in [0, pi] radians")
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1] < math.inf:
            bad("scale", "expected (low, high) with 0 < low <= high")
        for name in ("flip_prob", "dropout_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "must lie in [0, 1]")
        if not 0.0 <= self.dropout_ratio < 1.0:
            bad("dropout_ratio", "must lie in [0, 1)")


def normalize_color(colors: Tensor) -> Tensor:
    """RGB in [0, 1] -> [-1, 1], the colour features every 3D encoder reads (Pointcept's NormalizeColor,
    ``color / 127.5 - 1`` on 8-bit colours): pretraining recipes and the 3D downstream task alike."""
    return 2.0 * colors - 1.0


def cloud_pivot(points: Tensor) -> Tensor:
    """(3,) centre of the x-y bounding box at the lowest z (Pointcept's CenterShift point)."""
    if len(points) == 0:
        return points.new_zeros(3)
    lo, hi = points.min(0).values, points.max(0).values  # (3,), (3,)
    return torch.stack([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])


def random_point_transform(cfg: PointAugmentConfig, generator: torch.Generator,
                           pivot: Tensor | None = None) -> SimilarityTransform:
    """x' = s F Rz Ry Rx (x - pivot) + pivot with random angles, scale and x-mirror F (float64)."""
    require_generator(generator, "random_point_transform")
    u = torch.rand(5, generator=generator, dtype=torch.float64)  # (5,) x, y, z angles, flip, scale
    limits = torch.tensor([cfg.rotate_xy, cfg.rotate_xy, cfg.rotate_z], dtype=torch.float64)  # (3,)
    Rx, Ry, Rz = axis_angle_to_rotmat(torch.diag((2 * u[:3] - 1) * limits))  # 3 x (3, 3)
    A = Rz @ Ry @ Rx  # (3, 3)
    if float(u[3]) < cfg.flip_prob:
        A = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)) @ A
    s = cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * float(u[4])
    c = torch.zeros(3, dtype=torch.float64) if pivot is None else pivot.detach().cpu().double()  # (3,)
    return SimilarityTransform(A, c - s * A @ c, s)


def check_sample(sample) -> int:
    """Validate a point sample (dict with 'points' and aligned per-point keys); return its point count."""
    if not isinstance(sample, dict) or "points" not in sample:
        raise InputError("sample: expected a dict with a 'points' (N, 3) tensor")
    check_points("sample['points']", sample["points"])
    n = len(sample["points"])
    for key in POINT_KEYS:
        if key in sample and len(sample[key]) != n:
            raise InputError(f"sample['{key}']: {len(sample[key])} entries for {n} points")
    return n


def select_points(sample: dict, index: Tensor) -> dict:
    """A new sample with the per-point entries (``POINT_KEYS``) indexed by ``index``; others shared."""
    check_sample(sample)
    return {k: (v[index] if k in POINT_KEYS else v) for k, v in sample.items()}


def augment_points(sample: dict, cfg: PointAugmentConfig, generator: torch.Generator,
                   cameras: Cameras | None = None) -> tuple[dict, Cameras | None, SimilarityTransform]:
    """Rotate, scale and flip points, normals and cameras together, then drop points at random.
    Returns (new sample, moved cameras or None, the transform applied)."""
    n = check_sample(sample)
    points = sample["points"]  # (N, 3)
    T = random_point_transform(cfg, generator, cloud_pivot(points))
    out = dict(sample, points=T.apply_points(points))  # (N, 3)
    if "normals" in sample:
        out["normals"] = T.apply_normals(sample["normals"])  # (N, 3)
    if cfg.dropout_ratio > 0 and float(torch.rand(1, generator=generator)) < cfg.dropout_prob:
        removed = random_point_mask(n, cfg.dropout_ratio, generator).to(points.device)  # (N,)
        out = select_points(out, (~removed).nonzero().squeeze(1))
    return out, (T.apply_cameras(cameras) if cameras is not None else None), T


# ---- masks ----------------------------------------------------------------------------------------
def random_mask_per_cloud(counts: Tensor, ratio: float, generator: torch.Generator) -> Tensor:
    """(sum n_b,) bool, True = masked: exactly round(ratio n_b) random entries of each cloud's n_b."""
    check_ratio("ratio", ratio)
    require_generator(generator, "random masking")
    counts = counts.long().cpu()  # (B,)
    owner = torch.repeat_interleave(torch.arange(len(counts)), counts)  # (M,) sorted
    order = torch.argsort(torch.rand(len(owner), generator=generator, dtype=torch.float64))  # (M,)
    order = order[torch.argsort(owner[order], stable=True)]  # (M,) by cloud, random within
    rank = torch.arange(len(owner)) - (counts.cumsum(0) - counts)[owner]  # (M,) position within its cloud
    mask = torch.zeros(len(owner), dtype=torch.bool)
    mask[order] = rank < mask_count(counts, ratio)[owner]
    return mask


def random_point_mask(num_points: int, ratio: float, generator: torch.Generator) -> Tensor:
    """(N,) bool, True = masked: exactly round(ratio N) random points (GS³ masks 50%)."""
    if int(num_points) < 0:
        raise InputError(f"num_points: must be >= 0, got {num_points}")
    return random_mask_per_cloud(torch.tensor([int(num_points)]), ratio, generator)


@torch.no_grad()
def farthest_point_sampling(points: Tensor, num_samples, offset: Tensor | None = None,
                            generator: torch.Generator | None = None) -> Tensor:
    """(sum S_b,) int64 indices of S_b farthest points per cloud (``num_samples``: one count or (B,), each in
    [0, n_b]), cloud by cloud, each in pick order; the b-th cloud's samples end at ``cumsum(S)[b]``.
    Starts at each cloud's first point, or at a random one with ``generator``; each next pick is the point
    of largest min squared distance to the picks so far, ties -> the lowest index, never a picked point
    again (even a coincident one). On float CPU tensors a C++ twin makes the same picks
    (:mod:`renderssl.data.point_ops_compiled`); the torch loop below is the readable twin."""
    check_points("points", points)
    batch, counts = cloud_index(offset, len(points), points.device)
    S = torch.as_tensor(num_samples, device=points.device).reshape(-1)
    if S.is_floating_point() or len(S) not in (1, len(counts)):
        raise InputError(f"num_samples: expected one integer or one per cloud ({len(counts)}), got {num_samples!r}")
    S = S.long().expand(len(counts))  # (B,)
    if bool(((S < 0) | (S > counts)).any()):
        raise InputError(f"num_samples: need 0 <= samples <= cloud size, got {S.tolist()} for {counts.tolist()} points")
    B, rows = len(counts), torch.arange(len(counts), device=points.device)
    if generator is None:
        current = torch.zeros(B, dtype=torch.int64, device=points.device)  # (B,)
    else:
        current = (torch.rand(B, generator=generator, dtype=torch.float64) * counts.cpu()).long().to(points.device)
    if B > 0 and compiled_points_usable(points):  # the C++ twin: the same picks (data/point_ops_compiled.py)
        return fps_compiled(points, counts, S, current)  # (sum S_b,)
    px, py, pz = pad_clouds(points, batch, counts, 0.0).permute(2, 0, 1).contiguous()  # (B, M) each: fast planes
    valid = torch.arange(px.shape[1], device=points.device) < counts[:, None]  # (B, M)
    dist = torch.full_like(px, math.inf).masked_fill_(~valid, -math.inf)  # -inf: padding or picked, never chosen
    picks = torch.zeros(B, int(S.max()), dtype=torch.int64, device=points.device)  # (B, S_max)
    d, tmp = torch.empty_like(dist), torch.empty_like(dist)  # reused: no allocation in the loop
    for k in range(picks.shape[1]):
        picks[:, k] = current
        cx, cy, cz = px[rows, current, None], py[rows, current, None], pz[rows, current, None]  # (B, 1) each
        torch.sub(px, cx, out=d).square_()  # (B, M) squared distance to the new pick, axis by axis
        d.add_(torch.sub(py, cy, out=tmp).square_())
        d.add_(torch.sub(pz, cz, out=tmp).square_())
        torch.minimum(dist, d, out=dist)
        dist[rows, current] = -math.inf  # never picked again, even among coincident points
        current = dist.argmax(1)  # (B,) ties: lowest index
    starts = counts.cumsum(0) - counts  # (B,)
    keep = torch.arange(picks.shape[1], device=points.device) < S[:, None]  # (B, S_max)
    return (picks + starts[:, None])[keep]  # (sum S_b,)


@dataclass
class PointGroups:
    """A partition of batched clouds into groups, numbered cloud by cloud."""

    index: Tensor  # (N,) group of each point
    centers: Tensor  # (G,) point index of each group's centre
    offset: Tensor  # (B,) cumulative group counts per cloud


def nearest_center(points: Tensor, batch: Tensor, counts: Tensor, centers: Tensor, center_offset: Tensor) -> Tensor:
    """(N,) index of the nearest centre of the same cloud (ties: first), by argmin |c|^2 - 2 p.c batched
    over clouds, in chunks of at most ``MAX_PAIRS_PER_CHUNK`` point-centre pairs."""
    center_counts = offset_to_counts(center_offset)  # (B,)
    center_batch = offset_to_batch(center_offset)  # (G_total,)
    lo = cloud_min(points, batch, len(counts))  # (B, 3) local origin: keeps |c|^2 small, so rounding small
    C = pad_clouds(centers - lo[center_batch], center_batch, center_counts, 0.0)  # (B, G, 3)
    valid = torch.arange(C.shape[1], device=points.device) < center_counts[:, None]  # (B, G)
    c2 = (C * C).sum(-1).masked_fill(~valid, math.inf)[:, None]  # (B, 1, G): padding is never nearest
    P = pad_clouds(points - lo[batch], batch, counts, 0.0)  # (B, M, 3)
    chunk = max(1, MAX_PAIRS_PER_CHUNK // max(1, C.shape[0] * C.shape[1]))
    local = torch.empty(P.shape[:2], dtype=torch.int64, device=points.device)  # (B, M)
    for i in range(0, P.shape[1], chunk):
        d = torch.baddbmm(c2, P[:, i:i + chunk], C.transpose(1, 2), alpha=-2.0)  # (B, c, G) = |p - c|^2 - |p|^2
        local[:, i:i + chunk] = d.argmin(-1)
    starts = center_offset - center_counts  # (B,)
    return local[torch.arange(P.shape[1], device=points.device) < counts[:, None]] + starts[batch]  # (N,)


def point_groups(points: Tensor, points_per_group: int = 64, offset: Tensor | None = None,
                 generator: torch.Generator | None = None) -> PointGroups:
    """Partition each cloud of n points into ceil(n / points_per_group) groups: FPS centres, nearest centre."""
    if int(points_per_group) < 1:
        raise InputError(f"points_per_group: must be >= 1, got {points_per_group}")
    check_points("points", points)
    batch, counts = cloud_index(offset, len(points), points.device)
    num_groups = (counts + points_per_group - 1) // points_per_group  # (B,)
    centers = farthest_point_sampling(points, num_groups, offset, generator)  # (G,)
    group_offset = num_groups.cumsum(0)  # (B,)
    index = nearest_center(points, batch, counts, points[centers], group_offset)  # (N,)
    index[centers] = torch.arange(len(centers), device=points.device)
    return PointGroups(index, centers, group_offset)


def point_group_mask(points: Tensor, ratio: float, points_per_group: int = 64,
                     generator: torch.Generator | None = None, offset: Tensor | None = None) -> Tensor:
    """(N,) bool, True = masked: round(ratio G) whole groups of each cloud (PonderV2's masking ablation)."""
    check_ratio("ratio", ratio)
    require_generator(generator, "point_group_mask")
    groups = point_groups(points, points_per_group, offset, generator)
    masked = random_mask_per_cloud(offset_to_counts(groups.offset), ratio, generator)  # (G,)
    return masked.to(points.device)[groups.index]  # (N,)


def block_mask(coords: Tensor, ratio: float, block_size: int = 8, generator: torch.Generator | None = None,
               batch: Tensor | None = None) -> Tensor:
    """(N,) bool, True = masked: round(ratio K) of the K occupied blocks of block_size^3 voxels per cloud."""
    check_ratio("ratio", ratio)
    require_generator(generator, "block_mask")
    if int(block_size) < 1:
        raise InputError(f"block_size: must be >= 1, got {block_size}")
    check_coords(coords)
    keys = voxel_keys(torch.div(coords, int(block_size), rounding_mode="floor"), batch)  # (N,)
    _, inverse = torch.unique(keys, return_inverse=True)  # (N,) block of each point; blocks sorted by cloud
    owner = torch.zeros(int(inverse.max()) + 1 if len(keys) else 0, dtype=torch.int64, device=keys.device)
    owner.scatter_(0, inverse, batch.long() if batch is not None else torch.zeros_like(keys))  # (K,) cloud of each block
    masked = random_mask_per_cloud(torch.bincount(owner), ratio, generator)  # (K,)
    return masked.to(keys.device)[inverse]


__all__ = [
    "GRID_MODES", "MAX_PAIRS_PER_CHUNK", "POINT_KEYS", "PointAugmentConfig", "PointGroups", "augment_points",
    "batch_to_offset", "block_mask", "check_points", "cloud_index", "cloud_pivot", "farthest_point_sampling",
    "fuse_frames", "grid_coordinates", "grid_sample", "offset_to_batch", "offset_to_counts", "pad_clouds",
    "point_group_mask", "point_groups", "random_mask_per_cloud", "random_point_mask", "random_point_transform",
    "select_points", "split_by_offset", "viewset_to_pointcloud", "voxel_keys",
]
