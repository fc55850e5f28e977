"""render/csrc/composite_tiles.cpp, the vectorised compositing kernel, against independent references:
a scalar per-pixel loop (gsplat's algorithm, Python floats), the torch ``tiles`` twin, float64
gradcheck, torch.exp, and a brute-force check that the row skipping never drops a pixel."""

import math

import pytest
import torch

from renderssl.render.gaussians import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE
from renderssl.compiled import build_flags
from renderssl.render.splat_compiled import CompositeTilesCompiled, compiled_kernel
from renderssl.render.splat_tiles import _CompositeTiles, _tile_pixel_monomials, log_alpha_coefficients

pytestmark = pytest.mark.skipif(compiled_kernel() is None, reason="no C++ compiler")
P = TILE * TILE


def random_pairs(rows=4, max_count=40, D=4, seed=0, dtype=torch.float64, opaque=False):
    """Per-pair log-alpha coefficients of random Gaussians around / inside / far from each tile, values,
    and row starts / counts (rows sorted by decreasing count, as the renderer hands them)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.sort(torch.randint(0, max_count + 1, (rows,), generator=g), descending=True).values
    counts[0] = max_count
    M = int(counts.sum())
    spread, size = (28, 8) if opaque else (44, 3)  # opaque: larger Gaussians nearer the tile
    means = torch.rand(M, 2, generator=g, dtype=dtype) * spread + 8 - spread / 2  # tile-local; some outside
    L = torch.randn(M, 2, 2, generator=g, dtype=dtype) * torch.rand(M, 1, 1, generator=g, dtype=dtype) * size
    cov = L @ L.transpose(1, 2) + 0.3 * torch.eye(2, dtype=dtype)  # eps2d blur, as the projection adds
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], dim=-1)
    lo = 0.7 if opaque else 0.05
    opac = lo + (1.0 - lo) * torch.rand(M, generator=g, dtype=dtype)
    opac[::7] = 1.0  # raw alpha reaches the ALPHA_MAX clamp at the centre
    coef = log_alpha_coefficients(means, conics, torch.log(opac))  # (M, 6)
    values = torch.rand(M + 3, D, generator=g, dtype=dtype)  # per Gaussian; pair k -> Gaussian perm[k]
    pair_gauss = torch.randperm(M + 3, generator=g)[:M]
    row_start = torch.cumsum(counts, 0) - counts
    return coef.contiguous(), values, pair_gauss, row_start, counts


def scalar_reference(coef, values, pair_gauss, row_start, row_count):
    """gsplat's per-pixel loop with Python floats: out, T, last, visited pairs per row."""
    rows, D = row_start.numel(), values.shape[1]
    out = torch.zeros(rows, P, D, dtype=torch.float64)
    T_out = torch.ones(rows, P, dtype=torch.float64)
    last = torch.full((rows, P), -1, dtype=torch.long)
    visited = torch.zeros(rows, dtype=torch.long)
    C, V, G = coef.tolist(), values.tolist(), pair_gauss.tolist()
    for r in range(rows):
        s, n = int(row_start[r]), int(row_count[r])
        for p in range(P):
            u, v = p % TILE + 0.5, p // TILE + 0.5
            T, acc, walked = 1.0, [0.0] * D, n
            for k in range(n):
                c = C[s + k]
                raw = math.exp(c[0] * u * u + c[1] * u * v + c[2] * v * v + c[3] * u + c[4] * v + c[5])
                if raw < ALPHA_MIN:
                    continue
                alpha = min(raw, ALPHA_MAX)
                if T * (1 - alpha) <= T_MIN:
                    walked = k + 1
                    break
                acc = [a + alpha * T * x for a, x in zip(acc, V[G[s + k]])]
                T *= 1 - alpha
                last[r, p] = k
            out[r, p] = torch.tensor(acc, dtype=torch.float64)
            T_out[r, p] = T
            visited[r] += walked
    return out, T_out, last, visited


@pytest.mark.parametrize("D", [1, 4, 7])
def test_forward_matches_scalar_per_pixel_loop(D):
    args = random_pairs(D=D, seed=D, opaque=True)
    out, T, last, visited = compiled_kernel().composite_forward(*_kernel_order(args))
    ref_out, ref_T, ref_last, ref_visited = scalar_reference(*args)
    assert (ref_T < 0.5).float().mean() > 0.3 and (ref_visited < row_counts_total(args)).any()  # terminations happen
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(T, ref_T, rtol=1e-12, atol=1e-14)
    assert torch.equal(last, ref_last)
    assert torch.equal(visited, ref_visited)


def row_counts_total(args):
    return args[4] * P  # pairs a row's pixels would walk without terminating


def _kernel_order(args):
    coef, values, pair_gauss, row_start, row_count = args
    return coef, pair_gauss, values, row_start, row_count


@pytest.mark.parametrize("dtype,D", [(torch.float64, 4), (torch.float64, 3), (torch.float32, 4)])
def test_values_and_gradients_match_the_tiles_twin(dtype, D):
    """D = 4 takes the backward's fused lane loop, other D the per-channel loops."""
    coef, values, pair_gauss, row_start, row_count = random_pairs(rows=5, D=D, seed=11, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    w_out = torch.rand(5, P, D, generator=g, dtype=dtype)
    w_T = torch.rand(5, P, generator=g, dtype=dtype)
    results = []
    for twin in ("compiled", "tiles"):
        c, v = coef.clone().requires_grad_(True), values.clone().requires_grad_(True)
        if twin == "compiled":
            out, T = CompositeTilesCompiled.apply(c, v, pair_gauss, row_start, row_count)
        else:
            out, T = _CompositeTiles.apply(c, v, pair_gauss, row_start, row_count, 64)
        ((out * w_out).sum() + (T * w_T).sum()).backward()
        results.append((out, T, c.grad, v.grad))
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    for a, b, name in zip(results[0], results[1], ("out", "T", "g_coef", "g_values")):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, **tol, msg=name)


def test_gradcheck_float64():
    coef, values, pair_gauss, row_start, row_count = random_pairs(rows=2, max_count=6, D=2, seed=3)
    coef.requires_grad_(True), values.requires_grad_(True)
    fn = lambda c, v: CompositeTilesCompiled.apply(c, v, pair_gauss, row_start, row_count)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (coef, values), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_rows_skipped_by_the_ellipse_test_hold_no_visible_pixel():
    """Brute force: alpha >= ALPHA_MIN at some pixel of a row implies the kernel evaluates that row."""
    coef = random_pairs(rows=40, max_count=60, seed=5)[0]
    rows = compiled_kernel().ellipse_rows(coef)  # (M, 2) first and last pixel row, first > last: none
    raw = torch.exp(coef @ _tile_pixel_monomials(torch.float64, "cpu").T).reshape(-1, TILE, TILE)  # (M, v, u)
    visible_rows = (raw >= ALPHA_MIN).any(-1)  # (M, TILE)
    j = torch.arange(TILE)
    inside = (j >= rows[:, :1]) & (j <= rows[:, 1:])
    assert not (visible_rows & ~inside).any()
    assert (~inside).sum() > 0.3 * inside.numel()  # the test does skip: a third of the rows or more
    assert (rows[:, 0] > rows[:, 1]).sum() > 0  # and whole pairs
    non_concave = coef.clone()
    non_concave[:, 0] = 0.0
    assert torch.equal(compiled_kernel().ellipse_rows(non_concave), torch.tensor([[0, TILE - 1]]).expand(len(coef), 2))


def test_nan_propagates_like_the_tiles_twin():
    coef, values, pair_gauss, row_start, row_count = random_pairs(rows=3, D=3, seed=8)
    coef[5, 5] = float("nan")
    out, T = CompositeTilesCompiled.apply(coef, values, pair_gauss, row_start, row_count)
    ref_out, ref_T = _CompositeTiles.apply(coef, values, pair_gauss, row_start, row_count, 64)
    assert out.isnan().any()
    assert torch.equal(out.isnan(), ref_out.isnan()) and torch.equal(T.isnan(), ref_T.isnan())


def test_threads_do_not_change_results():
    args = _kernel_order(random_pairs(rows=9, D=4, seed=2, dtype=torch.float32))
    k = compiled_kernel()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = k.composite_forward(*args)
        g_out, g_T = torch.ones_like(one[0]), torch.ones_like(one[1])
        one_b = k.composite_backward(args[0], args[1], args[2], args[3], one[1], one[2], g_out, g_T)
        torch.set_num_threads(2)
        two = k.composite_forward(*args)
        two_b = k.composite_backward(args[0], args[1], args[2], args[3], two[1], two[2], g_out, g_T)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one + one_b, two + two_b):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vector_exp_matches_torch_exp(dtype):
    lo, hi = (-80.0, 88.0) if dtype == torch.float32 else (-700.0, 700.0)
    x = torch.cat([torch.linspace(lo, hi, 200001, dtype=torch.float64), torch.linspace(-10, 1, 100001, dtype=torch.float64)])
    y = compiled_kernel().vector_exp(x.to(dtype)).double()
    ref = torch.exp(x.to(dtype).double())  # exact exp of the rounded input
    ulp = torch.finfo(dtype).eps
    assert ((y - ref).abs() / ref).max() < 3 * ulp
    special = compiled_kernel().vector_exp(torch.tensor([float("nan"), -1e4, 0.0], dtype=dtype))
    assert special[0].isnan() and 0 <= special[1] < ALPHA_MIN * 1e-20 and special[2] == 1


def test_build_flags_per_capability():
    assert build_flags("avx512") == ("avx512", ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
                                                "-march=x86-64-v4", "-mprefer-vector-width=512"])
    assert build_flags("avx2")[1][-1] == "-march=x86-64-v3"
    assert build_flags("default") == build_flags("sve256") == ("default", ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"])
    assert not any("fast-math" in f or "native" in f for f in build_flags()[1])


def test_compositing_bench_counts_pairs_and_reports_ratios():
    from renderssl.bench.render import bench_compositing, format_compositing

    lines = []
    r = bench_compositing(2048, 64, 48, repeats=1, whole=True, log=lines.append)
    assert r.pairs >= r.backward_pairs > 0
    assert r.forward_ns > 0 and r.backward_ns > 0 and r.exp_ns > 0 and r.torch_exp_ns > 0
    assert r.compiled_seconds > 0 and r.tiles_seconds > 0
    text = format_compositing(r)
    assert lines == [text] and "ns/pair" in text and "x exp" in text and "compiled" in text and "tiles" in text
