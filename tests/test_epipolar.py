"""Epipolar sampling and the epipolar cross-view transformer, against hand-computed geometry
(fundamental matrix, projections) and a brute-force per-pixel twin of the transformer."""

import math

import pytest
import torch

from renderssl.errors import InputError
from renderssl.geometry import axis_angle_to_rotmat
from renderssl.models.heads.epipolar import (
    EpipolarTransformer, EpipolarTransformerConfig, epipolar_samples,
)

D = torch.float64


def K_of(f, cx, cy):
    return torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1.0]], dtype=D)


def pose(axis_angle, centre):
    c2w = torch.eye(4, dtype=D)
    c2w[:3, :3] = axis_angle_to_rotmat(torch.tensor(axis_angle, dtype=D))
    c2w[:3, 3] = torch.tensor(centre, dtype=D)
    return c2w


def two_camera_batch():
    """Two scenes of two overlapping cameras (b rotated and translated against a)."""
    K_a = torch.stack([K_of(20.0, 8.0, 6.0), K_of(18.0, 7.5, 6.5)])
    K_b = torch.stack([K_of(22.0, 8.2, 5.9), K_of(19.0, 8.0, 6.0)])
    c2w_a = torch.stack([pose([0.0, 0.0, 0.0], [0, 0, 0]), pose([0.05, -0.1, 0.02], [0.2, -0.1, 0.3])])
    c2w_b = torch.stack([pose([0.02, -0.2, 0.05], [0.6, 0.1, 0.05]), pose([-0.1, 0.15, -0.03], [-0.4, 0.2, 0.1])])
    return K_a, c2w_a, K_b, c2w_b


def skew(t):
    x, y, z = t.tolist()
    return torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=D)


def fundamental(K_a, c2w_a, K_b, c2w_b):
    """F with x_b^T F x_a = 0, from the relative pose X_b = R X_a + t (by hand)."""
    T = torch.linalg.inv(c2w_b) @ c2w_a  # a-camera -> b-camera
    R, t = T[:3, :3], T[:3, 3]
    return torch.linalg.inv(K_b).T @ skew(t) @ R @ torch.linalg.inv(K_a)


def project_by_hand(K, c2w, X):
    """World points (N, 3) -> pixels (N, 2), z-depth (N,)."""
    R, c = c2w[:3, :3], c2w[:3, 3]
    cam = (X - c) @ R  # R^T (X - c)
    uv = cam[:, :2] / cam[:, 2:] * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    return uv, cam[:, 2]


def pixel_ray_point(K, c2w, i, j, z):
    x_cam = torch.tensor([(j + 0.5 - K[0, 2]) / K[0, 0], (i + 0.5 - K[1, 2]) / K[1, 1], 1.0], dtype=D) * z
    return c2w[:3, :3] @ x_cam + c2w[:3, 3]


def test_samples_lie_on_the_epipolar_line():
    K_a, c2w_a, K_b, c2w_b = two_camera_batch()
    H, W, S = 12, 16, 9
    s = epipolar_samples(K_a, c2w_a, K_b, c2w_b, H, W, 0.5, 6.0, S)
    assert s.xy.shape == (2, H * W, S, 2) and s.depth.shape == (2, H * W, S) and s.valid.shape == (2, H * W, S)
    j, i = torch.meshgrid(torch.arange(W, dtype=D) + 0.5, torch.arange(H, dtype=D) + 0.5, indexing="xy")
    x_a = torch.stack([j.reshape(-1), i.reshape(-1), torch.ones(H * W, dtype=D)], -1)  # (HW, 3) row-major
    for b in range(2):
        lines = x_a @ fundamental(K_a[b], c2w_a[b], K_b[b], c2w_b[b]).T  # (HW, 3): l = F x_a
        x_b = torch.cat([s.xy[b], torch.ones(H * W, S, 1, dtype=D)], -1)  # (HW, S, 3)
        dist = (x_b * lines[:, None]).sum(-1).abs() / lines[:, None, :2].norm(dim=-1)  # (HW, S)
        assert s.valid[b].sum() > 0.1 * H * W * S  # the views overlap
        assert dist[s.valid[b]].max() < 1e-3
        # the samples run from near to far, uniform in inverse depth
        torch.testing.assert_close(1 / s.depth[b, 0], torch.linspace(1 / 0.5, 1 / 6.0, S, dtype=D))


@pytest.mark.parametrize("spacing", ["inverse_depth", "depth"])
def test_sample_at_true_depth_lands_on_the_projection(spacing):
    K_a, c2w_a, K_b, c2w_b = two_camera_batch()
    H, W, S, k = 12, 16, 8, 5
    i, j, z = 5, 9, 2.3
    # near/far chosen so that sample k sits at depth z exactly
    near = 0.8
    if spacing == "depth":
        far = near + (z - near) * (S - 1) / k
    else:
        far = 1 / (1 / near + (1 / z - 1 / near) * (S - 1) / k)
    s = epipolar_samples(K_a, c2w_a, K_b, c2w_b, H, W, near, far, S, spacing=spacing)
    for b in range(2):
        X = pixel_ray_point(K_a[b], c2w_a[b], i, j, z)
        uv, zb = project_by_hand(K_b[b], c2w_b[b], X[None])
        assert zb.item() > 0 and 0 <= uv[0, 0] <= W and 0 <= uv[0, 1] <= H
        torch.testing.assert_close(s.depth[b, i * W + j, k], torch.tensor(z, dtype=D))
        assert (s.xy[b, i * W + j, k] - uv[0]).abs().max() < 1e-9
        assert s.valid[b, i * W + j, k]


def test_invalid_samples_behind_or_outside_are_masked():
    # b stands 2 units in front of a on its axis, turned 60 degrees: samples before it are behind it,
    # and many fall outside its image.
    K = K_of(10.0, 5.0, 5.0)[None]
    c2w_a = pose([0, 0, 0], [0, 0, 0])[None]
    c2w_b = pose([0, math.pi / 3, 0], [0.3, 0.0, 2.0])[None]
    H = W = 10
    S = 24
    s = epipolar_samples(K, c2w_a, K, c2w_b, H, W, 0.5, 10.0, S)
    # brute force: every sample projected by hand
    valid = torch.zeros(H * W, S, dtype=torch.bool)
    behind = outside = 0
    for p in range(H * W):
        i, j = divmod(p, W)
        X = torch.stack([pixel_ray_point(K[0], c2w_a[0], i, j, t) for t in s.depth[0, p].tolist()])
        uv, zb = project_by_hand(K[0], c2w_b[0], X)
        front = zb > 1e-6
        inside = (uv[:, 0] >= 0) & (uv[:, 0] <= W) & (uv[:, 1] >= 0) & (uv[:, 1] <= H)
        valid[p] = front & inside
        behind += int((~front).sum())
        outside += int((front & ~inside).sum())
    assert behind > 0 and outside > 0 and valid.sum() > 0
    assert torch.equal(s.valid[0], valid)
    assert torch.isfinite(s.xy).all()


def test_epipolar_samples_reject_bad_input():
    K_a, c2w_a, K_b, c2w_b = two_camera_batch()
    with pytest.raises(InputError, match="near"):
        epipolar_samples(K_a, c2w_a, K_b, c2w_b, 4, 4, 2.0, 1.0, 8)
    with pytest.raises(InputError, match="c2w_b"):
        epipolar_samples(K_a, c2w_a, K_b, c2w_b[:1], 4, 4, 0.5, 1.0, 8)
    with pytest.raises(InputError, match="spacing"):
        epipolar_samples(K_a, c2w_a, K_b, c2w_b, 4, 4, 0.5, 1.0, 8, spacing="image")
    with pytest.raises(InputError, match="num_samples"):
        EpipolarTransformerConfig(num_samples=1)


# ---- transformer ---------------------------------------------------------------------------------

def small_setup(seed=0):
    torch.manual_seed(seed)
    cfg = EpipolarTransformerConfig(dim=8, layers=2, heads=2, dim_head=4, mlp_dim=12, num_samples=6, num_octaves=3)
    model = EpipolarTransformer(cfg).double()
    for p in model.parameters():  # non-trivial LayerNorms and biases too
        p.data.add_(0.1 * torch.randn_like(p))
    K_a, c2w_a, K_b, c2w_b = two_camera_batch()
    h, w = 6, 8
    K = torch.stack([K_a, K_b], 1).clone()  # (2, 2, 3, 3), image 12x16 -> feature grid 6x8
    K[..., :2, :] *= 0.5
    c2w = torch.stack([c2w_a, c2w_b], 1)  # (2, 2, 4, 4)
    feats = torch.randn(2, 2, cfg.dim, h, w, dtype=D)
    near, far = torch.tensor([0.5, 0.7], dtype=D), torch.tensor([6.0, 4.0], dtype=D)
    return model, feats, K, c2w, near, far


def bilinear_by_hand(fmap, u, v):
    """fmap (C, h, w) at pixel (u, v), pixel centres at j + 0.5, zero outside."""
    C, h, w = fmap.shape
    x, y = u - 0.5, v - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(C, dtype=fmap.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= xx < w and 0 <= yy < h:
                out = out + wx * wy * fmap[:, yy, xx]
    return out


def layer_norm(x, ln):
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + ln.eps) * ln.weight + ln.bias


def transformer_pixel_by_hand(model, feats, K, c2w, near, far, b, v, i, j):
    """The refined feature of pixel (i, j) of view v in scene b, one sample and one head at a time."""
    cfg = model.cfg
    o = 1 - v
    n, f = near[b].item(), far[b].item()
    keys, valid = [], []
    for s in range(cfg.num_samples):
        t = 1 / (1 / n + s / (cfg.num_samples - 1) * (1 / f - 1 / n))
        X = pixel_ray_point(K[b, v], c2w[b, v], i, j, t)
        uv, zb = project_by_hand(K[b, o], c2w[b, o], X[None])
        u, vv = uv[0].tolist()
        h, w = feats.shape[-2:]
        ok = zb.item() > 1e-6 and 0 <= u <= w and 0 <= vv <= h
        r = (1 / n - 1 / t) / (1 / n - 1 / f)
        pe = torch.tensor([math.sin(2 * math.pi * 2 ** k * r) for k in range(cfg.num_octaves)]
                          + [math.cos(2 * math.pi * 2 ** k * r) for k in range(cfg.num_octaves)], dtype=D)
        kv = bilinear_by_hand(feats[b, o], u, vv) + model.depth_embed.weight @ pe + model.depth_embed.bias
        keys.append(kv)
        valid.append(ok)
    x = feats[b, v, :, i, j]
    for blk in model.blocks:
        att = blk.attn
        q = att.to_q.weight @ layer_norm(x, blk.norm_q)
        heads_out = []
        for hd in range(cfg.heads):
            sl = slice(hd * cfg.dim_head, (hd + 1) * cfg.dim_head)
            scores, values = [], []
            for kv, ok in zip(keys, valid):
                if not ok:
                    continue
                kvn = layer_norm(kv, blk.norm_kv)
                kk = (att.to_kv.weight[: cfg.heads * cfg.dim_head] @ kvn)[sl]
                vv_ = (att.to_kv.weight[cfg.heads * cfg.dim_head:] @ kvn)[sl]
                scores.append((q[sl] @ kk) / math.sqrt(cfg.dim_head))
                values.append(vv_)
            if scores:
                wts = torch.softmax(torch.stack(scores), 0)
                heads_out.append(sum(wt * val for wt, val in zip(wts, values)))
            else:
                heads_out.append(torch.zeros(cfg.dim_head, dtype=D))
        x = x + att.proj.weight @ torch.cat(heads_out) + att.proj.bias
        y = layer_norm(x, blk.norm_mlp)
        y = blk.mlp.fc1.weight @ y + blk.mlp.fc1.bias
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))  # exact GELU
        x = x + blk.mlp.fc2.weight @ y + blk.mlp.fc2.bias
    return x, sum(valid)


def test_transformer_matches_brute_force_per_pixel():
    model, feats, K, c2w, near, far = small_setup()
    out = model(feats, K, c2w, near, far)
    assert out.shape == feats.shape
    counts = []
    for b, v, i, j in [(0, 0, 2, 3), (0, 1, 4, 6), (1, 0, 0, 0), (1, 1, 5, 7), (1, 0, 3, 4)]:
        want, n_valid = transformer_pixel_by_hand(model, feats, K, c2w, near, far, b, v, i, j)
        counts.append(n_valid)
        torch.testing.assert_close(out[b, v, :, i, j], want, rtol=1e-10, atol=1e-10)
    assert any(0 < c < model.cfg.num_samples for c in counts)  # partially masked pixels were exercised


def test_pixel_without_valid_samples_is_finite_and_only_mlp_refined():
    model, feats, K, c2w, near, far = small_setup()
    c2w = c2w.clone()
    c2w[:, 1, :3, 3] += torch.tensor([0.0, 0.0, -100.0], dtype=D)  # view 1 far behind view 0, looking away
    c2w[:, 1, :3, :3] = c2w[:, 1, :3, :3] @ axis_angle_to_rotmat(torch.tensor([0, math.pi, 0], dtype=D))
    out = model(feats, K, c2w, near, far)
    _, valid = model.keys(feats, K, c2w, near, far)
    assert not valid.any() and torch.isfinite(out).all()
    x = feats[0, 0, :, 1, 1]
    for blk in model.blocks:  # attention output is zero: x + proj.bias, then the MLP
        x = x + blk.attn.proj.bias
        x = x + blk.mlp(blk.norm_mlp(x))
    torch.testing.assert_close(out[0, 0, :, 1, 1], x)


def test_gradients_reach_the_other_views_features():
    model, feats, K, c2w, near, far = small_setup()
    feats = feats.clone().requires_grad_(True)
    out = model(feats, K, c2w, near, far)
    out[:, 0].pow(2).sum().backward()  # a loss on view 0's output only
    assert feats.grad[:, 1].abs().sum() > 0  # reached view 1 through the epipolar samples
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_gradcheck_float64():
    torch.manual_seed(1)
    cfg = EpipolarTransformerConfig(dim=4, layers=1, heads=2, dim_head=2, mlp_dim=6, num_samples=4, num_octaves=2)
    model = EpipolarTransformer(cfg).double()
    K_a, c2w_a, K_b, c2w_b = two_camera_batch()
    K = torch.stack([K_a, K_b], 1)[:1].clone()
    K[..., :2, :] *= 0.25  # 3 x 4 feature grid
    c2w = torch.stack([c2w_a, c2w_b], 1)[:1]
    feats = torch.randn(1, 2, 4, 3, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: model(f, K, c2w, 0.5, 6.0), (feats,))


def test_transformer_rejects_bad_shapes():
    model, feats, K, c2w, near, far = small_setup()
    with pytest.raises(InputError, match="features"):
        model(feats[:, :1], K, c2w, near, far)
    with pytest.raises(InputError, match="c2w"):
        model(feats, K, c2w[:1], near, far)
    with pytest.raises(InputError, match="far"):
        model(feats, K, c2w, near, torch.ones(3, dtype=D))
