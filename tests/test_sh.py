"""render.sh and per-camera colours in rasterize: the SH basis against the textbook real SH written out by
hand, orthonormality by exact quadrature, gradcheck, degree 0 = plain colour through rasterize, per-camera
colours: backends agree (values, gradients) and equal one render per camera."""

import math

import numpy as np
import pytest
import torch

from renderssl.errors import InputError
from renderssl.geometry import Cameras, intrinsics_matrix, look_at
from renderssl.render.sh import sh_basis, sh_to_color, view_dirs
from renderssl.render.splat import Gaussians, rasterize, rasterize_sh

from test_splat import FAST, PARAMS, loss_of, random_scene, with_grad

BACKENDS = ["dense"] + FAST
PI = math.pi


def textbook_sh(x: float, y: float, z: float) -> list[float]:
    """Orthonormal real SH with the Condon-Shortley phase, degrees 0..3, for a unit (x, y, z), in 3DGS's
    order (m = -l..l). Normalisations from sqrt((2l+1)/4pi (l-m)!/(l+m)!); z^2 terms use x^2+y^2+z^2 = 1."""
    return [
        0.5 / math.sqrt(PI),
        -math.sqrt(3 / (4 * PI)) * y, math.sqrt(3 / (4 * PI)) * z, -math.sqrt(3 / (4 * PI)) * x,
        0.5 * math.sqrt(15 / PI) * x * y, -0.5 * math.sqrt(15 / PI) * y * z, 0.25 * math.sqrt(5 / PI) * (3 * z * z - 1),
        -0.5 * math.sqrt(15 / PI) * x * z, 0.25 * math.sqrt(15 / PI) * (x * x - y * y),
        -0.25 * math.sqrt(35 / (2 * PI)) * y * (3 * x * x - y * y), 0.5 * math.sqrt(105 / PI) * x * y * z,
        -0.25 * math.sqrt(21 / (2 * PI)) * y * (5 * z * z - 1), 0.25 * math.sqrt(7 / PI) * z * (5 * z * z - 3),
        -0.25 * math.sqrt(21 / (2 * PI)) * x * (5 * z * z - 1), 0.25 * math.sqrt(105 / PI) * z * (x * x - y * y),
        -0.25 * math.sqrt(35 / (2 * PI)) * x * (x * x - 3 * y * y),
    ]


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_basis_matches_hand_evaluated_direction(degree):
    x, y, z = 2 / 3, -1 / 3, 2 / 3  # unit
    got = sh_basis(torch.tensor([x, y, z], dtype=torch.float64), degree)
    want = torch.tensor(textbook_sh(x, y, z)[: (degree + 1) ** 2], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # Hand values at this direction: l = 1 -> sqrt(3/4pi) (1/3, 2/3, -2/3); l = 2, m = 0 -> sqrt(5/pi)/4 (3*4/9 - 1).
    if degree >= 1:
        torch.testing.assert_close(got[1:4], math.sqrt(3 / (4 * PI)) * torch.tensor([1 / 3, 2 / 3, -2 / 3], dtype=torch.float64))
    if degree >= 2:
        assert abs(float(got[6]) - math.sqrt(5 / PI) / 4 * (1 / 3)) < 1e-14


def test_basis_is_orthonormal_on_the_sphere():
    """Gauss-Legendre in cos(theta) x uniform phi integrates these degree <= 6 products exactly."""
    zs, wz = np.polynomial.legendre.leggauss(8)
    phi = torch.arange(16, dtype=torch.float64) * (2 * PI / 16)
    z = torch.tensor(zs)[:, None].expand(8, 16)
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)  # (8, 16, 3)
    Y = sh_basis(dirs, 3).reshape(-1, 16)  # (128, 16)
    w = (torch.tensor(wz)[:, None] * (2 * PI / 16)).expand(8, 16).reshape(-1)  # (128,)
    torch.testing.assert_close(Y.T @ (w[:, None] * Y), torch.eye(16, dtype=torch.float64), atol=1e-12, rtol=0)


def test_sh_to_color_hand_case_offset_clamp_and_length_invariance():
    coeffs = torch.zeros(1, 2, 16, 2, dtype=torch.float64)
    coeffs[0, :, 0] = torch.tensor([0.4, -0.2], dtype=torch.float64)  # DC
    coeffs[0, :, 2, 0] = 0.3  # l = 1, m = 0 (C1 z) in channel 0
    coeffs[0, 1, 0, 1] = -5.0  # second Gaussian's channel 1 goes negative: clamped to 0
    dirs = torch.tensor([[[[0.0, 0.0, 2.0], [2.0, -1.0, 2.0]]]], dtype=torch.float64)  # (1, 1, 2, 3), not unit
    got = sh_to_color(coeffs, dirs, degree=3)
    c0, c1 = 0.5 / math.sqrt(PI), math.sqrt(3 / (4 * PI))
    want = torch.tensor([[[[0.4 * c0 + 0.3 * c1 * 1.0 + 0.5, -0.2 * c0 + 0.5],
                           [0.4 * c0 + 0.3 * c1 * (2 / 3) + 0.5, 0.0]]]], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # Degree 0 ignores every higher coefficient: colour = C0 coeff + 0.5.
    torch.testing.assert_close(sh_to_color(coeffs, dirs, 0)[0, 0, 0], c0 * coeffs[0, 0, 0] + 0.5)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_sh_to_color_gradcheck(degree):
    g = torch.Generator().manual_seed(degree)
    coeffs = (0.05 * torch.randn(2, 5, (degree + 1) ** 2, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    dirs = torch.randn(2, 3, 5, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    assert float(sh_to_color(coeffs, dirs, degree).detach().min()) > 0.05  # away from the clamp's kink
    assert torch.autograd.gradcheck(lambda c, d: sh_to_color(c, d, degree), (coeffs, dirs), eps=1e-6, atol=1e-8)


def test_sh_bad_inputs():
    c = torch.zeros(1, 4, 9, 3)
    with pytest.raises(InputError, match="degree"):
        sh_to_color(c, torch.ones(1, 1, 4, 3), 4)
    with pytest.raises(InputError, match="coeffs"):
        sh_to_color(c, torch.ones(1, 1, 4, 3), 3)  # 9 < 16 coefficients
    with pytest.raises(InputError, match="dirs"):
        sh_to_color(c, torch.ones(1, 4, 3), 2)
    gauss, cams = random_scene(B=1, V=2, N=4)
    with pytest.raises(InputError, match="V = 2"):
        rasterize(Gaussians(gauss.means, gauss.quats, gauss.scales, gauss.opacities, torch.rand(1, 3, 4, 3, dtype=torch.float64)), cams)
    with pytest.raises(InputError, match="SH coefficients"):
        rasterize_sh(gauss, cams, 1)  # colors (1, 4, 3) are no SH coefficients


def per_camera_scene(seed=0, B=2, V=3, N=120, D=4):
    gauss, cams = random_scene(B=B, V=V, N=N, D=D, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    colors = torch.rand(B, V, N, D, generator=g, dtype=torch.float64)  # (B, V, N, D)
    return Gaussians(gauss.means, gauss.quats, gauss.scales, gauss.opacities, colors), cams


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_camera_colours_equal_one_render_per_camera(backend):
    gauss, cams = per_camera_scene()
    bg = torch.linspace(0.1, 0.4, 4, dtype=torch.float64)
    out = rasterize(gauss, cams, background=bg, backend=backend)
    for v in range(cams.batch_shape[1]):
        single = Gaussians(gauss.means, gauss.quats, gauss.scales, gauss.opacities, gauss.colors[:, v])
        ref = rasterize(single, cams[:, v : v + 1], background=bg, backend=backend)
        for name in ("color", "depth", "alpha"):
            torch.testing.assert_close(getattr(out, name)[:, v : v + 1], getattr(ref, name), rtol=1e-12, atol=1e-12)
    assert out.alpha.max() > 0.9
    # Different colours per camera really reach the image: camera 0 with camera 1's colours differs.
    swapped = Gaussians(gauss.means, gauss.quats, gauss.scales, gauss.opacities, gauss.colors[:, 1])
    assert (rasterize(swapped, cams[:, :1], background=bg, backend=backend).color - out.color[:, :1]).abs().max() > 0.1


@pytest.mark.parametrize("fast", FAST)
def test_per_camera_colours_backends_agree_values_and_gradients(fast):
    gauss, cams = per_camera_scene(seed=2)
    results = {}
    for backend in ("dense", fast):
        g = with_grad(gauss)
        out = rasterize(g, cams, backend=backend)
        results[backend] = (out, torch.autograd.grad(loss_of(out), [getattr(g, p) for p in PARAMS]))
    (dense, g_dense), (other, g_other) = results["dense"], results[fast]
    for name in ("color", "depth", "alpha"):
        torch.testing.assert_close(getattr(other, name), getattr(dense, name), rtol=1e-9, atol=1e-9)
    for p, a, b in zip(PARAMS, g_dense, g_other):
        assert a.abs().max() > 0, p
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9, msg=p)
    assert g_dense[-1].shape == (2, 3, 120, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_camera_colours_gradcheck(backend):
    gauss, cams = random_scene(B=1, V=2, N=5, W=12, H=10, seed=7, scale=0.4)
    colors = torch.rand(1, 2, 5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    inputs = (gauss.means.clone().requires_grad_(True), colors.requires_grad_(True))

    def f(means, cols):
        out = rasterize(Gaussians(means, gauss.quats, gauss.scales, gauss.opacities, cols), cams, backend=backend)
        return out.color, out.alpha

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_degree_zero_equals_plain_colour_through_rasterize(backend):
    gauss, cams = random_scene(B=2, V=2, N=150, seed=4)
    g = torch.Generator().manual_seed(9)
    coeffs = torch.randn(2, 150, 16, 3, generator=g, dtype=torch.float64)  # higher degrees must be ignored
    coeffs[:, :, 0] = (gauss.colors - 0.5) * 2 * math.sqrt(PI)  # C0 = 1 / (2 sqrt(pi))
    bg = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    plain = rasterize(gauss, cams, background=bg, backend=backend)
    sh = Gaussians(gauss.means, gauss.quats, gauss.scales, gauss.opacities, coeffs)
    for out in (rasterize_sh(sh, cams, 0, background=bg, backend=backend),
                rasterize(sh, cams, background=bg, backend=backend, sh_degree=0)):
        torch.testing.assert_close(out.color, plain.color, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.alpha, plain.alpha)


@pytest.mark.parametrize("backend", BACKENDS)
def test_view_dependent_colour_follows_the_basis(backend):
    """One Gaussian at the origin seen from above (+z) and from the side (-y): with only the DC and the
    l = 1, m = 0 (C1 z) coefficient set, the colour is C0 a + C1 d_z b + 0.5 with d the unit direction
    from camera to mean, so it differs between the cameras exactly as d_z does."""
    W = H = 16
    dt = torch.float64
    eyes = torch.tensor([[0.3, 0.2, -3.0], [0.0, -3.0, 0.0], [0.2, 0.0, 3.0]], dtype=dt)  # (V, 3): below, side, above
    c2w = look_at(eyes, torch.zeros_like(eyes), up=torch.tensor([1.0, 0.0, 0.0], dtype=dt).expand(3, 3))  # (V, 4, 4)
    K = intrinsics_matrix(20.0, 20.0, W / 2, H / 2, dtype=dt).expand(1, 3, 3, 3)
    cams = Cameras(K, c2w[None], W, H)
    coeffs = torch.zeros(1, 1, 4, 3, dtype=dt)
    coeffs[0, 0, 0] = torch.tensor([0.2, 0.1, -0.3], dtype=dt)
    coeffs[0, 0, 2] = torch.tensor([0.6, -0.4, 0.0], dtype=dt)  # C1 z
    gauss = Gaussians(torch.zeros(1, 1, 3, dtype=dt), torch.tensor([[[1.0, 0, 0, 0]]], dtype=dt),
                      torch.full((1, 1, 3), 0.2, dtype=dt), torch.tensor([[0.9]], dtype=dt), coeffs)
    out = rasterize_sh(gauss, cams, 1, backend=backend)
    c0, c1 = 0.5 / math.sqrt(PI), math.sqrt(3 / (4 * PI))
    for v in range(3):
        d_z = float(-eyes[v, 2] / eyes[v].norm())  # camera -> mean (the origin)
        want = c0 * coeffs[0, 0, 0] + c1 * d_z * coeffs[0, 0, 2] + 0.5
        # A lone Gaussian: colour = alpha * its colour at every pixel.
        i = j = H // 2
        torch.testing.assert_close(out.color[0, v, :, i, j] / out.alpha[0, v, 0, i, j], want.clamp(min=0), rtol=1e-9, atol=1e-12)
    assert float(out.color[0, 0, 0].max()) > float(out.color[0, 2, 0].max()) + 0.1  # red seen from below, not above


def test_view_dirs_points_from_camera_centre_to_mean():
    gauss, cams = random_scene(B=2, V=3, N=7)
    d = view_dirs(gauss.means, cams)  # (2, 3, 7, 3)
    b, v, n = 1, 2, 5
    torch.testing.assert_close(d[b, v, n], gauss.means[b, n] - cams.c2w[b, v, :3, 3])
    # The mean lies in front of the camera along d: its camera-frame z is d . (camera z axis) > 0 here.
    assert float(d[b, v, n] @ cams.c2w[b, v, :3, 2]) > 0
