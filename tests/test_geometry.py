"""geometry: rotations, cameras, projection round trips, pose conventions, joint augmentation."""

import math

import pytest
import torch

from renderssl.errors import InputError
from renderssl.geometry import (
    Cameras, SimilarityTransform, axis_angle_to_rotmat, intrinsics_matrix, llff_to_opencv, look_at,
    opencv_to_llff, opengl_to_opencv, quat_multiply, quat_to_rotmat, random_quats, random_similarity, rotmat_to_quat,
)

D = torch.float64


def test_quaternion_hand_case_and_round_trip():
    # 90 degrees about z: x -> y.
    q = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=D)
    R = quat_to_rotmat(q)
    torch.testing.assert_close(R @ torch.tensor([1.0, 0, 0], dtype=D), torch.tensor([0.0, 1, 0], dtype=D))
    q = random_quats(500, torch.Generator().manual_seed(0), dtype=D)
    q = torch.where(q[:, :1] < 0, -q, q)
    R = quat_to_rotmat(q)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=D).expand(500, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(500, dtype=D))
    torch.testing.assert_close(rotmat_to_quat(R), q)
    # Hamilton product composes rotations.
    a, b = q[:250], q[250:]
    torch.testing.assert_close(quat_to_rotmat(quat_multiply(a, b)), quat_to_rotmat(a) @ quat_to_rotmat(b))
    # Unnormalised input, and the 180-degree case where w = 0.
    torch.testing.assert_close(quat_to_rotmat(3 * q[:5]), R[:5])
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=D))
    torch.testing.assert_close(quat_to_rotmat(rotmat_to_quat(flip)), flip)


def test_axis_angle_matches_quaternion():
    aa = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.9], [0.0, 1e-10, 0.0]], dtype=D)
    angle = aa.norm(dim=-1, keepdim=True)
    axis = aa / angle.clamp(min=1e-30)
    q = torch.cat([torch.cos(angle / 2), axis * torch.sin(angle / 2)], dim=-1)
    torch.testing.assert_close(axis_angle_to_rotmat(aa), quat_to_rotmat(q))


def cameras(model="pinhole", V=3, W=48, H=36):
    g = torch.Generator().manual_seed(1)
    eye = torch.randn(V, 3, generator=g, dtype=D) * 2 + torch.tensor([0, 0, 4.0], dtype=D)
    c2w = look_at(eye, torch.randn(V, 3, generator=g, dtype=D) * 0.2)
    f = 40.0 if model == "pinhole" else 10.0
    K = intrinsics_matrix(f, f * 1.2, W / 2 + 1.5, H / 2 - 2.0, dtype=D).expand(V, 3, 3)
    return Cameras(K, c2w, W, H, model)


@pytest.mark.parametrize("model", ["pinhole", "ortho"])
def test_backproject_then_project_returns_the_same_pixels(model):
    cams = cameras(model)
    depth = torch.rand(3, cams.height, cams.width, generator=torch.Generator().manual_seed(2), dtype=D) * 3 + 1
    points = cams.backproject_depth(depth)  # (V, H, W, 3)
    uv, z = cams.project(points.reshape(3, -1, 3))
    torch.testing.assert_close(uv, cams.pixel_centers().reshape(-1, 2).expand(3, -1, 2))
    torch.testing.assert_close(z, depth.reshape(3, -1))
    # (B, 1, H, W) depth layout is accepted too.
    torch.testing.assert_close(cams.backproject_depth(depth[:, None]), points)


@pytest.mark.parametrize("model", ["pinhole", "ortho"])
def test_rays_unnormalised_step_is_z_depth(model):
    cams = cameras(model)
    depth = torch.full((3, cams.height, cams.width), 2.5, dtype=D)
    o, d = cams.rays(normalize=False)
    torch.testing.assert_close(o + 2.5 * d, cams.backproject_depth(depth))
    o, d = cams.rays()
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(d.shape[:-1], dtype=D))


def test_pixel_centre_convention_and_look_at():
    cams = Cameras(intrinsics_matrix(10.0, 10.0, 2.0, 1.0, dtype=D)[None], torch.eye(4, dtype=D)[None], 4, 2)
    torch.testing.assert_close(cams.pixel_centers()[0, 0], torch.tensor([0.5, 0.5], dtype=D))
    uv, _ = cams.project(torch.tensor([[[0.0, 0.0, 5.0]]], dtype=D))
    torch.testing.assert_close(uv[0, 0], torch.tensor([2.0, 1.0], dtype=D))  # principal point = image centre
    c2w = look_at(torch.tensor([0.0, -3.0, 0.0], dtype=D), torch.zeros(3, dtype=D))
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([0.0, 1.0, 0.0], dtype=D))  # forward
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0.0, -1.0], dtype=D))  # image down = world down


def test_resized_cameras_keep_the_scene_aligned():
    cams = cameras()
    small = cams.resized(24, 18)
    p = torch.tensor([[[0.3, -0.2, 0.1]]], dtype=D).expand(3, 1, 3)
    torch.testing.assert_close(small.project(p)[0], cams.project(p)[0] / 2)


def test_opengl_to_opencv_hand_case_and_involution():
    # An OpenGL camera at the origin looking down world -z with y up equals an OpenCV camera with
    # z forward = world -z and y down = world -y.
    gl = torch.eye(4, dtype=D)
    cv = opengl_to_opencv(gl)
    torch.testing.assert_close(cv[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=D)))
    torch.testing.assert_close(opengl_to_opencv(cv), gl)


def test_llff_hand_case_and_round_trip():
    # LLFF columns (down, right, back); the identity camera has down = +x, right = +y, back = +z.
    poses = torch.cat([torch.eye(3, dtype=D), torch.tensor([[1.0], [2.0], [3.0]], dtype=D), torch.tensor([[480.0], [640.0], [500.0]], dtype=D)], 1)
    c2w, hwf = llff_to_opencv(poses)
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([0.0, 1.0, 0.0], dtype=D))  # right
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([1.0, 0.0, 0.0], dtype=D))  # down
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([0.0, 0.0, -1.0], dtype=D))  # forward = -back
    torch.testing.assert_close(torch.linalg.det(c2w[:3, :3]), torch.tensor(1.0, dtype=D))
    torch.testing.assert_close(opencv_to_llff(c2w, hwf), poses)


@pytest.mark.parametrize("model", ["pinhole", "ortho"])
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_augmentation_keeps_points_on_their_pixels(model, flip):
    cams = cameras(model)
    depth = torch.rand(3, cams.height, cams.width, generator=torch.Generator().manual_seed(3), dtype=D) + 1
    points = cams.backproject_depth(depth).reshape(3, -1, 3)
    uv, z = cams.project(points)
    T = random_similarity(torch.Generator().manual_seed(4), scale_range=(0.7, 1.3), flip_prob=flip, translation_std=1.0)
    T = SimilarityTransform(T.A.to(D), T.t.to(D), T.scale)
    uv2, z2 = T.apply_cameras(cams).project(T.apply_points(points))
    torch.testing.assert_close(uv2, uv)
    torch.testing.assert_close(z2, T.apply_depth(z))
    back = T.inverse()
    torch.testing.assert_close(back.apply_points(T.apply_points(points)), points)
    torch.testing.assert_close(back.apply_c2w(T.apply_c2w(cams.c2w)), cams.c2w)


def test_bad_cameras_raise_clear_errors():
    K = intrinsics_matrix(1.0, 1.0, 1.0, 1.0)[None]
    with pytest.raises(InputError, match="c2w.*non-finite"):
        Cameras(K, torch.full((1, 4, 4), math.nan), 4, 4)
    with pytest.raises(InputError, match=r"\(\.\.\., 4, 4\)"):
        Cameras(K, torch.eye(3)[None], 4, 4)
    with pytest.raises(InputError, match="batch shape"):
        Cameras(K, torch.eye(4).expand(2, 4, 4), 4, 4)
    with pytest.raises(InputError, match="camera model"):
        Cameras(K, torch.eye(4)[None], 4, 4, model="fisheye")
    with pytest.raises(InputError, match="depth shape"):
        Cameras(K, torch.eye(4)[None], 4, 4).backproject_depth(torch.ones(1, 5, 4))
