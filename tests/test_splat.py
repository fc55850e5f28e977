"""render.splat: dense vs tiles parity, analytic cases, a per-pixel loop twin, gradcheck, bad input."""

import math

import pytest
import torch

from renderssl.errors import InputError
from renderssl.geometry import Cameras, intrinsics_matrix, look_at
from renderssl.render.splat import Gaussians, covariance_3d, project_gaussians, rasterize
from renderssl.render.splat_compiled import compiled_kernel

FAST = ["tiles", pytest.param("compiled", marks=pytest.mark.skipif(compiled_kernel() is None, reason="no C++ compiler"))]

PARAMS = ("means", "quats", "scales", "opacities", "colors")


def random_scene(B=2, N=200, V=2, W=40, H=30, D=3, seed=0, dtype=torch.float64, model="pinhole", scale=0.06):
    g = torch.Generator().manual_seed(seed)
    gauss = Gaussians(
        means=torch.rand(B, N, 3, generator=g, dtype=dtype) * 2 - 1,
        quats=torch.randn(B, N, 4, generator=g, dtype=dtype),
        scales=(torch.rand(B, N, 3, generator=g, dtype=dtype) + 0.2) * scale,
        opacities=torch.rand(B, N, generator=g, dtype=dtype) * 0.9 + 0.05,
        colors=torch.rand(B, N, D, generator=g, dtype=dtype),
    )
    eye = torch.tensor([0.0, -4.0, 1.5], dtype=dtype) + 0.3 * torch.randn(B, V, 3, generator=g, dtype=dtype)
    c2w = look_at(eye, torch.zeros_like(eye))
    f = 0.9 * W if model == "pinhole" else W / 2.6
    K = intrinsics_matrix(f, f * 1.1, W / 2 + 1.3, H / 2 - 0.7, dtype=dtype).expand(B, V, 3, 3)
    return gauss, Cameras(K, c2w, W, H, model)


def with_grad(g: Gaussians) -> Gaussians:
    return Gaussians(*(getattr(g, p).detach().clone().requires_grad_(True) for p in PARAMS))


def loss_of(out):
    H, W = out.color.shape[-2:]
    ramp = torch.linspace(0.2, 1.0, W, dtype=out.color.dtype)
    return (out.color * ramp).sum() + 0.1 * out.depth.sum() + out.alpha.sum()


def pixel_loop_twin(gauss, cams, b, v, i, j, background):
    """gsplat's per-pixel algorithm written as a plain loop over depth-sorted Gaussians."""
    proj = project_gaussians(gauss, cams)
    px = torch.tensor([j + 0.5, i + 0.5], dtype=gauss.means.dtype)
    order = torch.argsort(proj.depths[b, v])
    T, color, depth, terminated = 1.0, torch.zeros(gauss.colors.shape[-1], dtype=px.dtype), 0.0, False
    for n in order.tolist():
        if not proj.valid[b, v, n]:
            continue
        d = proj.means2d[b, v, n] - px
        A, Bc, C = proj.conics[b, v, n].tolist()
        sigma = 0.5 * (A * d[0] ** 2 + C * d[1] ** 2) + Bc * d[0] * d[1]
        alpha = min(0.99, float(proj.opacities[b, v, n] * torch.exp(-sigma)))
        if alpha < 1 / 255:
            continue
        if T * (1 - alpha) <= 1e-4:
            terminated = True
            break
        color = color + alpha * T * gauss.colors[b, n]
        depth += alpha * T * float(proj.depths[b, v, n])
        T *= 1 - alpha
    return color + T * background, depth / max(1 - T, 1e-10), 1 - T, terminated


@pytest.mark.parametrize("fast", FAST)
@pytest.mark.parametrize("model", ["pinhole", "ortho"])
def test_dense_and_fast_backends_agree_values_and_gradients(model, fast):
    gauss, cams = random_scene(model=model, D=5)
    bg = torch.linspace(0.1, 0.5, 5, dtype=torch.float64)
    results = {}
    for backend in ("dense", fast):
        g = with_grad(gauss)
        out = rasterize(g, cams, background=bg, backend=backend)
        grads = torch.autograd.grad(loss_of(out), [getattr(g, p) for p in PARAMS])
        results[backend] = (out, grads)
    (dense, g_dense), (tiles, g_tiles) = results["dense"], results[fast]
    assert tiles.overflow == 0 and tiles.max_per_tile > 10
    assert dense.alpha.max() > 0.9 and dense.alpha.min() == 0  # both covered and empty pixels
    for name in ("color", "depth", "alpha"):
        torch.testing.assert_close(getattr(tiles, name), getattr(dense, name), rtol=1e-9, atol=1e-9)
    for p, a, b in zip(PARAMS, g_dense, g_tiles):
        assert a.abs().max() > 0, p
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9, msg=p)


def test_float32_parity():
    gauss, cams = random_scene(dtype=torch.float32, N=400, seed=3)
    dense = rasterize(gauss, cams, backend="dense")
    tiles = rasterize(gauss, cams, backend="tiles")
    assert (tiles.color - dense.color).abs().mean() < 1e-5
    assert (tiles.alpha - dense.alpha).abs().max() < 1e-3


def test_both_backends_match_per_pixel_loop():
    gauss, cams = random_scene(B=1, V=1, N=300, seed=5, scale=0.25)  # large and overlapping
    gauss.opacities = 0.7 + 0.29 * gauss.opacities  # opaque enough that pixels terminate early
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    backends = ("dense", "tiles") + (("compiled",) if compiled_kernel() is not None else ())
    outs = [rasterize(gauss, cams, background=bg, backend=b) for b in backends]
    gen = torch.Generator().manual_seed(0)
    pixels = [(15, 20), (0, 0), (29, 39)] + [tuple(x) for x in torch.randint(0, 30, (12, 2), generator=gen).tolist()]
    terminated = 0
    for i, j in pixels:
        color, depth, alpha, stop = pixel_loop_twin(gauss, cams, 0, 0, i, j, bg)
        terminated += stop
        for out in outs:
            torch.testing.assert_close(out.color[0, 0, :, i, j], color, rtol=1e-9, atol=1e-9)
            assert abs(float(out.alpha[0, 0, 0, i, j]) - alpha) < 1e-9
            if alpha > 0:
                assert abs(float(out.depth[0, 0, 0, i, j]) - depth) < 1e-7
    assert terminated > 3  # early termination was exercised


def test_single_gaussian_matches_analytic_image():
    """An isotropic Gaussian on the optical axis projects to an isotropic 2D Gaussian of std f s / z."""
    W = H = 32
    f, z, s, o = 40.0, 2.0, 0.1, 0.8
    color = torch.tensor([[[0.9, 0.2, 0.1]]], dtype=torch.float64)
    gauss = Gaussians(
        means=torch.tensor([[[0.0, 0.0, z]]], dtype=torch.float64),
        quats=torch.tensor([[[1.0, 0.0, 0.0, 0.0]]], dtype=torch.float64),
        scales=torch.full((1, 1, 3), s, dtype=torch.float64),
        opacities=torch.tensor([[o]], dtype=torch.float64),
        colors=color,
    )
    cams = Cameras(intrinsics_matrix(f, f, W / 2, H / 2, dtype=torch.float64)[None, None], torch.eye(4, dtype=torch.float64)[None, None], W, H)
    bg = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    var = (f * s / z) ** 2 + 0.3  # projected variance + eps2d blur
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    alpha = o * torch.exp(-0.5 * ((u - W / 2) ** 2 + (v - H / 2) ** 2) / var)
    alpha = torch.where(alpha >= 1 / 255, alpha.clamp(max=0.99), torch.zeros_like(alpha))
    expected = alpha * color[0, 0][:, None, None] + (1 - alpha) * bg[:, None, None]
    for backend in ("dense", "tiles"):
        out = rasterize(gauss, cams, background=bg, backend=backend)
        torch.testing.assert_close(out.color[0, 0], expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out.alpha[0, 0, 0], alpha, rtol=1e-10, atol=1e-10)
        hit = alpha > 0
        torch.testing.assert_close(out.depth[0, 0, 0][hit], torch.full_like(alpha[hit], z))
        assert bool((out.depth[0, 0, 0][~hit] == 0).all())


def test_ewa_jacobian_matches_autograd_of_projection():
    """Sigma_2d = J W Sigma W^T J^T + 0.3 I with J the Jacobian of the pinhole projection at the mean."""
    gauss, cams = random_scene(B=1, V=1, N=5, seed=2)
    gauss.means = gauss.means * 0.3  # keep inside the field of view so gsplat's clamp is inactive
    proj = project_gaussians(gauss, cams)
    K, w2c = cams.K[0, 0], cams.w2c[0, 0]

    def to_pixels(x):
        c = w2c[:3, :3] @ x + w2c[:3, 3]
        return (K @ (c / c[2]))[:2]

    for n in range(5):
        mu = gauss.means[0, n]
        J = torch.autograd.functional.jacobian(to_pixels, mu)  # (2, 3) world -> pixels
        cov2d = J @ covariance_3d(gauss.quats[0, n], gauss.scales[0, n]) @ J.T + 0.3 * torch.eye(2, dtype=J.dtype)
        conic = torch.linalg.inv(cov2d)
        torch.testing.assert_close(proj.conics[0, 0, n], torch.stack([conic[0, 0], conic[0, 1], conic[1, 1]]))
        torch.testing.assert_close(proj.means2d[0, 0, n], to_pixels(mu))


def test_front_gaussian_occludes_back_one_in_any_input_order():
    def two(order):
        means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]], dtype=torch.float64)  # red in front
        colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
        return Gaussians(
            means[order][None], torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64)[None],
            torch.full((1, 2, 3), 0.3, dtype=torch.float64), torch.full((1, 2), 0.98, dtype=torch.float64), colors[order][None],
        )

    cams = Cameras(intrinsics_matrix(20.0, 20.0, 8.0, 8.0, dtype=torch.float64)[None, None], torch.eye(4, dtype=torch.float64)[None, None], 16, 16)
    for backend in ("dense", "tiles"):
        a = rasterize(two([0, 1]), cams, backend=backend)
        b = rasterize(two([1, 0]), cams, backend=backend)
        torch.testing.assert_close(a.color, b.color)
        centre = a.color[0, 0, :, 8, 8]
        # Green only shows through red's 1 - alpha (about 0.04 at this pixel centre, off the mean).
        assert centre[0] > 0.9 and centre[1] < 0.05 and centre[0] > 20 * centre[1]
        # Pure colours carry the blend weights: expected depth = (2 w_red + 4 w_green) / (w_red + w_green).
        assert abs(float(a.depth[0, 0, 0, 8, 8]) - float((2 * centre[0] + 4 * centre[1]) / centre[:2].sum())) < 1e-9


@pytest.mark.parametrize("backend", ["dense"] + FAST)
def test_gradcheck_float64(backend):
    gauss, cams = random_scene(B=1, V=2, N=6, W=12, H=10, seed=7, scale=0.4)
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)

    def f(*params):
        out = rasterize(Gaussians(*params), cams, background=bg, backend=backend)
        return out.color, out.alpha, out.depth * out.alpha

    inputs = tuple(getattr(gauss, p).clone().requires_grad_(True) for p in PARAMS)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_overflow_is_counted_and_front_most_kept():
    gauss, cams = random_scene(B=1, V=1, N=300, seed=1, scale=0.1)
    full = rasterize(gauss, cams, backend="tiles")
    k = max(2, full.max_per_tile // 4)
    capped = rasterize(gauss, cams, backend="tiles", max_per_tile=k)
    assert full.overflow == 0 and capped.overflow > 0
    assert capped.max_per_tile == full.max_per_tile
    # Dropping the back-most Gaussians can only leave more transmittance.
    assert bool((capped.alpha <= full.alpha + 1e-12).all())


def test_near_plane_culls_and_visibility():
    gauss, cams = random_scene(B=1, V=1, N=50, seed=4)
    gauss.means[0, :10] = torch.tensor([0.0, -4.0, 1.5], dtype=torch.float64)  # at the camera: behind the near plane
    out = rasterize(gauss, cams)
    assert not bool(out.visible[0, 0, :10].any()) and bool(out.visible[0, 0, 10:].any())


def test_shared_cameras_broadcast_over_scenes():
    gauss, cams = random_scene(B=3, V=2)
    shared = cams[0]  # (V,)
    a = rasterize(gauss, shared)
    b = rasterize(gauss, Cameras(shared.K.expand(3, 2, 3, 3), shared.c2w.expand(3, 2, 4, 4), cams.width, cams.height))
    torch.testing.assert_close(a.color, b.color)
    assert a.color.shape == (3, 2, 3, 30, 40)


def test_bad_inputs_raise_before_work():
    gauss, cams = random_scene(B=1, V=1, N=4)
    bad = Gaussians(gauss.means, gauss.quats[..., :3], gauss.scales, gauss.opacities, gauss.colors)
    with pytest.raises(InputError, match="quats"):
        rasterize(bad, cams)
    nan = Gaussians(gauss.means.clone(), gauss.quats, gauss.scales, gauss.opacities, gauss.colors)
    nan.means[0, 1, 2] = math.nan
    with pytest.raises(InputError, match="means.*non-finite"):
        rasterize(nan, cams)
    with pytest.raises(InputError, match="batch shape"):
        rasterize(gauss, cams.reshape(1, 1, 1))
    with pytest.raises(InputError, match="background"):
        rasterize(gauss, cams, background=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(InputError, match="backend"):
        rasterize(gauss, cams, backend="cuda")
    with pytest.raises(InputError, match="gsplat"):
        rasterize(gauss, cams, backend="gsplat")
    assert rasterize(gauss, cams, backend="auto").color.shape == (1, 1, 3, 30, 40)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiles_on_cuda_matches_cpu():
    gauss, cams = random_scene(dtype=torch.float32)
    cpu = rasterize(gauss, cams)
    cuda = rasterize(Gaussians(*(getattr(gauss, p).cuda() for p in PARAMS)), cams.to("cuda"))
    torch.testing.assert_close(cuda.color.cpu(), cpu.color, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and gsplat")
def test_gsplat_backend_matches_tiles():
    pytest.importorskip("gsplat")
    gauss, cams = random_scene(dtype=torch.float32)
    gauss, cams = Gaussians(*(getattr(gauss, p).cuda() for p in PARAMS)), cams.to("cuda")
    ours = rasterize(gauss, cams, backend="tiles")
    theirs = rasterize(gauss, cams, backend="gsplat")
    assert (ours.color - theirs.color).abs().mean() < 1e-3
