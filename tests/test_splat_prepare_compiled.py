"""render.splat_prepare_compiled: the C++ projection, binning and per-pair coefficients against their torch
twins (render/gaussians.project_gaussians, splat_tiles._prepare_pairs): identical pairs, order and counts,
values to float64 round-off, gradients against torch autograd and by float64 gradcheck."""

import pytest
import torch

from renderssl.geometry import Cameras, intrinsics_matrix, look_at
from renderssl.render.gaussians import Gaussians, project_gaussians
from renderssl.render.splat_prepare_compiled import (
    PairCoefficients, bin_tiles_compiled, prepare_kernel, prepare_pairs_compiled, project_gaussians_compiled,
)
from renderssl.render.splat_tiles import _prepare_pairs

pytestmark = pytest.mark.skipif(prepare_kernel() is None, reason="no C++ compiler")

PARAMS = ("means", "quats", "scales", "opacities")
OUTS = ("means2d", "conics", "depths", "opacities")


def scene(B=2, V=3, N=300, W=40, H=30, seed=0, dtype=torch.float64, model="pinhole", scale=0.06):
    """Gaussians around the origin seen by cameras on a ring; some behind the near plane, some far off
    to the side (the field-of-view clamp), some off screen."""
    g = torch.Generator().manual_seed(seed)
    gauss = Gaussians(
        means=torch.rand(B, N, 3, generator=g, dtype=dtype) * 2 - 1,
        quats=torch.randn(B, N, 4, generator=g, dtype=dtype),
        scales=(torch.rand(B, N, 3, generator=g, dtype=dtype) + 0.2) * scale,
        opacities=torch.rand(B, N, generator=g, dtype=dtype) * 0.9 + 0.05,
        colors=torch.rand(B, N, 3, generator=g, dtype=dtype),
    )
    eye = torch.tensor([0.0, -4.0, 1.5], dtype=dtype) + 0.3 * torch.randn(B, V, 3, generator=g, dtype=dtype)
    f = 0.9 * W if model == "pinhole" else W / 2.6
    K = intrinsics_matrix(f, f * 1.1, W / 2 + 1.3, H / 2 - 0.7, dtype=dtype).expand(B, V, 3, 3)
    cams = Cameras(K, look_at(eye, torch.zeros_like(eye)), W, H, model)
    gauss.means[:, :10] = torch.tensor([0.0, -4.0, 1.5], dtype=dtype)  # at the cameras: culled by the near plane
    gauss.means[:, 10:20] = torch.tensor([6.0, 0.0, 0.0], dtype=dtype) + torch.randn(B, 10, 3, generator=g, dtype=dtype)
    gauss.means[:, 20:30] = torch.tensor([0.0, -8.0, 1.5], dtype=dtype)  # behind the cameras: z < 0
    return Gaussians(gauss.means, gauss.quats, gauss.scales, gauss.opacities, gauss.colors), cams


@pytest.mark.parametrize("model", ["pinhole", "ortho"])
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_projection_matches_torch_twin_values_and_gradients(model, mode):
    gauss, cams = scene(model=model)
    results = []
    for project in (project_gaussians, project_gaussians_compiled):
        params = [getattr(gauss, p).clone().requires_grad_(True) for p in PARAMS]
        proj = project(Gaussians(*params, gauss.colors), cams, rasterize_mode=mode)
        gen = torch.Generator().manual_seed(3)
        upstream = [torch.randn(getattr(proj, o).shape, generator=gen, dtype=torch.float64) for o in OUTS]
        loss = sum((getattr(proj, o) * u).sum() for o, u in zip(OUTS, upstream))
        results.append((proj, torch.autograd.grad(loss, params)))
    (ref, g_ref), (ours, g_ours) = results
    assert bool(ref.valid.any()) and not bool(ref.valid.all())
    assert torch.equal(ours.valid, ref.valid)
    for name in OUTS + ("extent",):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-12, atol=1e-12, msg=name)
    for p, a, b in zip(PARAMS, g_ref, g_ours):
        assert a.abs().max() > 0, p
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=p)


@pytest.mark.parametrize("model", ["pinhole", "ortho"])
def test_projection_gradcheck_float64(model):
    gauss, cams = scene(B=1, V=2, N=34, seed=4, model=model)
    gauss.means[:, 30:32] = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)  # off screen, inside the clamp margin

    def f(*params):
        proj = project_gaussians_compiled(Gaussians(*params, gauss.colors), cams, rasterize_mode="antialiased")
        return tuple(getattr(proj, o) for o in OUTS)

    inputs = tuple(getattr(gauss, p).clone().requires_grad_(True) for p in PARAMS)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_projection_with_camera_gradients_uses_torch_twin():
    gauss, cams = scene(B=1, V=1, N=20)
    c2w = cams.c2w.clone().requires_grad_(True)
    proj = project_gaussians_compiled(gauss, Cameras(cams.K, c2w, cams.width, cams.height))
    proj.means2d.sum().backward()
    assert c2w.grad is not None and c2w.grad.abs().max() > 0


def prepared_both(proj, tiles_x, tiles_y, K):
    ours = prepare_pairs_compiled(proj, tiles_x, tiles_y, K)
    ref = _prepare_pairs(proj, tiles_x, tiles_y, K)
    return ours, ref


@pytest.mark.parametrize("max_per_tile", [65536, 7])
def test_binning_identical_pairs_order_and_counts(max_per_tile):
    gauss, cams = scene(B=2, V=2, N=400, W=70, H=50, seed=2, scale=0.1)
    proj = project_gaussians(gauss, cams)
    proj.depths = proj.depths.clone()
    proj.depths[..., 100:160] = proj.depths[..., 100:101]  # exact ties: 60 Gaussians per image share one depth
    tiles_x, tiles_y = 5, 4
    (c_ours, g_ours, s_ours, n_ours, a_ours, of_ours, big_ours), (c_ref, g_ref, s_ref, n_ref, a_ref, of_ref, big_ref) = (
        prepared_both(proj, tiles_x, tiles_y, max_per_tile))
    assert torch.equal(g_ours, g_ref) and torch.equal(s_ours, s_ref) and torch.equal(n_ours, n_ref)
    assert torch.equal(a_ours, a_ref) and (of_ours, big_ours) == (of_ref, big_ref)
    assert (of_ref > 0) == (max_per_tile == 7) and big_ref > 7
    torch.testing.assert_close(c_ours, c_ref, rtol=1e-12, atol=1e-12)
    # Ties in depth: lower flat index first, within every tile.
    depth = proj.depths.reshape(-1)[g_ours]
    bins = bin_tiles_compiled(proj, tiles_x, tiles_y, max_per_tile)
    t = bins.pair_tile
    inner = t[1:] == t[:-1]
    assert bool((depth[1:][inner] >= depth[:-1][inner]).all())
    tie = inner & (depth[1:] == depth[:-1])
    assert int(tie.sum()) > 20 and bool((g_ours[1:][tie] > g_ours[:-1][tie]).all())


def brute_force_pairs(proj, tiles_x, tiles_y):
    """Every (Gaussian, tile) pair by a plain loop: tile rectangles from the extent, sorted by (tile, depth, index)."""
    B, V, N = proj.depths.shape
    pairs = []
    for i in range(B * V):
        for n in range(N):
            g = i * N + n
            if not proj.valid.reshape(-1)[g]:
                continue
            m, e = proj.means2d.reshape(-1, 2)[g].tolist(), proj.extent.reshape(-1, 2)[g].tolist()
            lo = [min(max(int((m[d] - e[d] - 0.5) // 16), 0), lim) for d, lim in ((0, tiles_x - 1), (1, tiles_y - 1))]
            hi = [min(max(int((m[d] + e[d] - 0.5) // 16), 0), lim) for d, lim in ((0, tiles_x - 1), (1, tiles_y - 1))]
            for ty in range(lo[1], hi[1] + 1):
                for tx in range(lo[0], hi[0] + 1):
                    pairs.append(((i * tiles_y + ty) * tiles_x + tx, float(proj.depths.reshape(-1)[g]), g))
    return sorted(pairs)


def test_binning_matches_brute_force_loop():
    gauss, cams = scene(B=1, V=2, N=80, W=50, H=40, seed=6, scale=0.1)
    proj = project_gaussians(gauss, cams)
    bins = bin_tiles_compiled(proj, 4, 3, 65536)
    expected = brute_force_pairs(proj, 4, 3)
    assert len(expected) > 50
    assert bins.pair_tile.tolist() == [p[0] for p in expected] and bins.pair_gauss.tolist() == [p[2] for p in expected]


def test_pair_coefficients_gradcheck_and_twin_gradients():
    gauss, cams = scene(B=1, V=2, N=40, W=50, H=40, seed=8, scale=0.15)
    proj = project_gaussians(gauss, cams)
    G = proj.depths.numel()
    bins = bin_tiles_compiled(proj, 4, 3, 9)  # some pairs dropped: their slots must be skipped
    assert bins.overflow > 0
    base = (proj.means2d.detach().reshape(G, 2), proj.conics.detach().reshape(G, 3), proj.opacities.detach().reshape(G).clone())
    base[2][:3] = 1e-3  # below 1/255: the clamp passes no gradient
    inputs = tuple(t.clone().requires_grad_(True) for t in base)
    assert torch.autograd.gradcheck(lambda *x: PairCoefficients.apply(*x, bins, 4, 3), inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_float32_pairs_match_twin():
    gauss, cams = scene(B=1, V=2, N=500, W=64, H=48, seed=9, dtype=torch.float32, scale=0.1)
    proj = project_gaussians(gauss, cams)
    (c_ours, g_ours, s_ours, n_ours, a_ours, *_), (c_ref, g_ref, s_ref, n_ref, a_ref, *_) = prepared_both(proj, 4, 3, 65536)
    assert torch.equal(g_ours, g_ref) and torch.equal(n_ours, n_ref) and torch.equal(a_ours, a_ref)
    torch.testing.assert_close(c_ours, c_ref, rtol=1e-5, atol=1e-4)


def test_untile_matches_torch_twin_values_and_gradients():
    from renderssl.render.splat_prepare_compiled import untile_compiled

    B, V, tiles_x, tiles_y, H, W, C = 2, 2, 3, 2, 27, 40, 4  # the last tile row and column are partial
    T_all, P = B * V * tiles_x * tiles_y, 256
    active = torch.tensor([5, 0, 17, 23, 9, 12, 3])  # some tiles empty
    g = torch.Generator().manual_seed(0)
    out = torch.rand(len(active), P, C, generator=g, dtype=torch.float64, requires_grad=True)
    T = torch.rand(len(active), P, generator=g, dtype=torch.float64, requires_grad=True)

    def twin(out, T):
        full = out.new_zeros((T_all, P, C)).index_copy(0, active, out)
        trans = T.new_ones((T_all, P)).index_copy(0, active, T)[..., None]

        def untile(t):
            t = t.reshape(B, V, tiles_y, tiles_x, 16, 16, t.shape[-1]).permute(0, 1, 2, 4, 3, 5, 6)
            return t.reshape(B, V, tiles_y * 16, tiles_x * 16, -1)[:, :, :H, :W].reshape(B, V, H * W, -1)

        return untile(full), untile(trans)[..., 0]

    ours, ref = untile_compiled(out, T, active, B, V, tiles_x, tiles_y, H, W), twin(out, T)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    assert torch.autograd.gradcheck(lambda o, t: untile_compiled(o, t, active[:3], B, V, tiles_x, tiles_y, H, W),
                                     (out[:3, :, :2].detach().requires_grad_(True), T[:3].detach().requires_grad_(True)))


def test_two_threads_give_identical_pairs_and_gradients():
    gauss, cams = scene(B=2, V=2, N=300, W=70, H=50, seed=11, scale=0.1)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            params = [getattr(gauss, p).clone().requires_grad_(True) for p in PARAMS]
            proj = project_gaussians_compiled(Gaussians(*params, gauss.colors), cams)
            coef, pair_gauss, *_ = prepare_pairs_compiled(proj, 5, 4, 65536)
            loss = (coef * torch.linspace(0.5, 1.5, 6, dtype=coef.dtype)).sum() + proj.depths.sum()
            results.append((pair_gauss, coef.detach(), torch.autograd.grad(loss, params)))
    finally:
        torch.set_num_threads(threads)
    (g1, c1, d1), (g2, c2, d2) = results
    assert torch.equal(g1, g2) and torch.equal(c1, c2) and all(torch.equal(a, b) for a, b in zip(d1, d2))


def test_without_the_kernel_the_compiled_backend_uses_the_torch_twins(monkeypatch):
    import renderssl.render.splat_prepare_compiled as prepared
    from renderssl.render.splat import rasterize

    gauss, cams = scene(B=1, V=2, N=200, seed=12)
    with_kernel = rasterize(gauss, cams, backend="compiled")
    monkeypatch.setattr(prepared, "prepare_kernel", lambda: None)
    without = rasterize(gauss, cams, backend="compiled")
    for name in ("color", "depth", "alpha"):
        torch.testing.assert_close(getattr(without, name), getattr(with_kernel, name), rtol=1e-10, atol=1e-10)
