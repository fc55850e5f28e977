"""The NPS/GNT projector: a point back-projected from a pixel centre of view v reads exactly that pixel in
view v and, in the other views, the value of a hand-written bilinear twin at the projection of
``Cameras.project``; out-of-frame and behind-camera samples are masked; the relative-direction feature
is (0, 0, 0, 1) for identical directions and matches a case worked out by hand; features sampled at 1/4
resolution equal the analytic value of a linear map (and the image-resolution sampling of its
up-sampled twin); gradients reach the source images and feature maps (float64 gradcheck)."""

import math

import pytest
import torch

from renderssl.errors import InputError
from renderssl.geometry.cameras import Cameras, intrinsics_matrix
from renderssl.geometry.rotations import look_at
from renderssl.models.nerf import ProjectedSamples, project_samples, relative_directions, sample_points_on_rays

B, V, H, W, C = 2, 3, 12, 16, 5
h, w = H // 4, W // 4
F64 = torch.float64


def scene(seed=0):
    """B scenes of V cameras on a ring around the origin looking near it; random images and features."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(B, V, generator=g, dtype=F64) * 2 * math.pi
    radius = 3.0 + torch.rand(B, V, generator=g, dtype=F64)
    eye = torch.stack([radius * angles.cos(), radius * angles.sin(), 0.3 + 0.5 * torch.rand(B, V, generator=g, dtype=F64)], -1)
    target = 0.2 * torch.randn(B, V, 3, generator=g, dtype=F64)
    c2w = look_at(eye, target)  # (B, V, 4, 4)
    fx = 11.0 + 4 * torch.rand(B, V, generator=g, dtype=F64)
    K = intrinsics_matrix(fx, fx * 1.05, W / 2 + 0.3, H / 2 - 0.2, dtype=F64)  # (B, V, 3, 3)
    rgb = torch.rand(B, V, 3, H, W, generator=g, dtype=F64)
    feats = torch.randn(B, V, C, h, w, generator=g, dtype=F64)
    return Cameras(K, c2w, W, H), rgb, feats


def bilinear_twin(image, u, v):
    """image (C, h, w) at one continuous pixel position (u, v), pixel centres at +0.5, border clamp,
    the slow obvious way."""
    _, hh, ww = image.shape
    x = min(max(u - 0.5, 0.0), ww - 1.0)
    y = min(max(v - 0.5, 0.0), hh - 1.0)
    x0, y0 = min(int(math.floor(x)), ww - 2), min(int(math.floor(y)), hh - 2)
    fx, fy = x - x0, y - y0
    out = torch.zeros(image.shape[0], dtype=image.dtype)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            out += wy * wx * image[:, y0 + dy, x0 + dx]
    return out


def test_pixel_centre_points_read_their_pixel_and_bilinear_elsewhere():
    cams, rgb, feats = scene()
    g = torch.Generator().manual_seed(1)
    N = 7  # points per view: ray r of scene b holds N points back-projected from view r
    ij = torch.stack([torch.randint(0, H, (B, V, N), generator=g), torch.randint(0, W, (B, V, N), generator=g)], -1)
    uv = ij.flip(-1).to(F64) + 0.5  # (B, V, N, 2) pixel centres (u, v)
    depth = 2.0 + 2.0 * torch.rand(B, V, N, generator=g, dtype=F64)
    origins, dirs = cams.rays_at(uv, normalize=False)  # unit-z directions: t = z-depth
    points = origins + depth[..., None] * dirs  # (B, V, N, 3) = (B, R, S, 3) with R = V
    out = project_samples(points, rgb, feats, cams.K, cams.c2w, cams.centers)  # target origin: the view itself
    assert isinstance(out, ProjectedSamples)
    assert out.rgb.shape == (B, V, N, V, 3) and out.features.shape == (B, V, N, V, C)
    assert out.mask.shape == (B, V, N, V) and out.mask.dtype == torch.bool and out.ray_diff.shape == (B, V, N, V, 4)

    pix, z = cams.project(points.reshape(B, 1, V * N, 3).expand(B, V, V * N, 3))  # (B, V, VN, 2): into every view
    pix, z = pix.reshape(B, V, V, N, 2), z.reshape(B, V, V, N)  # [b, view, ray, sample]
    checked = 0
    for b in range(B):
        for r in range(V):
            for s in range(N):
                i, j = ij[b, r, s].tolist()
                assert out.mask[b, r, s, r]
                torch.testing.assert_close(out.rgb[b, r, s, r], rgb[b, r, :, i, j], rtol=0, atol=1e-12)  # exact
                for v in range(V):
                    u_, v_ = pix[b, v, r, s].tolist()
                    visible = z[b, v, r, s] > 0 and 0 <= u_ <= W and 0 <= v_ <= H
                    assert bool(out.mask[b, r, s, v]) == visible
                    if visible:
                        torch.testing.assert_close(out.rgb[b, r, s, v], bilinear_twin(rgb[b, v], u_, v_), rtol=0, atol=1e-10)
                        torch.testing.assert_close(
                            out.features[b, r, s, v], bilinear_twin(feats[b, v], u_ * w / W, v_ * h / H), rtol=0, atol=1e-10
                        )
                        checked += v != r
    assert checked >= 10  # enough cross-view samples were compared


def test_out_of_frame_and_behind_camera_are_masked():
    cams, rgb, feats = scene()
    cam = cams[0, 0]
    uv = torch.tensor([[-3.0, 5.5], [W + 0.25, 5.5], [4.5, -0.5], [6.5, H + 2.0],  # out of frame
                       [W - 0.25, 5.5], [0.25, H - 0.25], [3.5, 2.5]], dtype=F64)  # inside (outer half of border pixels)
    o, d = cam.rays_at(uv, normalize=False)
    front_points = o + 2.5 * d  # (7, 3), z = 2.5
    # behind the camera: camera coordinates with z < 0 whose perspective division lands inside the image
    behind_cam = torch.tensor([[-0.1, 0.1, -2.0], [0.0, 0.0, -0.5]], dtype=F64)
    behind = behind_cam @ cam.c2w[:3, :3].T + cam.c2w[:3, 3]  # (2, 3) world
    assert bool(((cam.project(behind[None])[0] >= 0) & (cam.project(behind[None])[0] <= W)).all())
    points = torch.cat([front_points, behind])[None, None].expand(B, 1, 9, 3)  # (B, 1, 9, 3)
    for padding in ("border", "zeros"):
        out = project_samples(points, rgb, feats, cams.K, cams.c2w, cams.centers[:, 0], padding_mode=padding)
        assert out.mask[0, 0, :, 0].tolist() == [False] * 4 + [True] * 3 + [False] * 2
        assert bool(torch.isfinite(out.rgb).all() and torch.isfinite(out.features).all() and torch.isfinite(out.ray_diff).all())
    # outer half of the last column: border padding reads the border pixel, zero padding blends with 0
    out_b = project_samples(points, rgb, feats, cams.K, cams.c2w, cams.centers[:, 0])
    out_z = project_samples(points, rgb, feats, cams.K, cams.c2w, cams.centers[:, 0], padding_mode="zeros")
    torch.testing.assert_close(out_b.rgb[0, 0, 4, 0], rgb[0, 0, :, 5, W - 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(out_z.rgb[0, 0, 4, 0], 0.75 * rgb[0, 0, :, 5, W - 1], rtol=0, atol=1e-12)


def test_relative_direction_identical_and_by_hand():
    cams, rgb, feats = scene()
    points = 0.5 * torch.randn(B, 4, 6, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    for v in range(V):  # the target origin at source camera v: its feature is (0, 0, 0, 1)
        out = project_samples(points, rgb, feats, cams.K, cams.c2w, cams.centers[:, v])
        expected = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64).expand(B, 4, 6, 4)
        torch.testing.assert_close(out.ray_diff[:, :, :, v], expected, rtol=0, atol=1e-12)
        per_ray = project_samples(points, rgb, feats, cams.K, cams.c2w, cams.centers[:, v, None].expand(B, 4, 3))
        torch.testing.assert_close(per_ray.ray_diff, out.ray_diff, rtol=0, atol=0)
    # by hand: target at (0,0,0), source at (1,0,0), point (0,0,1): a = (0,0,-1), b = (1,0,-1)/sqrt2,
    # a - b = (-1/sqrt2, 0, 1/sqrt2 - 1), |a - b| = sqrt(2 - sqrt2), so unit(a - b) = (-cos 22.5°, 0, -sin 22.5°);
    # a . b = 1/sqrt2
    c = math.cos(math.pi / 8)
    s = math.sin(math.pi / 8)
    got = relative_directions(
        torch.tensor([0.0, 0.0, 1.0], dtype=F64).reshape(1, 1, 1, 3),
        torch.zeros(1, 1, 3, dtype=F64), torch.tensor([1.0, 0.0, 0.0], dtype=F64).reshape(1, 1, 3),
    )
    torch.testing.assert_close(got.reshape(4), torch.tensor([-c, 0.0, -s, 1 / math.sqrt(2)], dtype=F64), rtol=0, atol=1e-12)
    c2w = torch.eye(4, dtype=F64)
    c2w[0, 3] = 1.0  # the same through project_samples (source camera centre (1, 0, 0))
    out = project_samples(torch.tensor([[[[0.0, 0.0, 1.0]]]], dtype=F64), rgb[:1, :1], feats[:1, :1],
                          cams.K[:1, :1], c2w.reshape(1, 1, 4, 4), torch.zeros(1, 3, dtype=F64))
    torch.testing.assert_close(out.ray_diff, got, rtol=0, atol=1e-12)


def test_quarter_resolution_features_of_a_linear_map():
    """A map linear in the pixel-centre coordinates, f(i, j) = a (j + 0.5) + b (i + 0.5) + c, is sampled
    exactly by bilinear interpolation (with border clamping of the coordinates): the 1/4 map read at a
    projected point equals f at the projection through ``Cameras.resized(w, h)``; inside, it equals the
    image-resolution sampling of the same function evaluated on the image's pixel grid."""
    cams, rgb, _ = scene(3)
    g = torch.Generator().manual_seed(4)
    a, b_, c = (torch.randn(C, generator=g, dtype=F64) for _ in range(3))

    def linear_map(hh, ww, scale_u, scale_v):  # (C, hh, ww): f at pixel centres scaled to feature coordinates
        v_, u_ = torch.meshgrid(torch.arange(hh, dtype=F64) + 0.5, torch.arange(ww, dtype=F64) + 0.5, indexing="ij")
        return a[:, None, None] * u_ * scale_u + b_[:, None, None] * v_ * scale_v + c[:, None, None]

    low = linear_map(h, w, 1.0, 1.0).expand(B, V, C, h, w)  # (B, V, C, h, w)
    up = linear_map(H, W, w / W, h / H).expand(B, V, C, H, W)  # the same function on the image grid
    points = 0.6 * torch.randn(B, 10, 8, 3, generator=g, dtype=F64)
    out_low = project_samples(points, rgb, low, cams.K, cams.c2w, cams.centers[:, 0])
    out_up = project_samples(points, rgb, up, cams.K, cams.c2w, cams.centers[:, 0])
    small = cams.resized(w, h)
    uv_f, z = small.project(points.reshape(B, 1, -1, 3).expand(B, V, -1, 3))  # (B, V, RS, 2) feature pixels
    uv_f = uv_f.reshape(B, V, 10, 8, 2).permute(0, 2, 3, 1, 4)  # (B, R, S, V, 2)
    uf, vf = uv_f[..., 0].clamp(0.5, w - 0.5), uv_f[..., 1].clamp(0.5, h - 0.5)
    expected = a * uf[..., None] + b_ * vf[..., None] + c  # (B, R, S, V, C)
    m = out_low.mask
    assert int(m.sum()) >= 50
    torch.testing.assert_close(out_low.features[m], expected[m], rtol=0, atol=1e-10)
    inner = m & (uv_f[..., 0] >= 0.5) & (uv_f[..., 0] <= w - 0.5) & (uv_f[..., 1] >= 0.5) & (uv_f[..., 1] <= h - 0.5)
    assert int(inner.sum()) >= 20
    torch.testing.assert_close(out_up.features[inner], out_low.features[inner], rtol=0, atol=1e-10)


def test_gradients_reach_images_and_features():
    cams, rgb, feats = scene()
    points = 0.5 * torch.randn(B, 2, 3, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    rgb = rgb.clone().requires_grad_(True)
    feats = feats.clone().requires_grad_(True)

    def fn(rgb_, feats_):
        out = project_samples(points, rgb_, feats_, cams.K, cams.c2w, cams.centers[:, 0])
        return out.rgb, out.features

    assert torch.autograd.gradcheck(fn, (rgb, feats), fast_mode=True)
    out = project_samples(points, rgb, feats, cams.K, cams.c2w, cams.centers[:, 0])
    (out.rgb.sum() + out.features.sum()).backward()
    assert float(rgb.grad.abs().sum()) > 0 and float(feats.grad.abs().sum()) > 0


def test_float32_and_sample_points_on_rays():
    cams, rgb, feats = scene()
    cams32 = cams.to(dtype=torch.float32)
    o, d = cams32[:, 0].rays_at(torch.tensor([[4.5, 3.5], [10.5, 7.5]]).expand(B, 2, 2), normalize=False)  # (B, 2, 3)
    t = torch.tensor([1.5, 2.0, 3.0]).expand(B, 2, 3)  # (B, R, S) z-depths
    points = sample_points_on_rays(o, d, t)  # (B, 2, 3, 3)
    torch.testing.assert_close(points[:, 1, 2], o[:, 1] + 3.0 * d[:, 1])
    out = project_samples(points, rgb.float(), feats.float(), cams32.K, cams32.c2w, o)
    torch.testing.assert_close(out.rgb[:, 0, :, 0], rgb.float()[:, 0, :, 3, 4][:, None].expand(B, 3, 3), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.ray_diff[:, :, :, 0], torch.tensor([0.0, 0, 0, 1]).expand(B, 2, 3, 4), rtol=0, atol=1e-6)


def test_bad_inputs_name_the_argument():
    cams, rgb, feats = scene()
    points = torch.zeros(B, 2, 3, 3, dtype=F64)
    args = dict(points=points, src_rgb=rgb, src_features=feats, src_K=cams.K, src_c2w=cams.c2w, target_origin=cams.centers[:, 0])
    for key, bad, msg in [
        ("points", points[..., :2], "points must be"),
        ("src_rgb", rgb[:, :, :2], "src_rgb must be"),
        ("src_rgb", (rgb * 255).to(torch.uint8), "src_rgb must be float"),
        ("src_features", feats[:1], "src_features must be"),
        ("src_K", cams.K[:, :2], "src_K must be"),
        ("src_c2w", cams.c2w[..., :3, :], "src_c2w must be"),
        ("target_origin", torch.zeros(B, 5, 3, dtype=F64), "target_origin must be"),
        ("points", torch.full_like(points, float("nan")), "points: .* non-finite"),
    ]:
        with pytest.raises(InputError, match=msg):
            project_samples(**{**args, key: bad})
    with pytest.raises(InputError, match="padding_mode"):
        project_samples(**args, padding_mode="reflection")
    with pytest.raises(InputError, match="t must be"):
        sample_points_on_rays(torch.zeros(B, 2, 3), torch.zeros(B, 2, 3), torch.zeros(B, 3, 4))
