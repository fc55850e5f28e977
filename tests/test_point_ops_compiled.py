"""The compiled PointNet++ sampling and grouping (data/point_ops_compiled.py) against the torch twins
(identical indices, float32 and float64, duplicate points and exact ties) and brute-force Python loops."""

import pytest
import torch

from renderssl.data.point_ops_compiled import point_kernel, torch_twins
from renderssl.data.points import farthest_point_sampling
from renderssl.models.encoders.pointnet2 import _check_queries, _three_nn, ball_query, three_nn_interpolate

pytestmark = pytest.mark.skipif(point_kernel() is None, reason="no C++ compiler: the torch twins run alone")

DTYPES = (torch.float32, torch.float64)


def clouds(sizes, dtype, seed, grid=False):
    """Flat batch: random coordinates, or small integers (many exact ties); duplicated points either way."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    pts = torch.randint(0, 4, (n, 3), generator=g).to(dtype) if grid else torch.rand(n, 3, generator=g, dtype=dtype) * 2
    if n > 4:  # duplicates: copy some points over others (within and across clouds)
        src, dst = torch.randint(0, n, (n // 4,), generator=g), torch.randint(0, n, (n // 4,), generator=g)
        pts[dst] = pts[src]
    return pts, torch.tensor(sizes).cumsum(0)  # (N, 3), (B,)


def twin(fn, *args, **kwargs):
    with torch_twins():
        return fn(*args, **kwargs)


def sq(a, b):  # exact for small integer coordinates
    return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))


# ---- farthest point sampling ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid", [False, True])
def test_fps_same_picks_as_twin(dtype, grid):
    sizes = [1, 7, 300, 64, 2]
    pts, off = clouds(sizes, dtype, 0, grid)
    for samples in ([1, 7, 100, 64, 2], [0, 3, 300, 10, 1], 1):
        got = farthest_point_sampling(pts, samples, off)
        assert torch.equal(got, twin(farthest_point_sampling, pts, samples, off))
    for seed in range(3):  # random starts: the same draw from the generator, the same picks
        a = farthest_point_sampling(pts, [1, 5, 50, 9, 2], off, torch.Generator().manual_seed(seed))
        b = twin(farthest_point_sampling, pts, [1, 5, 50, 9, 2], off, torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)


def test_fps_equals_brute_force_with_ties():
    pts, off = clouds([9, 45], torch.float64, 1, grid=True)  # 45: two full 16-lane blocks and a tail
    got = farthest_point_sampling(pts, [9, 45], off).tolist()
    expect = []
    for lo, hi in ((0, 9), (9, 54)):
        picks, dist = [lo], {j: float("inf") for j in range(lo, hi)}
        while len(picks) < hi - lo:
            for j in dist:
                dist[j] = min(dist[j], sq(pts[j], pts[picks[-1]]))
            free = [j for j in range(lo, hi) if j not in picks]
            picks.append(max(free, key=lambda j: (dist[j], -j)))  # largest, ties: lowest index
        expect += picks
    assert got == expect
    assert sorted(got[:9]) == list(range(9))  # coincident points are all picked once each


# ---- ball query ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid", [False, True])
def test_ball_query_same_rows_as_twin(dtype, grid):
    sizes = [1, 40, 500, 3]
    pts, off = clouds(sizes, dtype, 2, grid)
    g = torch.Generator().manual_seed(3)
    centres = torch.cat([pts[:1], pts[1:41][:10], pts[41:541][::5], pts[541:]])  # (M, 3) cloud points
    coff = torch.tensor([1, 11, 111, 114])
    far = centres.clone()
    far[::3] += 50  # some centres with no hit at all
    for radius in (0.1, 0.3, 1.0, 1.5):  # on the grid, d^2 == r^2 exactly for 1.0: excluded (strict)
        for nsample in (1, 8, 64):
            for c in (centres, far):
                got = ball_query(radius, nsample, pts, off, c, coff)
                assert torch.equal(got, twin(ball_query, radius, nsample, pts, off, c, coff)), (radius, nsample)
    q32 = torch.rand(114, 3, generator=g, dtype=torch.float32)  # queries in another dtype: cast as the twin
    got = ball_query(0.5, 16, pts, off, q32, coff)
    assert torch.equal(got, twin(ball_query, 0.5, 16, pts, off, q32, coff))


def test_ball_query_equals_brute_force():
    pts, off = clouds([10, 14], torch.float32, 4, grid=True)
    centres, coff = torch.cat([pts[:3], pts[10:13], torch.full((1, 3), 40.0)]), torch.tensor([3, 7])
    got = ball_query(1.5, 5, pts, off, centres, coff).tolist()
    for m, c in enumerate(centres):
        lo, hi = (0, 10) if m < 3 else (10, 24)
        hits = [j for j in range(lo, hi) if sq(pts[j], c) < 1.5 ** 2][:5]
        assert got[m] == hits + [hits[0] if hits else lo] * (5 - len(hits))


def test_ball_query_radius_rounds_to_the_points_dtype():
    # d^2 = 2^-8 exactly; r^2 = (2^-4 + 1e-10)^2 is above it in double but rounds to 2^-8 in float32, and torch
    # compares a float32 tensor with a Python float in float32: no hit there, a hit in float64
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0625, 0.0, 0.0]])
    for dtype, row in ((torch.float32, [0, 0]), (torch.float64, [0, 1])):
        p = pts.to(dtype)
        args = (0.0625 + 1e-10, 2, p, torch.tensor([2]), p[:1], torch.tensor([1]))
        assert ball_query(*args).tolist() == twin(ball_query, *args).tolist() == [row]


# ---- three nearest neighbours ------------------------------------------------------------------------------
def search(unknown, uoff, known, koff):
    uc, kc = _check_queries("t", "unknown", unknown, uoff, known, koff)
    return _three_nn(unknown, uc, known, kc, None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid", [False, True])
def test_three_nn_same_indices_as_twin(dtype, grid):
    known, koff = clouds([1, 2, 200, 30], dtype, 5, grid)
    unknown, uoff = clouds([5, 6, 700, 40], dtype, 6, grid)
    unknown[:20] = known[:20]  # queries on known points: distance 0
    idx, exists = search(unknown, uoff, known, koff)
    t_idx, t_exists = twin(search, unknown, uoff, known, koff)
    assert torch.equal(idx, t_idx) and torch.equal(exists, t_exists)
    assert exists[:5].sum(1).eq(1).all() and exists[5:11].sum(1).eq(2).all() and exists[11:].all()
    uc, kc = _check_queries("t", "unknown", unknown, uoff, known, koff)
    for chunk in (7, 1000):  # the twin's tie rule does not depend on its chunking
        assert torch.equal(twin(_three_nn, unknown, uc, known, kc, chunk)[0], idx)


def test_three_nn_equals_brute_force_with_ties():
    known, koff = clouds([2, 15], torch.float64, 7, grid=True)
    unknown, uoff = clouds([3, 20], torch.float64, 8, grid=True)
    idx, exists = search(unknown, uoff, known, koff)
    for m in range(len(unknown)):
        lo, hi = (0, 2) if m < 3 else (2, 17)
        best = sorted(range(lo, hi), key=lambda j: (sq(known[j], unknown[m]), j))[:3]
        assert idx[m].tolist() == best + [lo] * (3 - len(best))
        assert exists[m].tolist() == [True] * len(best) + [False] * (3 - len(best))


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_nn_interpolate_values_and_gradients_equal_twin(dtype):
    known, koff = clouds([2, 50], dtype, 9)
    unknown, uoff = clouds([4, 80], dtype, 10)
    feats = torch.randn(52, 5, dtype=dtype)
    outs = []
    for ctx in (torch_twins, None):
        k, u, f = (t.clone().requires_grad_() for t in (known, unknown, feats))
        with ctx() if ctx else torch.enable_grad():
            y = three_nn_interpolate(u, uoff, k, koff, f)
        y.square().sum().backward()
        outs.append((y, k.grad, u.grad, f.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_three_nn_interpolate_gradcheck_on_compiled_indices():
    g = torch.Generator().manual_seed(11)  # distinct points: no tie that a perturbation could flip
    known, koff = torch.rand(9, 3, generator=g, dtype=torch.float64), torch.tensor([3, 9])
    unknown, uoff = torch.rand(7, 3, generator=g, dtype=torch.float64), torch.tensor([2, 7])
    feats = torch.randn(9, 2, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (unknown, known, feats)]
    assert torch.autograd.gradcheck(lambda u, k, f: three_nn_interpolate(u, uoff, k, koff, f), args)


def test_results_do_not_depend_on_threads():
    pts, off = clouds([300, 400], torch.float32, 13)
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append((farthest_point_sampling(pts, 64, off), ball_query(0.3, 16, pts, off, pts, off),
                         search(pts, off, pts[:50].contiguous(), torch.tensor([20, 50]))[0]))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_without_the_kernel_the_twins_run(monkeypatch, tmp_path):
    from renderssl.data import point_ops_compiled as ops

    monkeypatch.setattr(ops, "SOURCE", tmp_path / "missing.cpp")
    with pytest.warns(RuntimeWarning, match="using the torch twins"):
        assert ops.point_kernel.__wrapped__() is None  # a failed build warns and returns None
    pts, off = clouds([50, 60], torch.float32, 14)
    expect = farthest_point_sampling(pts, 20, off), ball_query(0.4, 8, pts, off, pts, off)
    monkeypatch.setattr(ops, "point_kernel", lambda: None)
    assert not ops.usable(pts)
    got = farthest_point_sampling(pts, 20, off), ball_query(0.4, 8, pts, off, pts, off)
    assert all(torch.equal(a, b) for a, b in zip(got, expect))
