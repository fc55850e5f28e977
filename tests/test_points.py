"""The point-cloud data path, each result checked against an independent brute force or geometry."""

import math

import pytest
import torch

from renderssl.data.points import (
    PointAugmentConfig, augment_points, batch_to_offset, block_mask, farthest_point_sampling, fuse_frames,
    grid_coordinates, grid_sample, offset_to_batch, point_group_mask, point_groups, random_mask_per_cloud,
    random_point_mask, random_point_transform, split_by_offset, voxel_keys,
)
from renderssl.data.synthetic import CLASS_NAMES, SyntheticConfig, generate_scene
from renderssl.errors import InputError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


@pytest.fixture(scope="module")
def scene():
    return generate_scene(3, SyntheticConfig(num_views=3, width=32, height=24))


@pytest.fixture(scope="module")
def clouds():
    """Three clouds (sizes 300, 0, 500) at different places, batched by offset."""
    g = gen(0)
    a = torch.rand(300, 3, generator=g) * 0.5 + torch.tensor([3.0, -2.0, 1.0])
    b = torch.rand(500, 3, generator=g) * torch.tensor([0.7, 0.4, 0.3]) - 5.0
    return torch.cat([a, b]), torch.tensor([300, 300, 800])


def brute_voxels(points, offset, g):
    """{(cloud, (i, j, k)): [point indices]} by a per-cloud loop."""
    voxels, start = {}, 0
    for b, end in enumerate(offset.tolist()):
        p = points[start:end]
        coords = torch.floor((p - p.min(0).values) / torch.as_tensor(g, dtype=p.dtype)).long() if len(p) else p
        for i, c in enumerate(coords.tolist()):
            voxels.setdefault((b, tuple(c)), []).append(start + i)
        start = end
    return voxels


# ---- offsets --------------------------------------------------------------------------------------
def test_offset_batch_round_trip():
    offset = torch.tensor([3, 3, 7, 10, 10])
    batch = offset_to_batch(offset)
    assert batch.tolist() == [0, 0, 0, 2, 2, 2, 2, 3, 3, 3]
    assert torch.equal(batch_to_offset(batch, num_clouds=5), offset)
    assert [len(x) for x in split_by_offset(torch.arange(10), offset)] == [3, 0, 4, 3, 0]
    with pytest.raises(InputError, match="offset"):
        offset_to_batch(torch.tensor([3, 2]))
    with pytest.raises(InputError, match="batch"):
        batch_to_offset(torch.tensor([0, 1, 0]))
    with pytest.raises(InputError, match="num_clouds"):
        batch_to_offset(batch, num_clouds=3)


# ---- grid -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("g", [0.05, (0.05, 0.1, 0.2)])
def test_grid_coordinates_match_per_cloud_loop(clouds, g):
    points, offset = clouds
    coords = grid_coordinates(points, g, offset)
    for b, (p, c) in enumerate(zip(split_by_offset(points, offset), split_by_offset(coords, offset))):
        if len(p):
            assert c.min(0).values.tolist() == [0, 0, 0], b
            assert torch.equal(c, torch.floor((p - p.min(0).values) / torch.tensor(g).expand(3)).long())


@pytest.mark.parametrize("mode", ["random", "first", "center"])
def test_grid_sample_keeps_one_point_per_occupied_voxel(clouds, mode):
    points, offset = clouds
    g = (0.1, 0.08, 0.12)
    keep = grid_sample(points, g, offset, mode=mode, generator=gen(1))
    voxels = brute_voxels(points, offset, g)
    assert torch.equal(keep, keep.sort().values) and len(keep) == len(voxels)
    owner = {i: v for v, members in voxels.items() for i in members}
    assert {owner[i] for i in keep.tolist()} == set(voxels)  # every occupied voxel, once
    if mode == "first":
        assert sorted(keep.tolist()) == sorted(min(m) for m in voxels.values())
    if mode == "center":
        lows = [p.min(0).values if len(p) else None for p in split_by_offset(points, offset)]
        nearest = []
        for (b, c), members in voxels.items():
            centre = (torch.tensor(c) + 0.5) * torch.tensor(g)  # relative to the cloud minimum
            d2 = [float(((points[i] - lows[b] - centre) ** 2).sum()) for i in members]
            nearest.append(members[d2.index(min(d2))])  # first of the nearest
        assert sorted(keep.tolist()) == sorted(nearest)


def test_grid_sample_random_varies_with_seed_and_is_uniform():
    points, offset = torch.rand(400, 3, generator=gen(2)), torch.tensor([150, 400])
    picks = {tuple(grid_sample(points, 0.2, offset, generator=gen(s)).tolist()) for s in range(3)}
    assert len(picks) == 3
    quad = torch.tensor([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02], [0.03, 0.01, 0.02], [0.04, 0.04, 0.04]])
    hits = torch.bincount(torch.cat([grid_sample(quad, 1.0, generator=gen(s)) for s in range(800)]), minlength=4)
    assert hits.min() > 150 and hits.max() < 250  # 200 each expected; sd ~12


def test_voxel_keys_are_exact():
    g = gen(3)
    coords = torch.randint(-3, 3, (500, 3), generator=g)
    batch = torch.randint(0, 3, (500,), generator=g)
    keys = voxel_keys(coords, batch)
    tuples = [(b, *c) for b, c in zip(batch.tolist(), coords.tolist())]
    assert len(set(keys.tolist())) == len(set(tuples))
    assert len({(k, t) for k, t in zip(keys.tolist(), tuples)}) == len(set(tuples))  # key <-> tuple one-to-one
    order = torch.argsort(keys)
    assert [tuples[i] for i in order.tolist()] == sorted(tuples)
    with pytest.raises(InputError, match="coords"):
        voxel_keys(torch.tensor([[0, 0, 0], [2**21, 2**21, 2**21]]))


# ---- frames ---------------------------------------------------------------------------------------
def test_fuse_frames_reproject_to_their_pixels(scene):
    cloud = fuse_frames(scene, frames=[0, 2])
    valid = scene.depth[:, 0] > 0  # (V, H, W)
    assert len(cloud) == int(valid[[0, 2]].sum())
    assert cloud.colors is not None and cloud.normals is not None and cloud.semantic is not None
    cams, start = scene.cameras(), 0
    for f in (0, 2):
        ij = valid[f].nonzero()  # (n, 2) row-major, the fusion order
        pts = cloud.points[start:start + len(ij)]
        uv, z = cams[f].project(pts)
        assert torch.allclose(uv, ij.flip(-1).float() + 0.5, atol=1e-3)
        assert torch.allclose(z, scene.depth[f, 0][valid[f]], atol=1e-4)
        assert torch.equal(cloud.semantic[start:start + len(ij)], scene.semantic[f][valid[f]])
        start += len(ij)
    assert len(fuse_frames(scene, frames=[1], stride=2)) == int(valid[1, ::2, ::2].sum())
    with pytest.raises(InputError, match="frames"):
        fuse_frames(scene, frames=[3])


# ---- augmentation ---------------------------------------------------------------------------------
def sample_of(cloud):
    return {"points": cloud.points, "colors": cloud.colors, "normals": cloud.normals,
            "semantic": cloud.semantic, "instance": cloud.instance, "name": cloud.name}


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_augment_keeps_pixels_depth_and_normals(scene, flip):
    cloud = fuse_frames(scene)
    cfg = PointAugmentConfig(rotate_xy=0.4, scale=(0.5, 2.0), flip_prob=flip)
    cams = scene.cameras()
    out, moved, T = augment_points(sample_of(cloud), cfg, gen(4), cams)
    assert torch.linalg.det(T.A).item() == pytest.approx(-1.0 if flip else 1.0)
    assert T.scale != 1.0
    uv0, z0 = cams.project(cloud.points[None].expand(len(cams), -1, -1))  # (V, N, 2), (V, N)
    uv1, z1 = moved.project(out["points"][None].expand(len(cams), -1, -1))
    assert torch.allclose(uv1, uv0, atol=2e-3)
    assert torch.allclose(z1, z0 * T.scale, rtol=1e-4, atol=1e-4)
    assert torch.allclose(out["normals"].norm(dim=-1), torch.ones(len(cloud)), atol=1e-5)
    floor = cloud.semantic == CLASS_NAMES.index("floor")
    for pts, n in ((cloud.points, cloud.normals), (out["points"], out["normals"])):
        chords = pts[floor] - pts[floor][0]  # (F, 3) in the floor plane
        assert (chords @ n[floor][0]).abs().max() < 1e-3 * T.scale
    assert torch.equal(out["semantic"], cloud.semantic) and out["name"] == cloud.name


def axis_rotation(axis: int, a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    i, j = (axis + 1) % 3, (axis + 2) % 3  # cyclic, so R is right-handed about the axis
    R = torch.eye(3, dtype=torch.float64)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def test_random_transform_follows_documented_composition():
    cfg = PointAugmentConfig(rotate_xy=0.3, rotate_z=2.0, scale=(0.5, 1.5), flip_prob=0.5)
    pivot = torch.tensor([1.0, -2.0, 0.5])
    flips = set()
    for seed in range(6):
        u = torch.rand(5, generator=gen(seed), dtype=torch.float64).tolist()  # documented draw order
        ax, ay, az = (2 * u[0] - 1) * 0.3, (2 * u[1] - 1) * 0.3, (2 * u[2] - 1) * 2.0
        F = torch.diag(torch.tensor([-1.0 if u[3] < 0.5 else 1.0, 1.0, 1.0], dtype=torch.float64))
        s = 0.5 + u[4]
        T = random_point_transform(cfg, gen(seed), pivot)
        assert torch.allclose(T.A, F @ axis_rotation(2, az) @ axis_rotation(1, ay) @ axis_rotation(0, ax), atol=1e-12)
        assert T.scale == pytest.approx(s)
        assert torch.allclose(T.apply_points(pivot.double()), pivot.double(), atol=1e-12)  # the pivot stays put
        flips.add(u[3] < 0.5)
    assert flips == {True, False}


def test_random_transform_angle_ranges():
    cfg = PointAugmentConfig(rotate_xy=0.1, flip_prob=0.0)
    tilts, yaws = [], []
    for s in range(200):
        A = random_point_transform(cfg, gen(s)).A
        tilts.append(math.acos(min(1.0, A[2, 2].item())))  # angle between z and its image
        yaws.append(math.atan2(A[1, 0].item(), A[0, 0].item()))
    assert max(tilts) <= math.acos(math.cos(0.1) ** 2) + 1e-9 and max(tilts) > 0.05
    assert min(yaws) < -2.5 and max(yaws) > 2.5
    A = random_point_transform(PointAugmentConfig(rotate_xy=0.0), gen(0)).A
    assert torch.allclose(A[:, 2].abs(), torch.tensor([0.0, 0.0, 1.0], dtype=A.dtype))


def test_dropout_keeps_keys_aligned(scene):
    cloud = fuse_frames(scene)
    n = len(cloud)
    sample = dict(sample_of(cloud), semantic=torch.arange(n))  # semantic = original index
    out, cams, T = augment_points(sample, PointAugmentConfig(dropout_ratio=0.8), gen(5))
    kept = out["semantic"]
    assert cams is None and len(kept) == n - half_up(0.8 * n) and torch.equal(kept, kept.sort().values)
    for key in ("points", "colors", "normals", "instance"):
        assert len(out[key]) == len(kept)
    assert torch.allclose(out["points"], T.apply_points(cloud.points[kept]))
    assert torch.equal(out["colors"], cloud.colors[kept]) and torch.equal(out["instance"], cloud.instance[kept])
    same, _, _ = augment_points(sample, PointAugmentConfig(dropout_ratio=0.8, dropout_prob=0.0), gen(5))
    assert len(same["points"]) == n


@pytest.mark.parametrize("field,value", [("scale", (0.0, 1.0)), ("scale", (1.2, 1.1)), ("flip_prob", 1.5),
                                         ("dropout_ratio", 1.0), ("rotate_z", -0.1)])
def test_augment_config_validation(field, value):
    with pytest.raises(InputError, match=f"PointAugmentConfig.{field}"):
        PointAugmentConfig(**{field: value})


# ---- masks ----------------------------------------------------------------------------------------
def test_random_point_mask_exact_count():
    for n, r in [(10, 0.5), (5, 0.5), (7, 0.3), (1000, 0.75), (3, 0.0)]:
        m = random_point_mask(n, r, gen(n))
        assert m.dtype == torch.bool and len(m) == n and int(m.sum()) == half_up(r * n)
    assert not torch.equal(random_point_mask(100, 0.5, gen(0)), random_point_mask(100, 0.5, gen(1)))
    m = random_mask_per_cloud(torch.tensor([4, 0, 9]), 0.5, gen(0))
    assert int(m[:4].sum()) == 2 and int(m[4:].sum()) == 5


def fps_reference(points, k, start=0):
    """Farthest point sampling of ONE cloud by a plain loop: from ``start``, each next pick is the unpicked
    point whose squared distance to its nearest pick is largest (ties: lowest index)."""
    pts = points.tolist()
    nearest = [math.inf] * len(pts)
    picks = [start][:k]
    while len(picks) < k:
        c = pts[picks[-1]]
        best, best_d = None, -math.inf
        for j, p in enumerate(pts):
            nearest[j] = min(nearest[j], (p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 + (p[2] - c[2]) ** 2)
            if j not in picks and nearest[j] > best_d:
                best, best_d = j, nearest[j]
        picks.append(best)
    return picks


def test_fps_reference_on_a_hand_example():
    # on a line: 0 first; 10 is farthest; then 6 (4 from its nearest), then 3, then 1
    pts = torch.tensor([[0.0, 0, 0], [10, 0, 0], [3, 0, 0], [6, 0, 0], [1, 0, 0]])
    assert fps_reference(pts, 5) == [0, 1, 3, 2, 4]
    assert farthest_point_sampling(pts, 5).tolist() == [0, 1, 3, 2, 4]


@pytest.mark.parametrize("seed", [None, 9])
def test_fps_matches_reference_loop_per_cloud(seed):
    sizes, counts = [37, 120, 5, 0, 64, 1], [10, 33, 5, 0, 1, 1]
    points = torch.rand(sum(sizes), 3, generator=gen(0), dtype=torch.float64)
    offset = torch.tensor(sizes).cumsum(0)
    got = farthest_point_sampling(points, torch.tensor(counts), offset, None if seed is None else gen(seed))
    ends, sample_ends = offset.tolist(), torch.tensor(counts).cumsum(0).tolist()
    starts = []
    for s, e, ls, le, k in zip([0] + ends[:-1], ends, [0] + sample_ends[:-1], sample_ends, counts):
        picks = got[ls:le]
        assert bool(((picks >= s) & (picks < e)).all()), "picked a point of another cloud"
        start = 0 if seed is None or k == 0 else int(picks[0]) - s
        assert (picks - s).tolist() == fps_reference(points[s:e], k, start)
        starts.append(start)
    assert (max(starts) > 0) == (seed is not None)  # a random start with a generator
    assert farthest_point_sampling(points[:37], 10).tolist() == fps_reference(points[:37], 10)  # offset=None


@pytest.mark.parametrize("seed", [None, 3])
def test_fps_never_picks_padding_when_sampling_whole_clouds(seed):
    points, offset = torch.rand(61, 3, generator=gen(1)), torch.tensor([3, 53, 61])
    idx = farthest_point_sampling(points, offset.diff(prepend=torch.zeros(1, dtype=torch.long)), offset,
                                  None if seed is None else gen(seed))
    assert sorted(idx.tolist()) == list(range(61))


def test_point_groups_partition_by_nearest_centre(clouds):
    points, offset = clouds
    points = points.double()
    groups = point_groups(points, 64, offset, gen(1))
    assert groups.offset.tolist() == [5, 5, 13]  # ceil(300 / 64), 0, ceil(500 / 64)
    assert torch.equal(torch.unique(groups.index), torch.arange(13))  # every group non-empty
    assert torch.equal(groups.index[groups.centers], torch.arange(13))
    for lo, hi, glo, ghi in [(0, 300, 0, 5), (300, 800, 5, 13)]:
        assert ((groups.centers[glo:ghi] >= lo) & (groups.centers[glo:ghi] < hi)).all()
        d = torch.cdist(points[lo:hi], points[groups.centers[glo:ghi]])  # (n, G)
        mine = d.gather(1, (groups.index[lo:hi] - glo)[:, None]).squeeze(1)
        assert torch.allclose(mine, d.min(1).values)


def test_fps_and_groups_with_coincident_points():
    points = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]).repeat(4, 1)  # (12, 3), 3 places
    picks = farthest_point_sampling(points, 6)
    assert len(set(picks.tolist())) == 6 and len({tuple(points[i].tolist()) for i in picks[:3].tolist()}) == 3
    assert picks.tolist() == fps_reference(points, 6)
    groups = point_groups(points, 2)  # 6 groups, only 3 distinct places
    assert torch.equal(torch.unique(groups.index), torch.arange(6))


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75])
def test_point_group_mask_masks_whole_groups(clouds, ratio):
    points, offset = clouds
    mask = point_group_mask(points, ratio, 32, gen(7), offset)
    groups = point_groups(points, 32, offset, gen(7))  # the same draws
    per_group = torch.zeros(len(groups.centers), dtype=torch.long).index_add_(0, groups.index, mask.long())
    sizes = torch.bincount(groups.index)
    assert torch.equal((per_group == 0) | (per_group == sizes), torch.ones_like(sizes, dtype=torch.bool))
    masked = per_group == sizes
    assert int(masked[:10].sum()) == half_up(ratio * 10) and int(masked[10:].sum()) == half_up(ratio * 16)


def test_block_mask_masks_whole_blocks(clouds):
    points, offset = clouds
    batch = offset_to_batch(offset)
    coords = grid_coordinates(points, 0.01, offset)
    mask = block_mask(coords, 0.8, 8, gen(2), batch)
    blocks = {}
    for b, c, m in zip(batch.tolist(), (coords // 8).tolist(), mask.tolist()):
        blocks.setdefault((b, *c), set()).add(m)
    assert all(len(v) == 1 for v in blocks.values())
    for b in (0, 2):
        mine = [next(iter(v)) for k, v in blocks.items() if k[0] == b]
        assert sum(mine) == half_up(0.8 * len(mine))


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,name", [
    (lambda p: grid_coordinates(p, 0.0), "grid_size"),
    (lambda p: grid_sample(p, -1.0, mode="first"), "grid_size"),
    (lambda p: grid_sample(p, (0.1, 0.0, 0.1), mode="first"), "grid_size"),
    (lambda p: grid_sample(p[:, :2], 0.1, mode="first"), "points"),
    (lambda p: grid_sample(torch.where(p > 0.5, float("nan"), p), 0.1, mode="first"), "points"),
    (lambda p: grid_sample(p, 0.1, mode="middle"), "mode"),
    (lambda p: grid_sample(p, 0.1), "generator"),
    (lambda p: grid_sample(p, 0.1, torch.tensor([5]), mode="first"), "offset"),
    (lambda p: random_point_mask(10, 1.0, gen(0)), "ratio"),
    (lambda p: point_group_mask(p, -0.1, generator=gen(0)), "ratio"),
    (lambda p: block_mask(torch.zeros(4, 3, dtype=torch.long), 1.5, generator=gen(0)), "ratio"),
    (lambda p: point_groups(p, 0), "points_per_group"),
    (lambda p: farthest_point_sampling(p[:, :2], 1), "points"),
    (lambda p: farthest_point_sampling(p, torch.tensor([4, 11]), torch.tensor([10, 20])), "num_samples"),
    (lambda p: farthest_point_sampling(p, torch.tensor([1, 1, 1]), torch.tensor([10, 20])), "num_samples"),
    (lambda p: farthest_point_sampling(p, 1, torch.tensor([10, 10, 20])), "num_samples"),  # empty cloud
    (lambda p: farthest_point_sampling(p, 2.5), "num_samples"),
    (lambda p: farthest_point_sampling(p, 1, torch.tensor([10, 19])), "offset"),
    (lambda p: farthest_point_sampling(p, 1, torch.tensor([10, 5, 20])), "offset"),
    (lambda p: farthest_point_sampling(p, 1, torch.tensor([10.0, 20.0])), "offset"),
])
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises(InputError, match=name):
        call(torch.rand(20, 3, generator=gen(0)))
