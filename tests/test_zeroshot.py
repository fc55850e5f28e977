"""eval.zeroshot: depth order, layer groups, one-call layer renders, assignment, figure-ground, edges."""

import math

import pytest
import torch

import renderssl.eval.zeroshot as zs
from renderssl.errors import InputError
from renderssl.geometry import Cameras, intrinsics_matrix, look_at
from renderssl.render.splat import Gaussians, rasterize

S = 32  # image size; the ortho camera maps world x, y in [-1, 1] onto the image


def ortho_camera(S: int = S) -> Cameras:
    """Camera at the origin looking down +z (OpenCV), 16 px per world unit."""
    K = intrinsics_matrix(S / 2, S / 2, S / 2, S / 2)
    return Cameras(K[None], torch.eye(4)[None], S, S, "ortho")


def gaussians(means, scales, colors, opacity=0.95) -> Gaussians:
    """Isotropic Gaussians (B, N) from means (B, N, 3), scales (B, N) and colours (B, N, 3)."""
    B, N = means.shape[:2]
    return Gaussians(
        means=means.float(), quats=torch.tensor([1.0, 0, 0, 0]).expand(B, N, 4).clone(),
        scales=scales.float()[..., None].expand(B, N, 3).clone(), opacities=torch.full((B, N), opacity),
        colors=colors.float(),
    )


def disc_over_plane(n: int = 100, radius: float = 0.5) -> Gaussians:
    """A red disc of n small Gaussians at z ~ 1 over a blue plane of n big ones at z ~ 3 (distinct z)."""
    i = torch.arange(n, dtype=torch.float32)
    r, th = radius * torch.sqrt((i + 0.5) / n), i * math.pi * (3 - math.sqrt(5))  # sunflower: even cover
    disc = torch.stack([r * torch.cos(th), r * torch.sin(th), 1.0 + 1e-3 * i], -1)  # (n, 3)
    g = math.isqrt(n)
    lin = torch.linspace(-1.2, 1.2, g)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    plane = torch.stack([xx.reshape(-1), yy.reshape(-1), 3.0 + 1e-2 * torch.arange(g * g)], -1)  # (g^2, 3)
    means = torch.cat([plane, disc])[None]
    scales = torch.cat([torch.full((g * g,), 0.2), torch.full((n,), 0.06)])[None]
    colors = torch.cat([torch.tensor([0.0, 0, 1]).expand(g * g, 3), torch.tensor([1.0, 0, 0]).expand(n, 3)])[None]
    return gaussians(means, scales, colors)


def pixel_radius(S: int = S) -> torch.Tensor:
    """(S, S) distance of pixel centres from the image centre."""
    c = torch.arange(S) + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.hypot(xx - S / 2, yy - S / 2)


# ----------------------------------------------------------------------------- order and groups


def test_layer_groups_are_equal_and_nested():
    g = zs.layer_groups(10, 4)
    assert g.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    for N in (16, 37, 512):
        fine, coarse = zs.layer_groups(N, 16), zs.layer_groups(N, 4)
        sizes = torch.bincount(fine)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == N
        for k in range(1, 5):  # the first k coarse groups are the first 4k fine groups
            assert torch.equal(coarse < k, fine < 4 * k)
    with pytest.raises(InputError, match="num_layers"):
        zs.layer_groups(3, 4)


def test_sort_by_depth_uses_camera_z_per_image():
    means = torch.tensor([[[0.0, 0, 2], [0, 0, -1], [0, 0, 0.5], [0, 0, 1]]] * 2)  # (2, 4, 3) world
    means[1, :, 2] = -means[1, :, 2]
    g = gaussians(means, torch.full((2, 4), 0.1), torch.rand(2, 4, 3))
    # Camera at z = -3 looking towards +z: camera z = world z + 3, so every point is in front.
    cam = Cameras(intrinsics_matrix(16, 16, 16, 16)[None], look_at(torch.tensor([[0.0, 0, -3]]), torch.zeros(1, 3), torch.tensor([[0.0, -1, 0]])), S, S)
    order = zs.sort_by_depth(g, cam)
    assert order.tolist() == [[1, 2, 3, 0], [0, 3, 2, 1]]
    layers = zs.gaussian_layers(g, cam, 2)
    assert layers.tolist() == [[1, 0, 0, 1], [0, 1, 1, 0]]
    # Points behind the identity camera (z <= 0) go last.
    assert zs.sort_by_depth(g, ortho_camera())[0].tolist() == [2, 3, 0, 1]


# ----------------------------------------------------------------------------- renders and assignment


def two_blobs() -> Gaussians:
    """Image 0: left blob in front (z 1), right blob behind (z 2); image 1: depths swapped."""
    means = torch.tensor([[[-0.5, 0, 1], [0.5, 0, 2]], [[-0.5, 0, 2], [0.5, 0, 1]]])
    colors = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]]).expand(2, 2, 3)
    return gaussians(means, torch.full((2, 2), 0.15), colors, opacity=0.9)


def test_two_gaussians_at_different_depths_get_different_layers():
    layers = zs.render_layers(two_blobs(), ortho_camera(), 2)
    assert layers.shape == (2, 2, 3, S, S)
    a = zs.layer_assignment(layers, threshold=0.2)  # (2, S, S)
    left, right = (S // 2, S // 4), (S // 2, 3 * S // 4)  # blob centres (row, col)
    assert a[0][left] == 0 and a[0][right] == 1
    assert a[1][left] == 1 and a[1][right] == 0
    assert (a[:, 0, :] == 2).all() and (a[:, :, S // 2] == 2).all()  # top row, centre column: nothing
    # Every pixel of image 0 that the front blob changes is in layer 0, the rest of the blobs in 1.
    front_alone = zs.render_layers(two_blobs(), ortho_camera(), 2, cumulative=False)[0, 0]
    assert torch.equal(a[0] == 0, front_alone.amax(0) > 0.2)


def test_layer_assignment_rule_and_background():
    layers = torch.zeros(1, 3, 1, 1, 4)
    layers[0, :, 0, 0] = torch.tensor([[0.5, 0.0, 0.0, 0.3], [0.5, 0.5, 0.0, 0.3], [0.5, 0.5, 0.05, 0.9]])
    layers[0, :2, 0, 0, 3] = 0.05  # pixel 3 changes by 0.05, 0, 0.85
    assert zs.layer_assignment(layers, 0.1)[0, 0].tolist() == [0, 1, 3, 2]  # 3 = unchanged: no layer
    # On a white background the first layer changes pixels 1, 2 (by 1) and 0, 3 less.
    white = zs.layer_assignment(layers, 0.6, background=torch.ones(1))[0, 0].tolist()
    assert white == [3, 0, 0, 0]
    with pytest.raises(InputError, match="background"):
        zs.layer_assignment(layers, 0.1, background=torch.ones(3))


@pytest.mark.parametrize("backend", ["tiles", "dense"])
def test_last_cumulative_layer_equals_full_render_in_one_call(monkeypatch, backend):
    g = torch.Generator().manual_seed(0)
    B, N, L = 2, 60, 4
    means = torch.rand(B, N, 3, generator=g) * 2 - 1
    means[..., 2] = 1 + 3 * torch.rand(B, N, generator=g)
    gauss = gaussians(means, 0.05 + 0.1 * torch.rand(B, N, generator=g), torch.rand(B, N, 3, generator=g), opacity=0.7)
    bg = torch.tensor([1.0, 1.0, 1.0])
    calls = []
    monkeypatch.setattr(zs, "rasterize", lambda gs, cams, **kw: calls.append(gs.means.shape[0]) or rasterize(gs, cams, **kw))
    layers = zs.render_layers(gauss, ortho_camera(), L, bg, backend=backend)
    assert calls == [B * L]  # one call, the prefixes as batch entries
    full = rasterize(gauss, ortho_camera(), background=bg, backend=backend).color[:, 0]  # (B, 3, H, W)
    torch.testing.assert_close(layers[:, -1], full, atol=1e-6, rtol=0)
    # Each prefix equals rendering only its Gaussians (those of the first k groups).
    group = zs.gaussian_layers(gauss, ortho_camera(), L)
    for k in range(L - 1):
        sub = Gaussians(gauss.means, gauss.quats, gauss.scales, gauss.opacities * (group <= k), gauss.colors)
        torch.testing.assert_close(layers[:, k], rasterize(sub, ortho_camera(), background=bg, backend=backend).color[:, 0], atol=1e-6, rtol=0)
    assert (layers[:, 0] - layers[:, -1]).abs().max() > 0.1  # the prefixes differ


# ----------------------------------------------------------------------------- figure-ground and edges


@pytest.fixture(scope="module")
def disc_layers():
    return zs.render_layers(disc_over_plane(), ortho_camera(), 2)


def test_figure_ground_recovers_front_disc(disc_layers):
    assert (rasterize(disc_over_plane(), ortho_camera()).alpha > 0.99).all()  # the plane covers everything
    r = pixel_radius()
    fg = zs.figure_ground(disc_layers, num_front=1, threshold=0.5)[0]  # the disc: 8 px + ~1 px of blur
    assert fg[r < 7.5].all() and not fg[r > 10].any()
    true = r < 9.0
    assert (fg & true).sum() / (fg | true).sum() > 0.9
    assert torch.equal(fg, zs.figure_ground(zs.layer_assignment(disc_layers, 0.5))[0])
    assert zs.figure_ground(zs.layer_assignment(disc_layers, 0.5), num_front=2).all()  # both layers: all


def test_edges_on_disc_boundary_not_inside(disc_layers):
    a = zs.layer_assignment(disc_layers, 0.5)
    e = zs.edges_from_layers(a, 2)[0]  # (S, S)
    r = pixel_radius()
    on = e > 0
    assert e.max() <= 1 and torch.allclose(e[on], torch.tensor(0.5))  # gap 1 of 2 layers
    assert not on[r < 7].any() and not on[r > 10.5].any()  # nothing inside the disc or on the plane
    assert on.sum() >= 0.8 * 2 * math.pi * 8.5  # a closed contour around the disc
    angles = torch.atan2(*(torch.nonzero(on).float() + 0.5 - S / 2).unbind(-1))
    assert torch.histc(angles, bins=8, min=-math.pi, max=math.pi).min() > 0  # all around
    fg = zs.figure_ground(a)[0]
    bg = torch.nn.functional.pad((~fg).float()[None], (1, 1, 1, 1), mode="replicate")[0]
    touches_bg = (bg[:-2, 1:-1] + bg[2:, 1:-1] + bg[1:-1, :-2] + bg[1:-1, 2:]) > 0
    assert torch.equal(on, fg & touches_bg)  # exactly the disc pixels with a plane 4-neighbour


def test_edges_from_layers_near_side_and_strength():
    a = torch.tensor([[[0, 0, 3, 3], [0, 0, 3, 3], [1, 1, 1, 1]]])  # (1, 3, 4); 4 = "no layer" for L = 4
    e = zs.edges_from_layers(a, 4)[0]
    expected = torch.tensor([[0, 0.75, 0, 0], [0.25, 0.75, 0, 0], [0, 0, 0.5, 0.5]])
    torch.testing.assert_close(e, expected)  # edges on the nearer side, strength = gap / L
    assert torch.equal(zs.edges_from_layers(a, 4, binary=True)[0], (expected > 0).float())
    with pytest.raises(InputError, match="assignment"):
        zs.edges_from_layers(a[0], 4)


def test_hierarchical_edges_average_granularities():
    assert zs.granularities(16) == [16, 8, 4, 2] and zs.granularities(6) == [6, 3] and zs.granularities(5) == [5]
    # Group k of 4 covers the columns >= k of a 1 x 4 strip, painted on black: layer of column j is j.
    layers = torch.zeros(1, 4, 1, 1, 4)
    for k in range(4):
        layers[0, k:, 0, 0, k] = 1.0
    e = zs.hierarchical_edges(layers, 0.5)[0, 0]
    # L=4: layers 0,1,2,3 -> edges at columns 0,1,2. L=2 (prefixes 2 and 4): layers 0,0,1,1 -> column 1.
    torch.testing.assert_close(e, torch.tensor([0.5, 1.0, 0.5, 0.0]))


def test_zero_shot_edges_end_to_end_and_errors():
    e = zs.zero_shot_edges(disc_over_plane(), ortho_camera(), num_layers=2, threshold=0.5)
    assert e.shape == (1, S, S) and 0 <= e.min() and e.max() <= 1
    r = pixel_radius()
    assert (e[0] > 0).any() and not (e[0][(r < 7) | (r > 10.5)] > 0).any()
    h = zs.zero_shot_edges(disc_over_plane(), ortho_camera(), num_layers=4, threshold=0.5, hierarchical=True)
    # L = 4 splits the disc (inner/outer half) and the plane in two: those edges appear only at the fine
    # level (strength 1/2); the disc contour appears at both levels (strength 1).
    assert h.shape == (1, S, S) and set(h.unique().tolist()) <= {0.0, 0.5, 1.0}
    strong = h[0] == 1
    assert strong.sum() >= 0.8 * 2 * math.pi * 8.5 and not strong[(r < 7) | (r > 10.5)].any()
    assert (h[0][r < 7] > 0).any()  # the inner/outer disc split
    cams = Cameras(torch.eye(3).expand(2, 3, 3, 3), torch.eye(4).expand(2, 3, 4, 4), S, S)
    with pytest.raises(InputError, match="one camera per image"):
        zs.render_layers(disc_over_plane(), cams, 2)
    with pytest.raises(InputError, match="num_front"):
        zs.figure_ground(torch.zeros(1, 2, 2, dtype=torch.long), num_front=0)
