"""unit_cube_transforms: box clouds land in [-0.5, 0.5]^3 with z_min = -0.5; a per-scene loop twin;
cameras moved with the points keep every pixel and scale z-depth by scale_of(S)."""

import math

import pytest
import torch

from renderssl.errors import InputError
from renderssl.geometry.cameras import Cameras, intrinsics_matrix
from renderssl.geometry.rotations import axis_angle_to_rotmat
from renderssl.models.volume import apply_to_cameras, apply_to_points, scale_of, unit_cube_transforms


def packed(clouds):
    points = torch.cat(clouds)
    offset = torch.cumsum(torch.tensor([len(c) for c in clouds]), 0)
    batch = torch.repeat_interleave(torch.arange(len(clouds)), torch.tensor([len(c) for c in clouds]))
    return points, offset, batch


def box_cloud(lo, hi, n=200, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(lo, dtype=dtype), torch.tensor(hi, dtype=dtype)
    pts = lo + torch.rand(n, 3, generator=g, dtype=dtype) * (hi - lo)
    corners = torch.stack([lo, hi])  # the box's extreme corners are in the cloud
    return torch.cat([pts, corners])


def test_dyadic_box_maps_exactly():
    points, offset, batch = packed([box_cloud((0.0, 2.0, 1.0), (8.0, 6.0, 3.0))])
    S = unit_cube_transforms(points, offset)
    out = apply_to_points(points, batch, S)
    assert scale_of(S).item() == 1 / 8
    assert out[:, 2].min().item() == -0.5  # exact: dyadic numbers
    assert out[:, 0].min().item() == -0.5 and out[:, 0].max().item() == 0.5
    assert out[:, 1].min().item() == -0.25 and out[:, 1].max().item() == 0.25  # centred, extent 4/8
    assert out[:, 2].max().item() == -0.5 + 2 / 8


def test_box_clouds_in_unit_cube_and_match_per_scene_loop():
    clouds = [box_cloud((-3.0, 1.0, 0.2), (2.0, 2.5, 2.9), seed=1), box_cloud((10.0, -4.0, -1.0), (11.0, -3.5, 3.0), n=50, seed=2)]
    points, offset, batch = packed(clouds)
    S = unit_cube_transforms(points, offset, pad=0.1)
    out = apply_to_points(points, batch, S)
    assert out.abs().max() <= 0.5 + 1e-12
    for b, cloud in enumerate(clouds):  # loop twin of the module docstring's formula
        lo, hi = cloud.min(0).values, cloud.max(0).values
        s = 1 / (1.1 * (hi - lo).max())
        want = s * (cloud - (lo + hi) / 2)
        want[:, 2] = s * (cloud[:, 2] - lo[2]) - 0.5
        torch.testing.assert_close(out[batch == b], want)
        assert out[batch == b][:, 2].min().item() == pytest.approx(-0.5, abs=1e-12)
        span = out[batch == b].amax(0) - out[batch == b].amin(0)
        assert span.max().item() == pytest.approx(1 / 1.1, abs=1e-12)  # the longest axis spans 1 / (1 + pad)


def test_cameras_keep_pixels_and_scale_depth():
    g = torch.Generator().manual_seed(3)
    clouds = [box_cloud((-2.0, -1.0, 0.0), (3.0, 2.0, 2.5), n=30, seed=4), box_cloud((0.0, 0.0, 0.0), (0.5, 0.7, 0.3), n=30, seed=5)]
    points, offset, batch = packed(clouds)
    B, V = 2, 3
    R = axis_angle_to_rotmat(torch.randn(B, V, 3, generator=g, dtype=torch.float64))  # (B, V, 3, 3)
    c2w = torch.eye(4, dtype=torch.float64).repeat(B, V, 1, 1)
    c2w[..., :3, :3] = R
    c2w[..., :3, 3] = torch.randn(B, V, 3, generator=g, dtype=torch.float64) * 3
    K = intrinsics_matrix(50.0, 60.0, 32.0, 24.0, dtype=torch.float64).expand(B, V, 3, 3)
    S = unit_cube_transforms(points, offset)
    new_points = apply_to_points(points, batch, S)
    new_c2w = apply_to_cameras(c2w, S)
    rot = new_c2w[..., :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(B, V, 3, 3))
    for b in range(B):
        before = Cameras(K[b], c2w[b], 64, 48).project(points[batch == b].expand(V, -1, -1))
        after = Cameras(K[b], new_c2w[b], 64, 48).project(new_points[batch == b].expand(V, -1, -1))
        torch.testing.assert_close(after[0], before[0])  # same pixels
        torch.testing.assert_close(after[1], before[1] * scale_of(S)[b])  # depth scales by s


def test_bad_input():
    points, offset, _ = packed([box_cloud((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))])
    with pytest.raises(InputError, match="empty"):
        unit_cube_transforms(points, torch.tensor([len(points), len(points)]))
    with pytest.raises(InputError, match="zero extent"):
        unit_cube_transforms(torch.ones(3, 3), torch.tensor([3]))
    with pytest.raises(InputError, match="points"):
        unit_cube_transforms(points[:, :2], offset)
    with pytest.raises(InputError, match="c2w"):
        apply_to_cameras(torch.eye(4).expand(2, 1, 4, 4), unit_cube_transforms(points.float(), offset))
    assert math.isfinite(scale_of(unit_cube_transforms(points, offset)).item())
