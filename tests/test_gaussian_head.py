"""GS³ Gaussian heads: depth bins round-trip (hand values, both spacings), pixel-aligned Gaussians at the
true depth re-render their own view (PSNR > 35 dB), bin logits get gradient (and match finite
differences in float64), point offsets, masking, SH coefficients, bad input."""

import math

import pytest
import torch

from renderssl.data.synthetic import generate_scene
from renderssl.data.synthetic.config import SyntheticConfig
from renderssl.errors import InputError
from renderssl.geometry import Cameras
from renderssl.geometry.rotations import quat_to_rotmat
from renderssl.models.heads.gaussian_head import (
    C0, DepthBinGaussianHead, GaussianHeadConfig, PixelRays, PointGaussianHead, bins_from_depth, build_gaussian_head,
    color_to_sh0, depth_from_bins, image_elements, num_sh_coeffs, pixel_footprint, sh0_to_color, sh_degree_mask,
)
from renderssl.render.sh import sh_to_color
from renderssl.render.splat import Gaussians, rasterize


def psnr(a, b):
    return -10 * math.log10(float((a - b).square().mean()))


# ---------------------------------------------------------------------------------------------------
# depth bins


@pytest.mark.parametrize("spacing", ["depth", "disparity"])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_depth_bins_round_trip(spacing, dtype, atol):
    g = torch.Generator().manual_seed(0)
    Z, n = 32, 4000
    near = torch.rand(n, generator=g, dtype=dtype) * 0.5 + 0.1  # per-element near/far
    far = near + torch.rand(n, generator=g, dtype=dtype) * 10 + 0.5
    index = torch.randint(0, Z, (n,), generator=g)
    offset = torch.rand(n, generator=g, dtype=dtype)
    offset[:500] = 0.0  # exactly on a bin boundary
    depth = depth_from_bins(index, offset, near, far, Z, spacing)
    assert bool(((depth >= near) & (depth <= far)).all())
    index2, offset2 = bins_from_depth(depth, near, far, Z, spacing)
    assert torch.equal(index2, index)  # the bin is recovered exactly
    torch.testing.assert_close(offset2, offset, atol=atol, rtol=0)
    assert bool((offset2[:500] == 0).all())  # boundaries snap, never (i - 1, 1 - eps)
    # depth -> bins -> depth
    d = near + torch.rand(n, generator=g, dtype=dtype) * (far - near)
    torch.testing.assert_close(depth_from_bins(*bins_from_depth(d, near, far, Z, spacing), near, far, Z, spacing), d,
                               atol=0, rtol=10 * torch.finfo(dtype).eps * Z)
    # the ends: near is (0, 0), far is (Z - 1, 1); outside is clamped
    i, o = bins_from_depth(torch.stack([near[:1], far[:1], near[:1] / 2, far[:1] * 2])[:, 0], near[0], far[0], Z, spacing)
    assert i.tolist() == [0, Z - 1, 0, Z - 1] and o.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_depth_bins_hand_values():
    one = torch.tensor(1, dtype=torch.int64)
    # depth spacing, near 1, far 5, 4 bins of width 1: bin 1 + 0.5 -> 2.5
    assert float(depth_from_bins(one, torch.tensor(0.5, dtype=torch.float64), 1.0, 5.0, 4, "depth")) == pytest.approx(2.5)
    # disparity spacing: r = (2 + 0) / 4 = 0.5 -> 1 / (1/1 - 0.5 (1/1 - 1/5)) = 1 / 0.6
    d = depth_from_bins(torch.tensor(2), torch.tensor(0.0, dtype=torch.float64), 1.0, 5.0, 4, "disparity")
    assert float(d) == pytest.approx(1 / 0.6, rel=1e-14)
    # pixelSplat's form 1 / ((1 - r)(1/n - 1/f) + 1/f) agrees
    assert float(d) == pytest.approx(1 / ((1 - 0.5) * (1 - 0.2) + 0.2), rel=1e-14)


def test_depth_bins_bad_input():
    with pytest.raises(InputError, match="near"):
        depth_from_bins(torch.tensor([0]), torch.tensor([0.5]), 0.0, 5.0, 8, "disparity")
    with pytest.raises(InputError, match="far"):
        bins_from_depth(torch.tensor([1.0]), 2.0, 1.0, 8)
    with pytest.raises(InputError, match="spacing"):
        bins_from_depth(torch.tensor([1.0]), 1.0, 2.0, 8, "log")
    with pytest.raises(InputError, match="num_bins"):
        depth_from_bins(torch.tensor([0]), torch.tensor([0.5]), 1.0, 2.0, 0)


# ---------------------------------------------------------------------------------------------------
# pixel-aligned Gaussians: geometry


def synthetic_view(size=32, seed=0, dtype=torch.float32):
    vs = generate_scene(seed, SyntheticConfig(width=size, height=size, num_views=2))
    cams = Cameras(vs.K[None].to(dtype), vs.c2w[None].to(dtype), size, size)  # (1, 2)
    return vs.rgb.to(dtype), vs.depth.to(dtype), cams


def true_depth_parts(head, rgb, depth, near, far, view=0):
    """Raw parts that put each pixel's single Gaussian at its true depth with its own colour."""
    cfg = head.config
    d = depth[view, 0].reshape(-1)  # (HW,)
    n, Z, S = d.shape[0], cfg.num_bins, num_sh_coeffs(cfg.sh_degree)
    index, offset = bins_from_depth(d, near, far, Z, cfg.bin_spacing)
    logits = torch.zeros(n, Z, dtype=d.dtype)
    logits[torch.arange(n), index] = 40.0  # p_bin = 1 - (Z - 1) e^-40
    offsets = torch.zeros(n, Z, dtype=d.dtype)
    offsets[torch.arange(n), index] = torch.logit(offset.clamp(1e-7, 1 - 1e-7).double()).to(d.dtype)
    sh = torch.zeros(n, 1, S, 3, dtype=d.dtype)
    sh[:, 0, 0] = color_to_sh0(rgb[view].reshape(3, -1).T)
    return {
        "logits": logits, "offsets": offsets, "scale": torch.full((n, 1, 3), -30.0, dtype=d.dtype),
        "rotation": torch.zeros(n, 1, 4, dtype=d.dtype), "alpha": torch.full((n, 1), 30.0, dtype=d.dtype),
        "center": torch.zeros(n, 1, 2, dtype=d.dtype), "sh": sh,
    }


@pytest.mark.parametrize("spacing", ["depth", "disparity"])
def test_pixel_gaussians_at_true_depth_rerender_their_view(spacing):
    rgb, depth, cams = synthetic_view(32)
    H = W = 32
    near, far = 0.5, 8.0
    head = DepthBinGaussianHead(GaussianHeadConfig(gaussians_per_element=1, bin_spacing=spacing, sh_degree=1))
    uv, view, batch, offset = image_elements(cams[:, :1])  # view 0: (HW, 2)
    rays = PixelRays.from_pixels(cams, uv, view, batch, near, far)
    out = head.decode(true_depth_parts(head, rgb, depth, near, far), rays, torch.arange(H * W), batch, 1)
    g = out.gaussians
    assert g.means.shape == (1, H * W, 3) and out.sh.shape == (1, H * W, 4, 3)
    # geometry: each mean projects onto its own pixel centre at the true z-depth
    uv_proj, z = cams[:, :1].project(g.means[:, None])  # (1, 1, HW, 2), (1, 1, HW)
    torch.testing.assert_close(uv_proj[0, 0], uv, atol=1e-3, rtol=0)
    torch.testing.assert_close(z[0, 0], depth[0, 0].reshape(-1), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.depth[0], depth[0, 0].reshape(-1), atol=1e-4, rtol=1e-5)
    # covariance: scale_min_px pixels at that depth, the camera-frame identity rotated to the world
    torch.testing.assert_close(g.scales[0, :, 0], 0.1 * pixel_footprint(cams.K[0, 0], depth[0, 0].reshape(-1)))
    torch.testing.assert_close(quat_to_rotmat(g.quats[0]), cams.c2w[0, 0, :3, :3].expand(H * W, 3, 3), atol=1e-5, rtol=0)
    # rendered back into their own view (tight 2D blur so that pixels do not bleed into neighbours)
    img = rasterize(g, cams[:, :1], backend="dense", eps2d=0.01).color[0, 0]  # (3, H, W)
    assert psnr(img, rgb[0]) > 35.0
    # and with the tiles backend
    img = rasterize(g, cams[:, :1], backend="tiles", eps2d=0.01).color[0, 0]
    assert psnr(img, rgb[0]) > 35.0
    # the SH coefficients through the SH rasterizer (degree-1 terms zero here) give the same image
    img_sh = rasterize(out.sh_gaussians(), cams[:, :1], backend="tiles", eps2d=0.01, sh_degree=out.sh_degree).color[0, 0]
    torch.testing.assert_close(img_sh, img)


def test_pixel_gaussians_wrong_depth_do_not_rerender():
    """The PSNR check has teeth: rays half a pixel off (uv + 0.5) give about 8.5 dB instead of about 48.5.
    (With the rasterizer's default eps2d = 0.3 blur each pixel bleeds into its neighbours: about 29.5 dB
    even at the true geometry, hence eps2d = 0.01 above.)"""
    rgb, depth, cams = synthetic_view(32)
    near, far = 0.5, 8.0
    head = DepthBinGaussianHead(GaussianHeadConfig(gaussians_per_element=1))
    uv, view, batch, _ = image_elements(cams[:, :1])
    rays = PixelRays.from_pixels(cams, uv + 0.5, view, batch, near, far)
    g = head.decode(true_depth_parts(head, rgb, depth, near, far), rays, torch.arange(32 * 32), batch, 1).gaussians
    assert psnr(rasterize(g, cams[:, :1], backend="dense", eps2d=0.01).color[0, 0], rgb[0]) < 30.0


# ---------------------------------------------------------------------------------------------------
# gradients reach the bin logits


@pytest.mark.parametrize("opacity", ["probability_x_alpha", "probability"])
def test_bin_logits_receive_gradient_through_the_render(opacity):
    torch.manual_seed(0)
    rgb, depth, cams = synthetic_view(16)
    cfg = GaussianHeadConfig(in_dim=8, gaussians_per_element=2, num_bins=8, opacity=opacity, hidden_dim=16)
    head = DepthBinGaussianHead(cfg)
    uv, view, batch, offset = image_elements(cams)  # both views of the scene
    rays = PixelRays.from_pixels(cams, uv, view, batch, 0.5, 8.0)
    features = torch.randn(len(uv), 8, requires_grad=True)
    out = head(features, rays, offset)
    out.bin_logits.retain_grad()
    img = rasterize(out.gaussians, cams, backend="tiles").color  # (1, 2, 3, H, W)
    loss = (img - rgb[None]).square().mean()
    loss.backward()
    grad = out.bin_logits.grad  # (n, Z)
    assert grad is not None and bool(torch.isfinite(grad).all())
    chosen = grad.gather(1, out.bin_index)  # (n, k)
    assert float((chosen != 0).float().mean()) > 0.9  # almost every pixel's chosen bins are pushed
    # the logits' rows of the last layer learn
    w = head.net[-1].weight.grad  # (out_dim, hidden)
    assert float(w[: cfg.num_bins].abs().sum()) > 0
    assert float(features.grad.abs().sum()) > 0


def test_bin_logit_gradient_matches_finite_differences():
    """float64 gradcheck of the rendered image as a function of the bin logits (dense backend)."""
    _, depth, cams = synthetic_view(8, dtype=torch.float64)
    cams = cams[:, :1]
    cfg = GaussianHeadConfig(gaussians_per_element=2, num_bins=6, sh_degree=0)
    head = DepthBinGaussianHead(cfg).double()
    uv, view, batch, _ = image_elements(cams)
    rays = PixelRays.from_pixels(cams, uv, view, batch, 0.5, 8.0)
    n = len(uv)
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(n, head.out_dim, generator=g, dtype=torch.float64)
    parts = head.split_raw(raw)
    parts["logits"] = torch.linspace(0.0, 1.5, 6, dtype=torch.float64).repeat(n, 1) + 0.1 * parts["logits"]
    parts["scale"] = parts["scale"] + 2.0  # overlapping footprints

    def render(logits):
        p = dict(parts, logits=logits)
        out = head.decode(p, rays, torch.arange(n), batch, 1)
        return rasterize(out.gaussians, cams, backend="dense").color

    logits = parts["logits"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(render, (logits,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# masking and packing


def test_depth_bin_head_only_kept_pixels_make_gaussians():
    torch.manual_seed(0)
    B, V, H, W = 2, 2, 6, 5
    vs = generate_scene(1, SyntheticConfig(width=W, height=H, num_views=2))
    cams = Cameras(vs.K[None].expand(B, V, 3, 3), vs.c2w[None].expand(B, V, 4, 4), W, H)
    cfg = GaussianHeadConfig(in_dim=4, gaussians_per_element=3, num_bins=8, sh_degree=2)
    head = DepthBinGaussianHead(cfg)
    uv, view, batch, offset = image_elements(cams)
    N = B * V * H * W
    assert uv.shape == (N, 2) and offset.tolist() == [V * H * W, 2 * V * H * W]
    rays = PixelRays.from_pixels(cams, uv, view, batch, torch.tensor([0.5, 1.0]), torch.tensor([8.0, 9.0]))
    keep = torch.zeros(N, dtype=torch.bool)
    keep[torch.randperm(N)[: N // 2]] = True
    keep[: V * H * W] = True  # scene 0 keeps everything, scene 1 only its random share
    features = torch.randn(N, 4)
    out = head(features, rays, offset, keep)
    k = 3
    n0, n1 = int(keep[: V * H * W].sum()), int(keep[V * H * W:].sum())
    assert out.gaussians.means.shape == (B, k * max(n0, n1), 3)
    assert out.sh.shape == (B, k * max(n0, n1), 9, 3)
    assert out.valid.sum(1).tolist() == [k * n0, k * n1]
    assert torch.equal(out.source[out.valid].unique(), keep.nonzero().squeeze(-1))
    assert bool((out.gaussians.opacities[~out.valid] == 0).all())
    # the per-scene near/far are honoured
    d = out.depth
    assert bool(((d[0][out.valid[0]] >= 0.5) & (d[0][out.valid[0]] <= 8.0)).all())
    assert bool(((d[1][out.valid[1]] >= 1.0) & (d[1][out.valid[1]] <= 9.0)).all())
    # twin: the head on the kept pixels alone gives the same Gaussians
    idx = keep[V * H * W:].nonzero().squeeze(-1) + V * H * W
    alone = head(features[idx], rays.select(idx))
    m = k * n1
    for name in ("means", "quats", "scales", "opacities", "colors"):
        torch.testing.assert_close(getattr(out.gaussians, name)[1, :m], getattr(alone.gaussians, name)[0])


def point_cloud(size=12, seed=2):
    vs = generate_scene(seed, SyntheticConfig(width=size, height=size, num_views=2))
    cams = Cameras(vs.K[None], vs.c2w[None], size, size)  # (1, 2)
    pts = cams.backproject_depth(vs.depth[None])  # (1, 2, H, W, 3)
    return vs, cams, pts.reshape(-1, 3)


def zero_offset_head(k=2, **kw):
    head = PointGaussianHead(GaussianHeadConfig(in_dim=6, center="point_offset", gaussians_per_element=k, **kw))
    with torch.no_grad():  # zero offsets: the centre rows of the output layer are zero
        rows = head.net[-1].weight.view(k, head.per_gaussian, -1)
        rows[:, 8:11] = 0.0
        head.net[-1].bias.view(k, head.per_gaussian)[:, 8:11] = 0.0
    return head


def test_point_gaussians_with_zero_offset_project_onto_their_source_pixels():
    vs, cams, pts = point_cloud(12)
    H = W = 12
    N = pts.shape[0]  # 2 views x 144 pixels
    head = zero_offset_head(k=2)
    valid = vs.depth[:, 0].reshape(-1) > 0  # (N,) pixels with depth: the points that exist
    assert 0 < int(valid.sum()) < N
    fp = pixel_footprint(vs.K[:, None, None], vs.depth[:, 0]).reshape(-1)  # (N,), 0 where no depth
    out = head(torch.randn(N, 6), pts, fp, keep=valid)
    n = int(valid.sum())
    assert out.gaussians.means.shape == (1, 2 * n, 3) and bool(out.valid.all())
    uv, z = cams.project(out.gaussians.means[:, None].expand(1, 2, 2 * n, 3))  # (1, 2, 2n, 2)
    src = out.source[0]  # (2n,) point index, k = 2 consecutive slots each
    assert torch.equal(src, valid.nonzero().squeeze(-1).repeat_interleave(2))
    view_of = src // (H * W)
    pix = src % (H * W)
    centres = cams.pixel_centers().reshape(-1, 2)[pix]  # (2n, 2)
    got = uv[0, view_of, torch.arange(2 * n)]  # projection into each point's own view
    torch.testing.assert_close(got, centres, atol=1e-3, rtol=0)
    torch.testing.assert_close(z[0, view_of, torch.arange(2 * n)], vs.depth[:, 0].reshape(-1)[src], atol=1e-4, rtol=1e-5)


def test_point_offsets_are_bounded_and_learned():
    _, _, pts = point_cloud(8)
    N = pts.shape[0]
    cfg = GaussianHeadConfig(in_dim=6, center="point_offset", gaussians_per_element=1, max_offset_px=4.0)
    head = PointGaussianHead(cfg)
    parts = head.split_raw(torch.zeros(N, head.out_dim))
    parts["center"] = torch.full((N, 1, 3), 50.0)  # tanh -> 1
    out = head.decode(parts, pts, torch.full((N,), 0.01), torch.arange(N), torch.zeros(N, dtype=torch.long), 1)
    torch.testing.assert_close(out.gaussians.means[0] - pts, torch.full((N, 3), 0.04))
    # gradient reaches the offset rows through a render
    features = torch.randn(N, 6)
    out = head(features, pts, 0.05)
    out.gaussians.means.sum().backward()
    assert float(head.net[-1].weight.grad.view(1, head.per_gaussian, -1)[:, 8:11].abs().sum()) > 0


def test_point_head_exactly_the_visible_points_make_gaussians():
    torch.manual_seed(0)
    _, cams, pts = point_cloud(10)
    N = pts.shape[0]
    offset = torch.tensor([120, N])  # two clouds of unequal size
    keep = torch.zeros(N, dtype=torch.bool)
    keep[torch.randperm(120)[:60]] = True  # exactly 50% of each cloud
    keep[120 + torch.randperm(N - 120)[: (N - 120) // 2]] = True
    head = PointGaussianHead(GaussianHeadConfig(in_dim=6, center="point_offset", gaussians_per_element=2))
    features = torch.randn(N, 6)
    out = head(features, pts, 0.02, offset, keep)
    k = 2
    n0, n1 = 60, (N - 120) // 2
    assert out.valid.sum(1).tolist() == [k * n0, k * n1]
    assert torch.equal(out.source[out.valid], keep.nonzero().squeeze(-1).repeat_interleave(k))
    assert bool((out.gaussians.opacities[~out.valid] == 0).all())
    # masked points change nothing: any features there give the same Gaussians and the same image
    features2 = features.clone()
    features2[~keep] = torch.randn(int((~keep).sum()), 6) * 10
    out2 = head(features2, pts, 0.02, offset, keep)
    torch.testing.assert_close(out2.gaussians.means, out.gaussians.means)
    cams2 = Cameras(cams.K.expand(2, 2, 3, 3), cams.c2w.expand(2, 2, 4, 4), 10, 10)
    img = rasterize(out.gaussians, cams2, backend="tiles").color
    img2 = rasterize(out2.gaussians, cams2, backend="tiles").color
    torch.testing.assert_close(img, img2)
    # twin: cloud 1's kept points alone
    idx = keep[120:].nonzero().squeeze(-1) + 120
    alone = head(features[idx], pts[idx], 0.02)
    torch.testing.assert_close(out.gaussians.means[1, : k * n1], alone.gaussians.means[0])
    torch.testing.assert_close(out.sh[1, : k * n1], alone.sh[0])


# ---------------------------------------------------------------------------------------------------
# colour coefficients and config


def test_sh_coefficients_and_plain_colour():
    assert [num_sh_coeffs(d) for d in range(5)] == [1, 4, 9, 16, 25]
    assert sh_degree_mask(2).tolist() == pytest.approx([1.0] + [0.025] * 3 + [0.00625] * 5)
    rgb = torch.rand(5, 3)
    torch.testing.assert_close(sh0_to_color(color_to_sh0(rgb)[:, None]), rgb)
    assert C0 == pytest.approx(0.5 / math.sqrt(math.pi))
    # the degree-0 helper is render/sh.py's colour at degree 0 from any direction (clamp at 0 included)
    coeffs = torch.randn(1, 7, 4, 3) * 3  # (B, N, K, 3)
    dirs = torch.randn(1, 2, 7, 3)  # (B, V, N, 3)
    torch.testing.assert_close(sh0_to_color(coeffs)[:, None].expand(1, 2, 7, 3), sh_to_color(coeffs, dirs, 0))
    # a zero output is mid-grey, and Gaussians.colors is the degree-0 colour
    head = PointGaussianHead(GaussianHeadConfig(in_dim=3, center="point_offset", gaussians_per_element=1, sh_degree=3))
    torch.nn.init.zeros_(head.net[-1].weight)
    torch.nn.init.zeros_(head.net[-1].bias)
    out = head(torch.randn(4, 3), torch.randn(4, 3), 0.1)
    assert out.sh.shape == (1, 4, 16, 3)
    torch.testing.assert_close(out.gaussians.colors, torch.full((1, 4, 3), 0.5))
    torch.testing.assert_close(out.gaussians.opacities, torch.full((1, 4), 0.5))
    torch.testing.assert_close(out.gaussians.quats, torch.tensor([1.0, 0, 0, 0]).expand(1, 4, 4))
    torch.testing.assert_close(out.gaussians.scales, torch.full((1, 4, 3), 0.1 * (0.1 + 2.9 * 0.5)))


def test_config_and_input_errors_name_the_argument():
    for kw, name in [({"center": "grid"}, "center"), ({"bin_spacing": "log"}, "bin_spacing"),
                     ({"opacity": "alpha"}, "opacity"), ({"num_bins": 0}, "num_bins"), ({"sh_degree": 4}, "sh_degree"),
                     ({"gaussians_per_element": 9, "num_bins": 8}, "gaussians_per_element"),
                     ({"scale_min_px": 2.0, "scale_max_px": 1.0}, "scale_min_px")]:
        with pytest.raises(InputError, match=f"GaussianHeadConfig.{name}"):
            GaussianHeadConfig(**kw)
    assert isinstance(build_gaussian_head(GaussianHeadConfig(center="point_offset")), PointGaussianHead)
    assert isinstance(build_gaussian_head(GaussianHeadConfig()), DepthBinGaussianHead)
    with pytest.raises(InputError, match="center"):
        PointGaussianHead(GaussianHeadConfig())
    head = PointGaussianHead(GaussianHeadConfig(in_dim=4, center="point_offset"))
    with pytest.raises(InputError, match="features"):
        head(torch.randn(5, 3), torch.randn(5, 3), 0.1)
    with pytest.raises(InputError, match="keep"):
        head(torch.randn(5, 4), torch.randn(5, 3), 0.1, keep=torch.ones(5))
    with pytest.raises(InputError, match="footprint"):
        head(torch.randn(5, 4), torch.randn(5, 3), -1.0)
    with pytest.raises(InputError, match="offset"):
        head(torch.randn(5, 4), torch.randn(5, 3), 0.1, offset=torch.tensor([2, 4]))
    _, _, cams = synthetic_view(8)
    uv, view, batch, _ = image_elements(cams)
    with pytest.raises(InputError, match="model"):
        PixelRays.from_pixels(Cameras(cams.K, cams.c2w, 8, 8, "ortho"), uv, view, batch, 0.5, 8.0)
    with pytest.raises(InputError, match="far"):
        PixelRays.from_pixels(cams, uv, view, batch, 5.0, 1.0)
    dhead = DepthBinGaussianHead(GaussianHeadConfig(in_dim=4))
    rays = PixelRays.from_pixels(cams, uv, view, batch, 0.5, 8.0)
    with pytest.raises(InputError, match="rays"):
        dhead(torch.randn(3, 4), rays)
    # Gaussians from the head are valid renderer input
    out = dhead(torch.randn(len(uv), 4), rays)
    assert isinstance(out.gaussians, Gaussians)
    out.gaussians.validate()
