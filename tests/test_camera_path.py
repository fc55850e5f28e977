"""Camera paths: slerp against a hand-computed case, keyframes kept exactly, the stride cap by hand,
nearest frames against a loop, and the GIF read back with Pillow."""

import math

import pytest
import torch
from PIL import Image

from renderssl.errors import InputError
from renderssl.eval.camera_path import (
    camera_path, interpolate_cameras, keyframe_stride, nearest_frames, render_camera_path, slerp_rotations, write_gif, write_mp4,
)
from renderssl.eval.novel_views import rotation_angle
from renderssl.geometry.rotations import random_quats, quat_to_rotmat


def rot_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def pose(R: torch.Tensor, centre) -> torch.Tensor:
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3], T[:3, 3] = R, torch.as_tensor(centre, dtype=torch.float64)
    return T


def test_slerp_halfway_between_identity_and_a_quarter_turn_is_the_eighth_turn():
    mid = slerp_rotations(torch.eye(3, dtype=torch.float64), rot_z(math.pi / 2), torch.tensor(0.5))
    assert torch.allclose(mid, rot_z(math.pi / 4), atol=1e-9)
    third = slerp_rotations(torch.eye(3, dtype=torch.float64), rot_z(math.pi / 2), torch.tensor(1 / 3))
    assert torch.allclose(third, rot_z(math.pi / 6), atol=1e-9)
    # the shorter arc: from +170 deg to -170 deg about z passes through 180 deg, not 0
    across = slerp_rotations(rot_z(math.radians(170)), rot_z(math.radians(-170)), torch.tensor(0.5))
    assert torch.allclose(across, rot_z(math.pi), atol=1e-9)


def test_random_midpoints_are_proper_rotations_at_half_the_angle():
    g = torch.Generator().manual_seed(0)
    R0, R1 = quat_to_rotmat(random_quats(50, g, torch.float64)), quat_to_rotmat(random_quats(50, g, torch.float64))
    mid = slerp_rotations(R0, R1, torch.full((50,), 0.5, dtype=torch.float64))  # (50, 3, 3)
    assert torch.allclose(mid.transpose(1, 2) @ mid, torch.eye(3, dtype=torch.float64).expand(50, 3, 3), atol=1e-9)
    assert torch.allclose(torch.linalg.det(mid), torch.ones(50, dtype=torch.float64), atol=1e-9)
    full = rotation_angle(R0, R1)
    assert torch.allclose(rotation_angle(R0, mid), full / 2, atol=1e-6)
    assert torch.allclose(rotation_angle(mid, R1), full / 2, atol=1e-6)


def test_path_keeps_the_keyframes_and_interpolates_between_them():
    c2w = torch.stack([pose(rot_z(0.0), [0, 0, 0]), pose(rot_z(math.pi / 2), [4, 0, 0]), pose(rot_z(math.pi / 2), [4, 8, 0])])
    K = torch.tensor([[50.0, 0, 16], [0, 50, 12], [0, 0, 1]], dtype=torch.float64).expand(3, 3, 3).clone()
    K[2, 0, 0] = 70.0
    path, path_K, keys = interpolate_cameras(c2w, K, per_pair=3)
    assert path.shape == (9, 4, 4) and path_K.shape == (9, 3, 3) and keys.tolist() == [0, 4, 8]
    assert torch.equal(path[keys], c2w) and torch.equal(path_K[keys], K)
    assert torch.allclose(path[2, :3, 3], torch.tensor([2.0, 0, 0], dtype=torch.float64))  # halfway: centre linear
    assert torch.allclose(path[2, :3, :3], rot_z(math.pi / 4), atol=1e-9)  # rotation at half the angle
    assert torch.allclose(path[1, :3, :3], rot_z(math.pi / 8), atol=1e-9)  # a quarter of the way
    assert torch.allclose(path[5, :3, 3], torch.tensor([4.0, 2, 0], dtype=torch.float64))
    assert float(path_K[6, 0, 0]) == pytest.approx(60.0)  # K linear
    assert torch.equal(path[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(9, 4))


def test_the_frame_cap_picks_the_smallest_keyframe_stride():
    # 30 frames, 4 poses per pair, <= 60 poses: stride 2 gives 15 keys -> 71 poses, stride 3 gives 10 keys -> 46
    assert keyframe_stride(30, 4, 60) == 3
    assert keyframe_stride(30, 4, 200) == 1
    c2w = torch.stack([pose(rot_z(0.1 * i), [i, 0, 0]) for i in range(30)])
    path, _, keys = camera_path(c2w, torch.eye(3, dtype=torch.float64).expand(30, 3, 3), per_pair=4, max_frames=60)
    assert len(path) == 46 and keys.tolist() == list(range(0, 30, 3))
    with pytest.raises(InputError, match="K must be"):
        interpolate_cameras(c2w, torch.eye(3).expand(2, 3, 3))


def test_nearest_frames_equal_a_loop():
    g = torch.Generator().manual_seed(1)
    frames = torch.eye(4).repeat(12, 1, 1)
    frames[:, :3, 3] = torch.randint(0, 4, (12, 3), generator=g).float()  # integer centres: ties happen
    queries = torch.eye(4).repeat(5, 1, 1)
    queries[:, :3, 3] = torch.randint(0, 4, (5, 3), generator=g).float()
    got = nearest_frames(frames, queries, 4)
    for m in range(5):
        d = [float((frames[n, :3, 3] - queries[m, :3, 3]).norm()) for n in range(12)]
        want = sorted(range(12), key=lambda n: (d[n], n))[:4]
        assert got[m].tolist() == want


def test_the_rendered_path_gif_has_the_frames_and_size(tmp_path):
    from renderssl.data.synthetic import SyntheticConfig, generate_scene
    from renderssl.models.encoders.resunet import ResUNetConfig
    from renderssl.models.nerf.generalizable_nerf import GeneralizableNeRF, GeneralizableNeRFConfig
    from renderssl.models.nerf.transformer import NeRFTransformerConfig

    scene = generate_scene(0, SyntheticConfig(kind="object", num_views=3, width=24, height=20))
    torch.manual_seed(0)
    model = GeneralizableNeRF(GeneralizableNeRFConfig(ResUNetConfig(preset="tiny"), NeRFTransformerConfig(preset="tiny"))).eval()
    path, path_K, _ = camera_path(scene.c2w, scene.K, per_pair=2)
    frames = render_camera_path(model, scene.rgb, scene.K, scene.c2w, path_K, path, 1.0, 6.0, num_sources=2, num_samples=4, batch=3)
    assert frames.shape == (7, 3, 20, 24) and 0 <= float(frames.min()) and float(frames.max()) <= 1
    gif = write_gif(frames, tmp_path / "path.gif", fps=5)
    with Image.open(gif) as im:
        assert im.n_frames == 7 and im.size == (24, 20)
        im.seek(3)
        assert im.info["duration"] == 200
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        assert write_mp4(frames, tmp_path / "path.mp4") is None and not (tmp_path / "path.mp4").exists()
