"""render.volume: samplers, NeRF compositing against a brute-force loop, NeuS against analytic cases."""

import math

import pytest
import torch

from renderssl.errors import InputError
from renderssl.geometry import Cameras, intrinsics_matrix
from renderssl.render.grid import trilinear_lookup, world_to_grid
from renderssl.render.volume import (
    AutogradSDFField,
    NeuSField,
    SingleVariance,
    bin_edges,
    composite_density,
    eikonal_loss,
    merge_samples,
    neus_alpha,
    neus_up_sample,
    neus_weights,
    ray_distance_from_z_depth,
    render_neus,
    render_neus_samples,
    sample_inverse_depth,
    sample_pdf,
    sample_stratified,
    sample_uniform,
    z_depth_from_ray_distance,
)

f64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ray_bounds(R, seed=0):
    g = gen(seed)
    near = torch.rand(R, generator=g, dtype=f64) + 0.1
    far = near + torch.rand(R, generator=g, dtype=f64) * 3 + 0.5
    return near, far


# ---- samplers ------------------------------------------------------------------------------------
def test_uniform_is_bin_midpoints_and_accepts_both_shapes():
    near, far = ray_bounds(5)
    t = sample_uniform(near, far, 7)
    edges = bin_edges(near, far, 7)  # (5, 8)
    assert t.shape == (5, 7)
    torch.testing.assert_close(t, 0.5 * (edges[:, 1:] + edges[:, :-1]))
    torch.testing.assert_close(sample_uniform(near[:, None], far[:, None], 7), t)
    assert (t[:, 1:] > t[:, :-1]).all()


def test_stratified_lies_inside_its_bin_and_is_seeded():
    near, far = ray_bounds(200)
    t = sample_stratified(near, far, 16, gen(1))
    edges = bin_edges(near, far, 16)
    assert ((t >= edges[:, :-1]) & (t <= edges[:, 1:])).all()
    assert (t[:, 1:] >= t[:, :-1]).all()
    torch.testing.assert_close(t, sample_stratified(near, far, 16, gen(1)))
    assert not torch.equal(t, sample_stratified(near, far, 16, gen(2)))
    # the jitter within a bin is uniform: mean position ~ midpoint, spread ~ 1/sqrt(12) of the bin
    u = (t - edges[:, :-1]) / (edges[:, 1:] - edges[:, :-1])
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.std().item() - 12**-0.5) < 0.01


def test_inverse_depth_is_uniform_in_disparity():
    near, far = torch.full((4000,), 0.5, dtype=f64), torch.full((4000,), 20.0, dtype=f64)
    det = sample_inverse_depth(near, far, 8)
    disparity = 1.0 / det[0]
    steps = disparity[1:] - disparity[:-1]
    torch.testing.assert_close(steps, torch.full_like(steps, (1 / 20 - 1 / 0.5) / 8))
    assert (det[:, 1:] > det[:, :-1]).all() and (det > 0.5).all() and (det < 20).all()
    # stratified: one sample per disparity bin; pooled normalised disparity is U(0, 1)
    t = sample_inverse_depth(near, far, 8, stratified=True, generator=gen(3))
    s = (1.0 / t - 1 / 0.5) / (1 / 20 - 1 / 0.5)  # (R, 8) in [0, 1]
    assert ((s >= torch.arange(8) / 8) & (s <= (torch.arange(8) + 1) / 8)).all()
    hist = torch.histc(s.flatten(), bins=20, min=0, max=1) / s.numel()
    assert (hist - 0.05).abs().max() < 0.005
    # ... which is far from uniform in t
    t_hist = torch.histc(((t - 0.5) / 19.5).flatten(), bins=20, min=0, max=1) / t.numel()
    assert t_hist[0] > 0.3


def test_sample_pdf_follows_the_weights():
    bins = torch.tensor([[0.0, 1.0, 1.5, 4.0, 4.2, 6.0]], dtype=f64)
    weights = torch.tensor([[1.0, 0.0, 3.0, 0.5, 1.5]], dtype=f64, requires_grad=True)
    expected = (weights.detach() + 1e-5) / (weights.detach() + 1e-5).sum()
    for kwargs in ({"deterministic": True}, {"deterministic": False, "generator": gen(0)}):
        t = sample_pdf(bins, weights, 20000, **kwargs)
        assert t.shape == (1, 20000) and not t.requires_grad
        assert (t[:, 1:] >= t[:, :-1]).all()
        idx = torch.bucketize(t[0], bins[0, 1:-1], right=True)  # bin of each sample
        frac = torch.bincount(idx, minlength=5).to(f64) / t.shape[1]
        torch.testing.assert_close(frac, expected[0], atol=2e-4, rtol=0)
        # uniform within a bin: the samples in bin 2 ([1.5, 4.0]) average to its centre
        assert abs(t[0][idx == 2].mean().item() - 2.75) < 1e-3


def test_sample_pdf_uniform_weights_give_uniform_samples():
    near, far = ray_bounds(6)
    edges = bin_edges(near, far, 10)
    t = sample_pdf(edges, torch.ones(6, 10, dtype=f64), 50)
    u = (torch.arange(50, dtype=f64) + 0.5) / 50
    torch.testing.assert_close(t, near[:, None] + (far - near)[:, None] * u)
    t = sample_pdf(edges, torch.ones(6, 10, dtype=f64), 5000, deterministic=False, generator=gen(1))
    hist = torch.histc(((t - near[:, None]) / (far - near)[:, None]).flatten(), bins=10, min=0, max=1) / t.numel()
    assert (hist - 0.1).abs().max() < 1e-3  # stratified u: almost exactly uniform


# ---- NeRF compositing ----------------------------------------------------------------------------
def composite_loop(sigmas, t, values, background, last_delta):
    """The twin: NeRF's recurrence written one ray and one sample at a time."""
    R, S = sigmas.shape
    out_w, out_c, out_d, out_a = [], [], [], []
    for r in range(R):
        trans, color, depth, acc, ws = 1.0, 0.0, 0.0, 0.0, []
        for i in range(S):
            delta = t[r, i + 1] - t[r, i] if i + 1 < S else last_delta
            alpha = 1.0 - torch.exp(-sigmas[r, i] * delta)
            w = trans * alpha
            ws.append(w)
            color = color + w * values[r, i]
            depth, acc = depth + w * t[r, i], acc + w
            trans = trans * (1.0 - alpha)
        if background is not None:
            color = color + (1.0 - acc) * background
        out_w.append(torch.stack(ws))
        out_c.append(color)
        out_d.append(depth)
        out_a.append(acc)
    return torch.stack(out_w), torch.stack(out_c), torch.stack(out_d), torch.stack(out_a)


@pytest.mark.parametrize("last_delta", [1e10, 0.3])
@pytest.mark.parametrize("with_background", [False, True])
def test_composite_density_equals_brute_force_loop(last_delta, with_background):
    g = gen(5)
    R, S, C = 6, 9, 4
    sigmas = (torch.rand(R, S, generator=g, dtype=f64) * 3).requires_grad_(True)
    sigmas.data[0] = 0.0  # an empty ray
    t = torch.sort(torch.rand(R, S, generator=g, dtype=f64) * 4 + 1, dim=-1).values
    values = torch.rand(R, S, C, generator=g, dtype=f64, requires_grad=True)
    background = torch.rand(C, generator=g, dtype=f64) if with_background else None
    out = composite_density(sigmas, t, values, background, last_delta)
    twin = composite_loop(sigmas, t, values, background, last_delta)
    for a, b in zip((out.weights, out.features, out.depth, out.accumulation), twin):
        torch.testing.assert_close(a, b)
    assert (out.accumulation <= 1 + 1e-12).all()
    torch.testing.assert_close(out.depth_normalized * out.accumulation, out.depth)
    if with_background:
        torch.testing.assert_close(out.features[0], background)
    upstream = [torch.randn_like(x) for x in twin[1:]]
    loss = sum((u * x).sum() for u, x in zip(upstream, (out.features, out.depth, out.accumulation)))
    loss_twin = sum((u * x).sum() for u, x in zip(upstream, twin[1:]))
    for a, b in zip(torch.autograd.grad(loss, (sigmas, values)), torch.autograd.grad(loss_twin, (sigmas, values))):
        torch.testing.assert_close(a, b)


def test_composite_density_gradcheck_and_direction_norms():
    g = gen(6)
    sigmas = (torch.rand(3, 5, generator=g, dtype=f64) * 2).requires_grad_(True)
    t = torch.sort(torch.rand(3, 5, generator=g, dtype=f64) * 3, dim=-1).values
    values = torch.rand(3, 5, 2, generator=g, dtype=f64, requires_grad=True)
    fn = lambda s, v: composite_density(s, t, v, last_delta=0.5).features  # noqa: E731
    assert torch.autograd.gradcheck(fn, (sigmas, values))
    # |d| = 2 doubles every metric section length: same as t scaled by 2
    norms = torch.full((3,), 2.0, dtype=f64)
    a = composite_density(sigmas, t, values, last_delta=0.5, direction_norms=norms)
    b = composite_density(sigmas, 2 * t, values, last_delta=1.0)
    torch.testing.assert_close(a.weights, b.weights)


def test_composite_density_opaque_sample_analytic():
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    sigmas = torch.tensor([[0.0, 1e4, 0.0, 5.0]])
    values = torch.tensor([[[0.1], [0.7], [0.2], [0.9]]])
    out = composite_density(sigmas, t, values)
    torch.testing.assert_close(out.weights, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(out.depth, torch.tensor([2.0]))
    torch.testing.assert_close(out.features, torch.tensor([[0.7]]))


# ---- NeuS ------------------------------------------------------------------------------------------
def neus_alpha_loop(sdf, grads, dirs, deltas, s, r):
    """The twin: NeuS's alpha and weights, one ray and one sample at a time, from the formulas."""
    R, S = sdf.shape
    alphas, weights = torch.zeros(R, S, dtype=sdf.dtype), torch.zeros(R, S, dtype=sdf.dtype)
    for i in range(R):
        trans = 1.0
        for j in range(S):
            cos = float(dirs[i] @ grads[i, j])
            it = -(max(-cos * 0.5 + 0.5, 0.0) * (1 - r) + max(-cos, 0.0) * r)
            prev = 1 / (1 + math.exp(-s * (float(sdf[i, j]) - it * float(deltas[i, j]) / 2)))
            nxt = 1 / (1 + math.exp(-s * (float(sdf[i, j]) + it * float(deltas[i, j]) / 2)))
            a = min(max((prev - nxt + 1e-5) / (prev + 1e-5), 0.0), 1.0)
            alphas[i, j], weights[i, j] = a, a * trans
            trans *= 1 - a + 1e-7
    return alphas, weights


@pytest.mark.parametrize("cos_anneal_ratio", [0.0, 0.4, 1.0])
def test_neus_alpha_and_weights_equal_loop(cos_anneal_ratio):
    g = gen(7)
    R, S = 4, 12
    sdf = torch.randn(R, S, generator=g, dtype=f64) * 0.3
    grads = torch.randn(R, S, 3, generator=g, dtype=f64)
    dirs = torch.nn.functional.normalize(torch.randn(R, 3, generator=g, dtype=f64), dim=-1)
    deltas = torch.rand(R, S, generator=g, dtype=f64) * 0.2
    alphas = neus_alpha(sdf, grads, dirs, deltas, 20.0, cos_anneal_ratio)
    weights = neus_weights(alphas)
    a_twin, w_twin = neus_alpha_loop(sdf, grads, dirs, deltas, 20.0, cos_anneal_ratio)
    torch.testing.assert_close(alphas, a_twin)
    torch.testing.assert_close(weights, w_twin)
    assert (weights.sum(-1) <= 1 + S * 1e-7).all()


def test_neus_plane_weights_are_the_logistic_increments():
    """Linear SDF f(t) = t0 - t seen head-on (cos = -1): α_i = (Φ(f(z_i)) - Φ(f(z_i+1))) / Φ(f(z_i)), so
    w_i = (Φ(f(z_i)) - Φ(f(z_i+1))) / Φ(f(z_0)) and the weights peak in the section holding t0."""
    s, t0 = 50.0, 1.37
    z = torch.linspace(0.0, 3.0, 61, dtype=f64)[None]  # section starts (1, 61)
    deltas = torch.full_like(z, 0.05)
    mid = z + 0.025
    sdf, grads = t0 - mid, torch.tensor([0.0, 0.0, -1.0], dtype=f64).expand(1, 61, 3)
    dirs = torch.tensor([[0.0, 0.0, 1.0]], dtype=f64)
    w = neus_weights(neus_alpha(sdf, grads, dirs, deltas, s))
    phi = torch.sigmoid(s * (t0 - torch.cat([z, z[:, -1:] + 0.05], dim=-1)))  # at section ends
    expected = (phi[:, :-1] - phi[:, 1:]) / phi[:, :1]
    torch.testing.assert_close(w, expected, atol=61 * 1e-5, rtol=0)  # NeuS's +1e-5 guard: α >= ~1e-5 per section
    assert z[0, w.argmax()] <= t0 < z[0, w.argmax()] + 0.05
    assert abs(((w * mid).sum() / w.sum()).item() - t0) < 1e-3  # unbiased


def sphere_field(radius=0.5, centre=(0.0, 0.0, 0.0)):
    c = torch.tensor(centre, dtype=f64)

    def field(points, dirs):
        rel = points - c
        dist = rel.norm(dim=-1)  # (R, S)
        normal = rel / dist[..., None]  # exact gradient
        return NeuSField(dist - radius, normal, normal * 0.5 + 0.5)

    return field


def sphere_camera(size=12):
    c2w = torch.eye(4, dtype=f64)
    c2w[:3, 3] = torch.tensor([0.1, -0.05, -2.0], dtype=f64)
    return Cameras(intrinsics_matrix(14.0, 14.0, size / 2, size / 2, dtype=f64), c2w, size, size)


def ray_sphere(o, d, radius):
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - radius**2)
    return -b - disc.clamp_min(0).sqrt(), disc > 0  # first hit t (R,), hit mask (R,)


@pytest.mark.parametrize("variance,max_incidence_cos", [(0.5, -0.3), (0.3, -0.8)])  # s = 148 and 20
def test_render_neus_sphere_depth_matches_ray_sphere_intersection(variance, max_incidence_cos):
    """The bias of NeuS's expected depth grows with the blur 1/s and with grazing incidence, so the
    default s = 20 is held to frontal rays and a sharper s = 148 to all but grazing ones."""
    radius, cam = 0.5, sphere_camera()
    o, d = (x.reshape(-1, 3) for x in cam.rays())  # (R, 3) unit directions
    near, far = torch.full((o.shape[0],), 1.0, dtype=f64), torch.full((o.shape[0],), 3.0, dtype=f64)
    out = render_neus(o, d, near, far, sphere_field(radius), variance=SingleVariance(variance).double())
    spacing = 2.0 / 96
    t_hit, hit = ray_sphere(o, d, radius)
    cos = (d * (o + d * t_hit[:, None]) / radius).sum(-1)  # incidence cosine at the hit
    frontal = hit & (cos < max_incidence_cos)
    assert frontal.sum() >= 10
    assert ((out.depth_normalized - t_hit)[frontal].abs() < spacing).all()
    assert (out.accumulation[frontal] > 0.95).all()
    far_miss = ~hit & ((o * d).sum(-1) ** 2 - (o * o).sum(-1) + (radius + 0.15) ** 2 < 0)  # misses by > 0.15
    floor = 132 * 1e-5  # NeuS's +1e-5 guard gives every section α >= ~1e-5
    blur = 2 * torch.sigmoid(torch.tensor(-0.15 * math.exp(10 * variance)))  # logistic tail at 0.15 from the surface
    assert far_miss.sum() >= 10 and (out.accumulation[far_miss] < floor * 1.01 + blur).all()
    # z-depth through the ray direction equals the camera-frame z of the analytic hit point
    axis = cam.c2w[:3, 2]
    z = z_depth_from_ray_distance(out.depth_normalized, d, axis)
    _, z_true = cam.project((o + d * t_hit[:, None])[frontal])
    assert ((z[frontal] - z_true).abs() < spacing).all()
    torch.testing.assert_close(ray_distance_from_z_depth(z, d, axis), out.depth_normalized)
    # NeuS weights never sum above 1 (up to the 1e-7 guard per sample)
    assert (out.weights.sum(-1) <= 1 + out.weights.shape[1] * 1e-7).all()
    assert out.weights.shape == (o.shape[0], 132) and out.features.shape == (o.shape[0], 3)
    assert out.gradients.shape == (o.shape[0], 132, 3) and out.points.shape == (o.shape[0], 132, 3)


def test_up_sampling_concentrates_new_samples_at_the_surface():
    radius, cam = 0.5, sphere_camera(8)
    o, d = (x.reshape(-1, 3) for x in cam.rays())
    t_hit, hit = ray_sphere(o, d, radius)
    near, far = torch.full_like(t_hit, 1.0), torch.full_like(t_hit, 3.0)
    coarse = sample_uniform(near, far, 64)
    field = sphere_field(radius)
    sdf = field(o[:, None] + d[:, None] * coarse[..., None], None).sdf
    new = neus_up_sample(coarse, sdf, 16, 64.0)  # (R, 16)
    assert ((new - t_hit[:, None]).abs()[hit] < 3 * 2.0 / 64).float().mean() > 0.9
    # merging keeps the SDF attached to its t
    z, merged_sdf = merge_samples(coarse, sdf, new, field(o[:, None] + d[:, None] * new[..., None], None).sdf)
    assert (z[:, 1:] >= z[:, :-1]).all()
    torch.testing.assert_close(merged_sdf, field(o[:, None] + d[:, None] * z[..., None], None).sdf)


def test_render_neus_with_grid_field_double_backward_and_sampler_sees_world_points():
    """A trilinear-grid SDF field inside render_neus: gradients reach the volume through the eikonal
    term (double backward) and the variance; the sampler and the renderer read the same world points."""
    lo, hi = torch.full((3,), -1.0, dtype=f64), torch.full((3,), 1.0, dtype=f64)
    axis = torch.linspace(-1, 1, 9, dtype=f64)
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
    sdf_grid = (torch.stack([xx, yy, zz]).norm(dim=0) - 0.5)[None, None]  # (1, 1, 9, 9, 9)
    volume = torch.cat([sdf_grid, torch.rand(1, 3, 9, 9, 9, dtype=f64)], 1).requires_grad_(True)
    seen = []

    def sdf_fn(points):  # world points (..., 3)
        seen.append(points.detach().reshape(-1, 3))
        feats = trilinear_lookup(volume, world_to_grid(points, lo, hi).reshape(1, -1, 3))[0]  # (N, 4)
        feats = feats.reshape(*points.shape[:-1], 4)
        return feats[..., 0], feats[..., 1:]

    field = AutogradSDFField(sdf_fn, lambda p, dirs, grads, geo: torch.sigmoid(geo))
    cam = sphere_camera(6)
    o, d = (x.reshape(-1, 3) for x in cam.rays())
    near, far = torch.full((36,), 1.0, dtype=f64), torch.full((36,), 3.0, dtype=f64)
    variance = SingleVariance().double()
    out = render_neus(o, d, near, far, field, n_samples=32, n_importance=16, up_sample_steps=2,
                      variance=variance, stratified=True, generator=gen(0))
    # the up-sampler (2 calls: coarse + step-0 new samples) and the renderer all saw world points
    assert len(seen) == 3 and all(s.abs().max() <= 3.0 for s in seen)
    assert seen[0].shape[0] == 36 * 32 and seen[1].shape[0] == 36 * 8 and seen[2].shape[0] == 36 * 48
    loss = out.features.mean() + out.depth.mean() + 0.1 * eikonal_loss(out.gradients)
    loss.backward()
    assert torch.isfinite(volume.grad).all() and volume.grad[:, 0].abs().sum() > 0
    assert variance.variance.grad is not None and torch.isfinite(variance.variance.grad)
    # the eikonal term alone reaches the SDF channel only through the double backward
    volume.grad = None
    eikonal_loss(render_neus(o, d, near, far, field, n_samples=32, n_importance=16, variance=variance).gradients).backward()
    assert volume.grad[:, 0].abs().sum() > 0 and volume.grad[:, 1:].abs().sum() == 0
    # eval mode: no graph, same result
    with torch.no_grad():
        ev = render_neus(o, d, near, far, field, n_samples=32, n_importance=16, up_sample_steps=2, variance=variance,
                         stratified=True, generator=gen(0))
    torch.testing.assert_close(ev.depth, out.depth.detach())


def test_render_neus_samples_default_last_section_and_fixed_s():
    cam = sphere_camera(4)
    o, d = (x.reshape(-1, 3) for x in cam.rays())
    z = sample_uniform(torch.full((16,), 1.0, dtype=f64), torch.full((16,), 3.0, dtype=f64), 40)
    out = render_neus_samples(o, d, z, sphere_field(), variance=100.0)
    torch.testing.assert_close(out.deltas, torch.full_like(z, 2.0 / 40))
    torch.testing.assert_close(out.t, z + 1.0 / 40)
    assert out.inv_s.item() == 100.0


def test_single_variance_init():
    v = SingleVariance()
    assert abs(v().item() - math.exp(3.0)) < 1e-4


# ---- bad inputs ------------------------------------------------------------------------------------
def test_bad_inputs_raise_input_error():
    near, far = ray_bounds(4)
    with pytest.raises(InputError, match="far must exceed near"):
        sample_uniform(far, near, 8)
    with pytest.raises(InputError, match="near"):
        sample_uniform(near[:, None, None], far, 8)
    with pytest.raises(InputError, match="n"):
        sample_stratified(near, far, 0)
    with pytest.raises(InputError, match="near must be > 0"):
        sample_inverse_depth(near - 5, far, 8)
    with pytest.raises(InputError, match="non-finite"):
        sample_uniform(near * float("nan"), far, 8)
    with pytest.raises(InputError, match="weights"):
        sample_pdf(bin_edges(near, far, 8), torch.ones(4, 7, dtype=f64), 5)
    with pytest.raises(InputError, match=">= 0"):
        sample_pdf(bin_edges(near, far, 8), -torch.ones(4, 8, dtype=f64), 5)
    t = sample_uniform(near, far, 8)
    with pytest.raises(InputError, match="sigmas must be >= 0"):
        composite_density(-torch.ones(4, 8), t.float(), torch.ones(4, 8, 3))
    with pytest.raises(InputError, match="values"):
        composite_density(torch.ones(4, 8, dtype=f64), t, torch.ones(4, 7, 3, dtype=f64))
    with pytest.raises(InputError, match="sorted"):
        composite_density(torch.ones(4, 8, dtype=f64), t.flip(-1), torch.ones(4, 8, 3, dtype=f64))
    with pytest.raises(InputError, match="background"):
        composite_density(torch.ones(4, 8, dtype=f64), t, torch.ones(4, 8, 3, dtype=f64), torch.ones(2, dtype=f64))
    o, d = torch.zeros(4, 3, dtype=f64), torch.tensor([[0.0, 0.0, 2.0]], dtype=f64).expand(4, 3)
    with pytest.raises(InputError, match="unit vectors"):
        render_neus(o, d, near, far, sphere_field())
    d = d / 2
    with pytest.raises(InputError, match="multiple of up_sample_steps"):
        render_neus(o, d, near, far, sphere_field(), n_importance=10, up_sample_steps=4)
    with pytest.raises(InputError, match="rays"):
        render_neus(o, d, near[:3], far[:3], sphere_field())
    with pytest.raises(InputError, match="cos_anneal_ratio"):
        render_neus(o, d, near, far, sphere_field(), variance=20.0, cos_anneal_ratio=2.0)
    with pytest.raises(InputError, match="field"):
        render_neus(o, d, near, far, lambda p, dirs: p.norm(dim=-1), variance=20.0)
    with pytest.raises(InputError, match="variance"):
        render_neus(o, d, near, far, sphere_field(), variance=-1.0)
    # no silent fresh, untrained variance module per call: the caller passes the trained one (or a fixed s)
    with pytest.raises(InputError, match="variance is required"):
        render_neus(o, d, near, far, sphere_field())
    with pytest.raises(InputError, match="variance is required"):
        render_neus_samples(o, d, sample_uniform(near, far, 8), sphere_field(), None)
