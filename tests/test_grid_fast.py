"""trilinear_lookup (the embedding_bag / grouped-splat fast path) against trilinear_lookup_twin (the former
gather-multiply-sum implementation, every op differentiated by autograd): values, first derivatives and
second derivatives (the eikonal pattern and full Hessian-vector products) to float64 round-off, on grids with
size-1 axes and points outside the volume; gradgradcheck of the fast path; the volume's finiteness check skipped only on request."""

import pytest
import torch

from renderssl.errors import InputError
from renderssl.render.grid import trilinear_lookup, trilinear_lookup_twin

SHAPES = [(2, 3, 4, 5, 6), (1, 2, 1, 3, 2), (3, 4, 2, 2, 2), (2, 5, 3, 1, 4)]


def random_inputs(shape, n=50, spread=1.3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    volume = torch.randn(shape, generator=g, dtype=dtype)
    points = (torch.rand(shape[0], n, 3, generator=g, dtype=dtype) * 2 - 1) * spread  # some outside [-1, 1]
    return volume, points


def second_order(lookup, volume, points, padding_mode):
    """Eikonal-style loss of the lookup (needs d/d volume and d/d points of d out / d points) and its gradients,
    plus the volume gradient of a plain loss on the values."""
    v, p = volume.clone().requires_grad_(True), points.clone().requires_grad_(True)
    out = lookup(v, p, padding_mode)  # (B, N, C)
    c = torch.linspace(0.5, 1.5, out.shape[-1], dtype=out.dtype)
    (gp,) = torch.autograd.grad((out * c).sum(), p, create_graph=True)  # (B, N, 3)
    loss = ((gp.norm(dim=-1) - 1.0) ** 2).mean() + (out ** 2).mean() + (gp * torch.tensor([0.3, -0.2, 0.7], dtype=gp.dtype)).sum()
    gv, gpp = torch.autograd.grad(loss, (v, p))
    return out.detach(), gp.detach(), gv, gpp


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_path_matches_twin_values_first_and_second_derivatives(shape, padding_mode):
    volume, points = random_inputs(shape, seed=sum(shape))
    ours = second_order(trilinear_lookup, volume, points, padding_mode)
    twin = second_order(trilinear_lookup_twin, volume, points, padding_mode)
    assert ours[0].shape == (shape[0], points.shape[1], shape[1]) and ours[0].is_contiguous()
    for a, b in zip(ours, twin):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_fast_path_hessian_vector_products_match_twin(padding_mode):
    """Double backward through every input pair: d/d(v, p) of <d out/d(v, p), u> for random u, ours vs twin."""
    volume, points = random_inputs((2, 3, 3, 4, 3), n=20, spread=1.2, seed=7)
    res = []
    for lookup in (trilinear_lookup, trilinear_lookup_twin):
        v, p = volume.clone().requires_grad_(True), points.clone().requires_grad_(True)
        out = lookup(v, p, padding_mode)
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        gv, gp = torch.autograd.grad(out, (v, p), up, create_graph=True)
        uv = torch.randn(gv.shape, generator=torch.Generator().manual_seed(2), dtype=gv.dtype)
        u_p = torch.randn(gp.shape, generator=torch.Generator().manual_seed(3), dtype=gp.dtype)
        res.append(torch.autograd.grad((gv * uv).sum() + (gp * u_p).sum(), (v, p), allow_unused=True, materialize_grads=True))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_fast_path_gradgradcheck_with_repeated_corners(padding_mode):
    # size-1 axis (both corners on one voxel) and points sharing voxels: the grouped splat sums duplicates
    volume, points = random_inputs((2, 2, 1, 3, 2), n=5, spread=1.15, seed=5)
    points = torch.cat([points, points[:, :2]], dim=1)  # repeated points: same rows twice
    fn = lambda v, p: trilinear_lookup(v, p, padding_mode)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (volume.requires_grad_(True), points.requires_grad_(True)))
    assert torch.autograd.gradgradcheck(fn, (volume, points))


def test_fast_path_float32_matches_twin():
    volume, points = random_inputs((2, 32, 8, 16, 16), n=2000, spread=1.1, dtype=torch.float32)
    torch.testing.assert_close(trilinear_lookup(volume, points, "zeros"), trilinear_lookup_twin(volume, points, "zeros"),
                               rtol=1e-5, atol=1e-5)


def test_volume_finiteness_checked_unless_the_caller_did():
    volume, points = random_inputs((1, 2, 3, 3, 3), n=4)
    volume[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="volume: 1 non-finite"):
        trilinear_lookup(volume, points)
    assert trilinear_lookup(volume, points, check_volume=False).shape == (1, 4, 2)  # the caller's promise


def test_corner_dot_in_many_cpu_chunks_matches_twin(monkeypatch):
    import renderssl.render.grid as grid

    volume, points = random_inputs((2, 3, 4, 3, 5), n=23, seed=11)
    monkeypatch.setattr(grid, "_DOT_CHUNK_BYTES", 3 * 8 * 3 * 8)  # 3 points per chunk, 16 chunks, the last short
    ours = second_order(trilinear_lookup, volume, points, "zeros")
    twin = second_order(trilinear_lookup_twin, volume, points, "zeros")
    for a, b in zip(ours, twin):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_no_points():
    volume, points = random_inputs((2, 3, 2, 2, 2), n=0)
    volume.requires_grad_(True)
    out = trilinear_lookup(volume, points.requires_grad_(True))
    assert out.shape == (2, 0, 3)
    out.sum().backward()
    assert volume.grad is not None and not volume.grad.any()
