"""lift_image_features (PonderV2 Eq. 10): a painted pixel lands in the voxels whose centres project into
it and nowhere behind the camera; two frames averaged against a hand bilinear twin; gradients."""

import pytest
import torch

from renderssl.errors import InputError
from renderssl.geometry.cameras import Cameras, intrinsics_matrix
from renderssl.geometry.rotations import axis_angle_to_rotmat
from renderssl.models.volume import lift_image_features, voxel_centres

H, W = 6, 8
GRID = (20, 18, 16)  # (X, Y, Z)
BOX = ((-1.0, -0.9, -1.0), (1.0, 0.9, 3.0))  # voxels behind (z < 0) and in front of the camera


def camera_at_origin(dtype=torch.float64):
    K = intrinsics_matrix(4.0, 4.0, W / 2, H / 2, dtype=dtype)  # (3, 3)
    return K.reshape(1, 1, 3, 3), torch.eye(4, dtype=dtype).reshape(1, 1, 4, 4)


def test_painted_pixel_lands_in_its_voxels_and_not_behind():
    K, c2w = camera_at_origin()
    features = torch.zeros(1, 1, 1, H, W, dtype=torch.float64)
    i, j = 2, 5
    features[..., i, j] = 1.0
    centres = voxel_centres(GRID, BOX, dtype=torch.float64)  # (Z, Y, X, 3)
    out = lift_image_features(features, K, c2w, centres)[0, 0]  # (Z, Y, X)
    x, y, z = centres.unbind(-1)
    front = z > 0
    u = torch.where(front, 4.0 * x / z + W / 2, torch.full_like(z, -1e9))  # hand projection
    v = torch.where(front, 4.0 * y / z + H / 2, torch.full_like(z, -1e9))
    in_pixel = front & (u >= j) & (u < j + 1) & (v >= i) & (v < i + 1)
    assert int(in_pixel.sum()) >= 3
    assert bool((out[in_pixel] >= 0.25).all())  # bilinear weight of the pixel inside its own area
    assert bool((out[~front] == 0).all())  # nothing behind the camera
    far = (u - (j + 0.5)).abs().ge(1) | (v - (i + 0.5)).abs().ge(1)
    assert bool((out[far] == 0).all())  # nothing beyond the bilinear footprint
    near = ~far & front  # interior pixel: the hand bilinear weight exactly
    torch.testing.assert_close(out[near], (1 - (u[near] - j - 0.5).abs()) * (1 - (v[near] - i - 0.5).abs()))


def bilinear_twin(image, u, v):
    """image (C, h, w), continuous pixel coords (N,) -> (C, N); pixel centres at +0.5, border clamp."""
    C, h, w = image.shape
    x = (u - 0.5).clamp(0, w - 1)
    y = (v - 0.5).clamp(0, h - 1)
    x0, y0 = x.floor().long().clamp(max=w - 2), y.floor().long().clamp(max=h - 2)
    fx, fy = x - x0, y - y0
    return (image[:, y0, x0] * (1 - fx) * (1 - fy) + image[:, y0, x0 + 1] * fx * (1 - fy)
            + image[:, y0 + 1, x0] * (1 - fx) * fy + image[:, y0 + 1, x0 + 1] * fx * fy)


def test_two_frames_average_by_hand():
    g = torch.Generator().manual_seed(0)
    B, Kf, C = 2, 2, 3
    features = torch.randn(B, Kf, C, H, W, generator=g, dtype=torch.float64)
    K = intrinsics_matrix(5.0, 4.5, W / 2, H / 2, dtype=torch.float64).expand(B, Kf, 3, 3)
    c2w = torch.eye(4, dtype=torch.float64).repeat(B, Kf, 1, 1)
    c2w[..., :3, :3] = axis_angle_to_rotmat(torch.randn(B, Kf, 3, generator=g, dtype=torch.float64) * 0.3)
    c2w[..., :3, 3] = torch.randn(B, Kf, 3, generator=g, dtype=torch.float64) * 0.3 - torch.tensor([0, 0, 1.5], dtype=torch.float64)
    grid = (6, 5, 4)
    centres = voxel_centres(grid, ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)), dtype=torch.float64)
    out = lift_image_features(features, K, c2w, centres)  # (B, C, Z, Y, X)
    flat = centres.reshape(-1, 3)
    seen_by = torch.zeros(B, Kf, flat.shape[0], dtype=torch.bool)
    for b in range(B):
        total, count = torch.zeros(C, len(flat), dtype=torch.float64), torch.zeros(len(flat), dtype=torch.float64)
        for k in range(Kf):
            uv, z = Cameras(K[b, k], c2w[b, k], W, H).project(flat)
            vis = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
            seen_by[b, k] = vis
            total += bilinear_twin(features[b, k], uv[:, 0], uv[:, 1]) * vis
            count += vis
        want = total / count.clamp(min=1)
        torch.testing.assert_close(out[b].reshape(C, -1), want)
    both, one, none = seen_by.all(1), seen_by.sum(1) == 1, ~seen_by.any(1)
    assert both.any() and one.any() and none.any()  # the fixture covers all three cases
    assert (out.reshape(B, C, -1).permute(0, 2, 1)[none] == 0).all()


def test_per_scene_centres_and_gradient():
    g = torch.Generator().manual_seed(1)
    K, c2w = camera_at_origin()
    K, c2w = K.expand(2, 1, 3, 3), c2w.expand(2, 1, 4, 4)
    features = torch.randn(2, 1, 2, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    centres = voxel_centres((4, 3, 2), ((-0.5, -0.5, 0.5), (0.5, 0.5, 1.5)), dtype=torch.float64)
    shared = lift_image_features(features, K, c2w, centres)
    per_scene = lift_image_features(features, K, c2w, centres.expand(2, -1, -1, -1, -1))
    torch.testing.assert_close(per_scene, shared)
    shared.sum().backward()
    assert features.grad.abs().sum() > 0
    torch.autograd.gradcheck(lambda f: lift_image_features(f, K, c2w, centres), (features.detach().requires_grad_(True),))


def test_bad_input():
    K, c2w = camera_at_origin()
    features = torch.zeros(1, 1, 1, H, W)
    centres = voxel_centres((2, 2, 2))
    with pytest.raises(InputError, match="K_intr"):
        lift_image_features(features, K[0], c2w, centres)
    with pytest.raises(InputError, match="centres"):
        lift_image_features(features, K, c2w, centres[..., :2])
    with pytest.raises(InputError, match="features"):
        lift_image_features(features[0], K, c2w, centres)
