"""trilinear_lookup: parity with F.grid_sample (the twin), exactness on linear fields, and gradcheck /
gradgradcheck in float64 w.r.t. points and volume (torch's 3D grid_sample has no double backward)."""

import pytest
import torch
import torch.nn.functional as F

from renderssl.errors import InputError
from renderssl.render.grid import grid_to_world, trilinear_lookup, world_to_grid

SHAPES = [(2, 3, 4, 5, 6), (1, 2, 1, 3, 2), (1, 1, 2, 2, 2)]


def grid_sample_twin(volume, points, padding_mode):
    out = F.grid_sample(volume, points[:, :, None, None, :], mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out[..., 0, 0].transpose(1, 2)  # (B, N, C)


def random_inputs(shape, n=40, spread=1.3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    volume = torch.randn(shape, generator=g, dtype=dtype)
    points = (torch.rand(shape[0], n, 3, generator=g, dtype=dtype) * 2 - 1) * spread  # some outside [-1, 1]
    return volume, points


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_grid_sample_value_and_first_gradients(shape, padding_mode):
    volume, points = random_inputs(shape)
    volume.requires_grad_(True)
    points.requires_grad_(True)
    ours = trilinear_lookup(volume, points, padding_mode)
    twin = grid_sample_twin(volume, points, padding_mode)
    assert ours.shape == (shape[0], points.shape[1], shape[1])
    torch.testing.assert_close(ours, twin, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, (volume, points), upstream)
    g_twin = torch.autograd.grad(twin, (volume, points), upstream)
    for a, b in zip(g_ours, g_twin):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_matches_grid_sample_float32():
    volume, points = random_inputs((1, 16, 8, 9, 10), n=500, dtype=torch.float32)
    torch.testing.assert_close(trilinear_lookup(volume, points), grid_sample_twin(volume, points, "border"), rtol=1e-5, atol=1e-5)


def test_exact_on_linear_field_with_constant_gradient():
    D, H, W = 4, 5, 6
    z, y, x = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in (D, H, W)), indexing="ij")
    a = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)  # d value / d index along x, y, z
    volume = (a[0] * x + a[1] * y + a[2] * z + 0.7)[None, None]  # (1, 1, D, H, W)
    points = (torch.rand(1, 30, 3, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    idx = (points.detach() + 1) / 2 * torch.tensor([W - 1, H - 1, D - 1], dtype=torch.float64)
    out = trilinear_lookup(volume, points)[..., 0]  # (1, 30)
    torch.testing.assert_close(out, idx @ a + 0.7)
    (grad,) = torch.autograd.grad(out.sum(), points)
    expected = a * torch.tensor([W - 1, H - 1, D - 1], dtype=torch.float64) / 2
    torch.testing.assert_close(grad, expected.expand_as(grad))


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_gradcheck_and_gradgradcheck_points_and_volume(padding_mode):
    volume, points = random_inputs((1, 2, 3, 4, 3), n=6, spread=1.15, seed=3)
    volume.requires_grad_(True)
    points.requires_grad_(True)
    fn = lambda v, p: trilinear_lookup(v, p, padding_mode)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (volume, points))
    assert torch.autograd.gradgradcheck(fn, (volume, points))


def eikonal_of_volume(volume, points):
    """Eikonal loss of the SDF channel 0: needs d/d volume of d sdf / d points (double backward)."""
    sdf = trilinear_lookup(volume, points)[..., 0]  # (B, N)
    (grad,) = torch.autograd.grad(sdf.sum(), points, create_graph=True)  # (B, N, 3)
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean()


def test_eikonal_double_backward_into_volume():
    volume, points = random_inputs((1, 3, 5, 5, 5), n=64, spread=0.9, seed=1)
    volume.requires_grad_(True)
    points.requires_grad_(True)
    eikonal_of_volume(volume, points).backward()
    assert volume.grad is not None and torch.isfinite(volume.grad).all()
    assert volume.grad[:, 0].abs().sum() > 0  # the SDF channel receives gradient ...
    assert volume.grad[:, 1:].abs().sum() == 0  # ... the others do not
    # the double-backward gradient itself is right: finite differences on the volume
    small_v, small_p = random_inputs((1, 1, 3, 3, 3), n=5, spread=0.9, seed=2)
    small_p.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: eikonal_of_volume(v, small_p), (small_v.requires_grad_(True),))


def test_second_derivatives_match_native_grid_sample_when_it_has_them():
    """Older torch builds lack grid_sample double backward for the grid (the reason for this module);
    where the installed one has it, it is a second twin for the eikonal gradients."""
    volume, points = random_inputs((1, 2, 4, 5, 3), n=30, spread=1.2, seed=4)
    grads = []
    for lookup in (trilinear_lookup, grid_sample_twin):
        v, p = volume.clone().requires_grad_(True), points.clone().requires_grad_(True)
        sdf = lookup(v, p, "border")[..., 0]
        (g,) = torch.autograd.grad(sdf.sum(), p, create_graph=True)
        loss = ((g.norm(dim=-1) - 1.0) ** 2).mean() + (g * torch.linspace(0, 1, 3, dtype=g.dtype)).sum()
        try:
            grads.append(torch.autograd.grad(loss, (v, p)))
        except RuntimeError:
            pytest.skip("this torch has no grid_sample double backward w.r.t. the grid")
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_world_to_grid_round_trip_and_voxel_centres():
    lo, hi = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([3.0, 1.0, 4.0])
    p = torch.rand(10, 3) * (hi - lo) + lo
    torch.testing.assert_close(grid_to_world(world_to_grid(p, lo, hi), lo, hi), p)
    torch.testing.assert_close(world_to_grid(torch.stack([lo, hi]), lo, hi), torch.tensor([[-1.0] * 3, [1.0] * 3]))
    # voxel (k, j, i) centre in world coordinates reads back exactly that voxel
    volume = torch.randn(1, 2, 3, 4, 5)
    k, j, i = 2, 1, 3
    centre = lo + torch.tensor([i / 4, j / 3, k / 2]) * (hi - lo)
    out = trilinear_lookup(volume, world_to_grid(centre, lo, hi)[None, None])  # (1, 1, 2)
    torch.testing.assert_close(out[0, 0], volume[0, :, k, j, i])


def test_bad_inputs_raise_input_error():
    volume, points = random_inputs((2, 3, 4, 4, 4))
    with pytest.raises(InputError, match="volume"):
        trilinear_lookup(volume[0], points)
    with pytest.raises(InputError, match="points"):
        trilinear_lookup(volume, points[0])
    with pytest.raises(InputError, match="points"):
        trilinear_lookup(volume, points[:1])  # batch mismatch
    with pytest.raises(InputError, match="points"):
        trilinear_lookup(volume, points[..., :2])
    with pytest.raises(InputError, match="padding_mode"):
        trilinear_lookup(volume, points, "reflection")
    with pytest.raises(InputError, match="dtype"):
        trilinear_lookup(volume, points.float())
    bad = points.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        trilinear_lookup(volume, bad)
    with pytest.raises(InputError, match="bbox_max"):
        world_to_grid(points, torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))
