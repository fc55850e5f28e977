"""Format readers/writers: round trips through each writer, hand-computed conventions, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from renderssl.data.formats import (
    detect_format, read_blender, read_image_folder, read_llff, read_ply, read_scannet, read_sevenscenes,
    read_viewset, skipped_frames, write_blender, write_image_folder, write_llff, write_ply, write_scannet,
    write_sevenscenes, write_viewset,
)
from renderssl.data.types import PointCloud, ViewSet
from renderssl.errors import InputError
from renderssl.geometry import axis_angle_to_rotmat, intrinsics_matrix, rigid_inverse

H, W = 12, 16


# ---- fixtures -------------------------------------------------------------------------------------
def make_viewset(V=3, H=H, W=W, seed=0, K=None, gradient=False, labels=True) -> ViewSet:
    g = torch.Generator().manual_seed(seed)
    if gradient:
        ys, xs = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
        rgb = torch.stack([xs, ys, 0.5 * (xs + ys)])[None].repeat(V, 1, 1, 1) * torch.linspace(0.6, 1.0, V).view(V, 1, 1, 1)
    else:
        rgb = torch.randint(0, 256, (V, 3, H, W), generator=g).float() / 255.0  # exactly representable in 8 bits
    c2w = torch.eye(4).repeat(V, 1, 1)
    c2w[:, :3, :3] = axis_angle_to_rotmat(torch.randn(V, 3, generator=g))
    c2w[:, :3, 3] = torch.randn(V, 3, generator=g) * 2
    K = intrinsics_matrix(20.0, 22.0, 7.3, 5.9) if K is None else K  # non-centred
    depth = torch.rand(V, 1, H, W, generator=g) * 4 + 0.5
    depth[torch.rand(V, 1, H, W, generator=g) < 0.25] = 0.0
    sem = torch.randint(-1, 6, (V, H, W), generator=g) if labels else None
    ins = torch.randint(-1, 40, (V, H, W), generator=g) if labels else None
    return ViewSet(rgb, K.expand(V, 3, 3).clone(), c2w, depth, semantic=sem, instance=ins,
                   name="scene", class_names=list("abcdef") if labels else [])


def assert_cameras_equal(out: ViewSet, ref: ViewSet):
    torch.testing.assert_close(out.K, ref.K, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.c2w, ref.c2w, atol=1e-5, rtol=0)


def assert_depth_close(out: ViewSet, ref: ViewSet):
    assert out.depth is not None and out.depth.shape == ref.depth.shape
    assert bool(((out.depth == 0) == (ref.depth == 0)).all())
    assert float((out.depth - ref.depth).abs().max()) <= 0.0005 + 1e-6


def write_pose(path, m):
    path.write_text("\n".join(" ".join(str(float(v)) for v in row) for row in np.asarray(m)) + "\n")


@pytest.fixture(scope="module")
def vs() -> ViewSet:
    return make_viewset()


# ---- ScanNet --------------------------------------------------------------------------------------
def test_scannet_round_trip_png(tmp_path, vs):
    write_scannet(vs, tmp_path / "s")
    out = read_scannet(tmp_path / "s")
    assert_cameras_equal(out, vs)
    assert torch.equal(out.rgb, vs.rgb)
    assert_depth_close(out, vs)
    assert torch.equal(out.semantic, vs.semantic) and torch.equal(out.instance, vs.instance)
    assert out.class_names == vs.class_names and out.frame_names == ["0", "1", "2"] and out.name == "s"
    assert skipped_frames(out) == []
    assert np.asarray(Image.open(tmp_path / "s" / "depth" / "0.png")).dtype == np.uint16


def test_scannet_round_trip_jpg(tmp_path):
    vs = make_viewset(gradient=True, labels=False, H=24, W=32)
    write_scannet(vs, tmp_path / "s", color_format="jpg")
    assert (tmp_path / "s" / "color" / "0.jpg").is_file()
    out = read_scannet(tmp_path / "s")
    assert_cameras_equal(out, vs)
    assert float((out.rgb - vs.rgb).abs().mean()) < 0.01 and float((out.rgb - vs.rgb).abs().max()) < 0.08
    assert out.semantic is None and out.instance is None


def test_scannet_numeric_order_and_every_k(tmp_path):
    vs = make_viewset(V=12, H=4, W=4, labels=False)
    write_scannet(vs, tmp_path / "s")
    out = read_scannet(tmp_path / "s")
    assert out.frame_names == [str(i) for i in range(12)]  # 10 and 11 after 9, not after 1
    torch.testing.assert_close(out.c2w, vs.c2w, atol=1e-5, rtol=0)
    out = read_scannet(tmp_path / "s", every_k=5)
    assert out.frame_names == ["0", "5", "10"]
    torch.testing.assert_close(out.c2w, vs.c2w[[0, 5, 10]], atol=1e-5, rtol=0)


def test_scannet_colour_resampled_to_depth_size(tmp_path):
    vs = make_viewset(V=2, gradient=True)
    root = write_scannet(vs, tmp_path / "s")
    for i in range(2):  # colour and labels at twice the depth size, as real ScanNet's 1296x968 vs 640x480
        big = vs.rgb[i].repeat_interleave(2, 1).repeat_interleave(2, 2)
        Image.fromarray((big * 255).round().byte().permute(1, 2, 0).numpy()).save(root / "color" / f"{i}.png")
        lab = (vs.semantic[i] + 1).repeat_interleave(2, 0).repeat_interleave(2, 1).numpy().astype(np.uint16)
        Image.fromarray(lab).save(root / "label" / f"{i}.png")
    K_color = torch.eye(4)
    K_color[:3, :3] = vs.K[0]
    K_color[:2] *= 2
    write_pose(root / "intrinsic" / "intrinsic_color.txt", K_color)
    out = read_scannet(root)
    assert out.rgb.shape == (2, 3, H, W)
    torch.testing.assert_close(out.K, vs.K, atol=1e-5, rtol=0)  # intrinsic_depth is K
    assert float((out.rgb - vs.rgb).abs().max()) < 0.03
    assert torch.equal(out.semantic, vs.semantic)  # nearest at pixel centres picks the original labels


def test_scannet_size_mismatch_without_depth_intrinsics(tmp_path, vs):
    root = write_scannet(vs, tmp_path / "s")
    (root / "intrinsic" / "intrinsic_depth.txt").unlink()
    Image.new("RGB", (2 * W, 2 * H)).save(root / "color" / "1.png")
    with pytest.warns(UserWarning, match="skipped 1 frame"):
        out = read_scannet(root)  # one bad frame is skipped, not the scene
    assert "1" not in out.frame_names and len(out.skipped) == 1
    msg = out.skipped[0]
    assert "color/1.png" in msg and "depth/1.png" in msg and f"{2 * W}x{2 * H}" in msg and f"{W}x{H}" in msg
    assert "intrinsic_depth.txt" in msg


def test_scannet_writer_requires_shared_intrinsics(tmp_path):
    vs = make_viewset(V=2)
    vs.K[1, 0, 0] += 1
    with pytest.raises(InputError, match="K differ"):
        write_scannet(vs, tmp_path / "s")


# ---- 7-Scenes -------------------------------------------------------------------------------------
def test_sevenscenes_round_trip(tmp_path, vs):
    root = write_sevenscenes(vs, tmp_path / "seq-01")
    raw = np.asarray(Image.open(root / "frame-000000.depth.png"))
    assert bool((raw[vs.depth[0, 0].numpy() == 0] == 65535).all())  # invalid stored as 65535
    out = read_sevenscenes(root)
    assert_cameras_equal(out, vs)
    assert torch.equal(out.rgb, vs.rgb)
    assert_depth_close(out, vs)
    assert out.frame_names == ["frame-000000", "frame-000001", "frame-000002"]


def test_sevenscenes_default_and_vector_intrinsics(tmp_path):
    vs = make_viewset(V=1, H=480, W=640, labels=False, gradient=True)
    root = write_sevenscenes(vs, tmp_path / "seq")
    (root / "camera-intrinsics.txt").unlink()
    out = read_sevenscenes(root)
    torch.testing.assert_close(out.K[0], intrinsics_matrix(585.0, 585.0, 320.0, 240.0))
    (root.parent / "camera-intrinsics.txt").write_text("500 510 321.5 239.5\n")  # scene-level, fx fy cx cy
    torch.testing.assert_close(read_sevenscenes(root).K[0], intrinsics_matrix(500.0, 510.0, 321.5, 239.5))


def test_sevenscenes_needs_intrinsics_for_other_sizes(tmp_path, vs):
    root = write_sevenscenes(vs, tmp_path / "seq")
    (root / "camera-intrinsics.txt").unlink()
    with pytest.raises(InputError, match=r"camera-intrinsics\.txt.*not found.*640x480"):
        read_sevenscenes(root)


def test_sevenscenes_colour_depth_size_mismatch(tmp_path, vs):
    root = write_sevenscenes(vs, tmp_path / "seq")
    Image.fromarray(np.zeros((H + 2, W), np.uint16)).save(root / "frame-000001.depth.png")
    with pytest.warns(UserWarning, match="skipped 1 frame"):
        out = read_sevenscenes(root)  # that frame is skipped and named, not the sequence
    assert out.frame_names == ["frame-000000", "frame-000002"] and out.depth is not None
    msg = out.skipped[0]
    assert "frame-000001.color.png" in msg and "frame-000001.depth.png" in msg and f"{W}x{H + 2}" in msg


# ---- Blender --------------------------------------------------------------------------------------
def test_blender_round_trip(tmp_path, vs):
    json_path = write_blender(vs, tmp_path / "b")
    meta = json.loads(json_path.read_text())
    assert math.isclose(meta["camera_angle_x"], 2 * math.atan(0.5 * W / 20.0)) and meta["fl_y"] == 22.0
    alpha = np.asarray(Image.open(tmp_path / "b" / "images" / "000000.png"))[..., 3]
    assert np.array_equal(alpha > 0, vs.depth[0, 0].numpy() > 0)
    out = read_blender(tmp_path / "b", background=None)  # raw RGB channels
    assert_cameras_equal(out, vs)
    assert torch.equal(out.rgb, vs.rgb)
    assert_depth_close(out, vs)
    white = read_blender(json_path)  # default: composite on white
    valid = (vs.depth > 0).expand_as(vs.rgb)
    assert torch.equal(white.rgb[valid], vs.rgb[valid]) and bool((white.rgb[~valid] == 1.0).all())
    black = read_blender(json_path, background=(0.0, 0.0, 0.0))
    assert bool((black.rgb[~valid] == 0.0).all())


def test_blender_per_frame_intrinsics_round_trip(tmp_path):
    vs = make_viewset(V=2, labels=False)
    vs.K[1] = intrinsics_matrix(30.0, 31.0, 8.5, 6.25)
    out = read_blender(write_blender(vs, tmp_path / "b"), background=None)
    torch.testing.assert_close(out.K, vs.K, atol=1e-5, rtol=0)


def test_blender_opengl_conversion_hand_computed(tmp_path):
    """NeRF-synthetic style: camera_angle_x only, file_path without extension, RGBA on white."""
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[: H // 2, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    (tmp_path / "train").mkdir()
    Image.fromarray(rgba).save(tmp_path / "train" / "r_0.png")
    Image.fromarray(rgba).save(tmp_path / "train" / "r_1.png")
    # frame 0: OpenGL identity rotation at (0, 0, 5): looks down -z at the origin.
    # frame 1: rotated +90 deg about world y (GL x -> -z, GL z -> +x) at (3, 0, 0): also looks at the origin.
    gl1 = [[0, 0, 1, 3], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]]
    angle = 0.8
    meta = {"camera_angle_x": angle, "frames": [
        {"file_path": "./train/r_0", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5], [0, 0, 0, 1]]},
        {"file_path": "./train/r_1", "transform_matrix": gl1},
    ]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    out = read_blender(tmp_path, split="train")
    expected0 = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1]])
    expected1 = torch.tensor([[0.0, 0, -1, 3], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]])
    torch.testing.assert_close(out.c2w, torch.stack([expected0, expected1]))
    origin_cam = rigid_inverse(out.c2w) @ torch.tensor([0.0, 0, 0, 1])  # (2, 4): the origin in each camera
    torch.testing.assert_close(origin_cam[:, :3], torch.tensor([[0.0, 0, 5], [0, 0, 3]]))  # in front, centred
    f = 0.5 * W / math.tan(0.5 * angle)
    torch.testing.assert_close(out.K[0], intrinsics_matrix(f, f, W / 2, H / 2))
    assert torch.allclose(out.rgb[0, :, 0, 0], torch.tensor([200 / 255, 0, 0]))
    assert bool((out.rgb[:, :, H // 2:] == 1.0).all())  # transparent -> white
    assert out.frame_names == ["r_0", "r_1"] and out.depth is None


def test_blender_nerfstudio_intrinsics_and_depth_unit(tmp_path):
    Image.new("RGB", (W, H), (10, 20, 30)).save(tmp_path / "im.jpg")
    raw = np.full((H, W), 250, np.uint16)
    raw[0, 0] = 0
    Image.fromarray(raw).save(tmp_path / "d.png")
    meta = {"fl_x": 11.0, "fl_y": 12.0, "cx": 7.0, "cy": 5.0, "w": W, "h": H, "depth_unit_scale_factor": 0.01,
            "frames": [{"file_path": "im.jpg", "depth_file_path": "d.png", "fl_x": 13.0, "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    out = read_blender(tmp_path)
    torch.testing.assert_close(out.K[0], intrinsics_matrix(13.0, 13.0, 7.0, 5.0))  # frame focal replaces global
    assert float(out.depth[0, 0, 0, 0]) == 0.0 and math.isclose(float(out.depth[0, 0, 1, 1]), 2.5, rel_tol=1e-6)


def test_blender_size_mismatches(tmp_path, vs):
    json_path = write_blender(vs, tmp_path / "b")
    Image.fromarray(np.zeros((H, W + 1), np.uint16)).save(tmp_path / "b" / "depth" / "000002.png")
    with pytest.warns(UserWarning, match=r"skipped 1 frame.*images/000002\.png.*depth/000002\.png"):
        out = read_blender(json_path)  # that frame is skipped and named, not the scene
    assert out.frame_names == ["000000", "000001"] and out.depth is not None
    meta = json.loads(json_path.read_text())
    meta["w"] = W + 4
    json_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning), pytest.raises(InputError, match=r"transforms\.json: 'w' = 20 but .*000000\.png is 16x12"):
        read_blender(json_path)  # every frame differs from the declared size


# ---- LLFF -----------------------------------------------------------------------------------------
def test_llff_round_trip_and_factor(tmp_path):
    vs = make_viewset(V=3, K=intrinsics_matrix(18.0, 18.0, W / 2, H / 2), labels=False)
    root = write_llff(vs, tmp_path / "l", factor=2)
    table = np.load(root / "poses_bounds.npy")
    assert table.shape == (3, 17)
    out = read_llff(root)
    assert_cameras_equal(out, vs)
    assert torch.equal(out.rgb, vs.rgb) and out.depth is None
    d0 = vs.depth[0][vs.depth[0] > 0].numpy()
    torch.testing.assert_close(out.near_far[0], torch.tensor(np.percentile(d0, [0.1, 99.9]), dtype=torch.float32))
    half = read_llff(root, factor=2)
    assert half.rgb.shape == (3, 3, H // 2, W // 2)
    torch.testing.assert_close(half.K, intrinsics_matrix(9.0, 9.0, W / 4, H / 4).expand(3, 3, 3))
    torch.testing.assert_close(half.c2w, vs.c2w, atol=1e-5, rtol=0)
    box = vs.rgb.reshape(3, 3, H // 2, 2, W // 2, 2).mean((3, 5))  # 2x2 box average
    assert float((half.rgb - box).abs().max()) <= 1.5 / 255


def test_llff_hand_computed_pose(tmp_path):
    """OpenCV identity c2w is LLFF [down=(0,1,0) | right=(1,0,0) | back=(0,0,-1)]."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (W, H)).save(tmp_path / "images" / "a.png")
    pose = np.array([[0, 1, 0, 1.0, H], [1, 0, 0, 2.0, W], [0, 0, -1, 3.0, 30.0]])  # (3, 5)
    np.save(tmp_path / "poses_bounds.npy", np.concatenate([pose.reshape(-1), [0.5, 9.0]])[None])
    out = read_llff(tmp_path)
    expected = torch.eye(4)
    expected[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(out.c2w[0], expected)
    torch.testing.assert_close(out.K[0], intrinsics_matrix(30.0, 30.0, W / 2, H / 2))
    torch.testing.assert_close(out.near_far, torch.tensor([[0.5, 9.0]]))


def test_llff_writer_rejects_unrepresentable_intrinsics(tmp_path, vs):
    with pytest.raises(InputError, match="centred principal point.*cx=7.3"):
        write_llff(vs, tmp_path / "l")


def test_llff_image_count_mismatch(tmp_path):
    vs = make_viewset(V=2, K=intrinsics_matrix(18.0, 18.0, W / 2, H / 2), labels=False)
    root = write_llff(vs, tmp_path / "l", factor=1, near_far=(0.1, 10.0))
    (root / "images" / "000001.png").unlink()
    with pytest.raises(InputError, match=r"poses_bounds\.npy has 2 poses but .*images has 1 images"):
        read_llff(root)


# ---- dispatch -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["scannet", "7scenes", "blender", "llff"])
def test_detect_format_and_dispatch(tmp_path, fmt):
    vs = make_viewset(V=2, K=intrinsics_matrix(18.0, 18.0, W / 2, H / 2), labels=False)
    write_viewset(vs, tmp_path / fmt, fmt)
    assert detect_format(tmp_path / fmt) == fmt
    out = read_viewset(tmp_path / fmt)
    torch.testing.assert_close(out.c2w, vs.c2w, atol=1e-5, rtol=0)


# ---- image folders --------------------------------------------------------------------------------
def test_image_folder(tmp_path):
    imgs = torch.randint(0, 256, (5, 3, 6, 7)).float() / 255
    write_image_folder(imgs, [1, 0, 1, 2, 0], ["cat", "ant", "bee"], tmp_path / "f")
    folder = read_image_folder(tmp_path / "f")
    assert folder.class_names == ["ant", "bee", "cat"] and len(folder) == 5
    assert folder.labels == [0, 0, 1, 2, 2]
    assert [p.parent.name + "/" + p.stem for p in folder.paths] == [
        "ant/000000", "ant/000002", "bee/000003", "cat/000001", "cat/000004"]
    image, label = folder[3]  # cat/000001.png: image 1, class index of "cat" after sorting
    assert label == 2 and torch.equal(image, imgs[1])


def test_image_folder_bad_input(tmp_path):
    with pytest.raises(InputError, match="nope: image folder not found"):
        read_image_folder(tmp_path / "nope")
    (tmp_path / "f" / "cls").mkdir(parents=True)
    (tmp_path / "f" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="hold no .png/.jpg images"):
        read_image_folder(tmp_path / "f")
    (tmp_path / "f" / "cls" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"bad\.png: cannot read image"):
        read_image_folder(tmp_path / "f")[0]


# ---- PLY ------------------------------------------------------------------------------------------
def make_cloud(N=50, seed=0, float_colors=False) -> PointCloud:
    g = torch.Generator().manual_seed(seed)
    colors = torch.rand(N, 3, generator=g) if float_colors else torch.randint(0, 256, (N, 3), generator=g).float() / 255
    return PointCloud(
        points=torch.randn(N, 3, generator=g) * 10,
        colors=colors,
        normals=torch.nn.functional.normalize(torch.randn(N, 3, generator=g), dim=-1),
        semantic=torch.randint(-1, 20, (N,), generator=g),
        instance=torch.randint(-1, 100, (N,), generator=g),
        name="c",
    )


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("color_type", ["uchar", "float"])
def test_ply_round_trip(tmp_path, fmt, color_type):
    pc = make_cloud(float_colors=color_type == "float")
    path = write_ply(pc, tmp_path / "c.ply", format=fmt, color_type=color_type)
    assert f"format {fmt} 1.0" in path.read_bytes()[:200].decode("ascii", "replace")
    out = read_ply(path)
    assert torch.equal(out.points, pc.points) and torch.equal(out.normals, pc.normals)
    assert torch.equal(out.colors, pc.colors)
    assert torch.equal(out.semantic, pc.semantic) and torch.equal(out.instance, pc.instance)
    assert out.semantic.dtype == torch.int64 and out.points.dtype == torch.float32


def test_ply_hand_written_mesh_with_faces_and_aliases(tmp_path):
    text = "\n".join([
        "ply", "format ascii 1.0", "comment a mesh", "element vertex 3", "property double x", "property double y",
        "property double z", "property uchar red", "property uchar green", "property uchar blue", "property uchar alpha",
        "property ushort class", "property int instance_id", "element face 1", "property list uchar int vertex_indices",
        "end_header", "0 0 0 255 0 0 255 3 -1", "1 0 0 0 255 0 255 4 7", "0 1 0.5 0 0 51 255 0 7", "3 0 1 2", ""])
    (tmp_path / "m.ply").write_text(text)
    pc = read_ply(tmp_path / "m.ply")
    torch.testing.assert_close(pc.points[2], torch.tensor([0.0, 1.0, 0.5]))
    torch.testing.assert_close(pc.colors[2], torch.tensor([0.0, 0.0, 0.2]))
    assert pc.semantic.tolist() == [3, 4, 0] and pc.instance.tolist() == [-1, 7, 7] and pc.normals is None


def test_ply_unknown_fields(tmp_path):
    text = "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n" \
           "property float curvature\nend_header\n1 2 3 0.5\n"
    (tmp_path / "u.ply").write_text(text)
    with pytest.raises(InputError) as e:
        read_ply(tmp_path / "u.ply")
    msg = str(e.value)
    assert "u.ply" in msg and "unknown vertex field(s) ['curvature']" in msg and "'nx'" in msg and "'semantic_label'" in msg
    pc = read_ply(tmp_path / "u.ply", ignore_unknown=True)
    assert pc.points.tolist() == [[1.0, 2.0, 3.0]]


def test_ply_bad_input(tmp_path):
    (tmp_path / "e.ply").write_text("ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\n"
                                    "property float y\nproperty float z\nend_header\n")
    with pytest.raises(InputError, match=r"e\.ply: empty point cloud"):
        read_ply(tmp_path / "e.ply")
    with pytest.raises(InputError, match="empty point cloud"):
        write_ply(PointCloud(torch.zeros(0, 3)), tmp_path / "w.ply")
    path = write_ply(make_cloud(), tmp_path / "t.ply")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputError, match=r"t\.ply: truncated PLY"):
        read_ply(path)
    (tmp_path / "n.ply").write_text("solid stl\n")
    with pytest.raises(InputError, match=r"n\.ply: not a PLY file"):
        read_ply(tmp_path / "n.ply")
    with pytest.raises(InputError, match=r"missing\.ply: PLY file not found"):
        read_ply(tmp_path / "missing.ply")


# ---- bad scene input ------------------------------------------------------------------------------
READERS = {"scannet": read_scannet, "7scenes": read_sevenscenes, "blender": read_blender, "llff": read_llff}


@pytest.mark.parametrize("fmt", list(READERS))
def test_missing_scene_folder(tmp_path, fmt):
    with pytest.raises(InputError, match=r"nowhere.* not found"):
        READERS[fmt](tmp_path / "nowhere")


def test_scannet_missing_pieces(tmp_path, vs):
    root = write_scannet(vs, tmp_path / "s")
    (root / "pose" / "2.txt").unlink()
    with pytest.warns(UserWarning, match=r"skipped 1 frame.*pose/2\.txt: matrix file not found"):
        assert "2" not in read_scannet(root).frame_names  # one frame skipped and named, not the scene
    root = write_scannet(vs, tmp_path / "s2")
    (root / "depth" / "1.png").unlink()
    with pytest.warns(UserWarning, match=r"skipped 1 frame.*depth/1\.png: image not found"):
        out = read_scannet(root)
    assert "1" not in out.frame_names and out.depth is not None  # the other frames keep their depth
    for f in (root / "intrinsic").iterdir():
        f.unlink()
    with pytest.raises(InputError, match=r"intrinsic_color\.txt: intrinsics not found"):
        read_scannet(root)


@pytest.mark.parametrize("fmt", ["scannet", "7scenes", "blender"])
def test_corrupt_image(tmp_path, vs, fmt):
    write_viewset(vs, tmp_path / "x", fmt)
    target = {"scannet": "color/1.png", "7scenes": "frame-000001.color.png", "blender": "images/000001.png"}[fmt]
    (tmp_path / "x" / target).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    pattern = rf"{target.replace('.', '[.]')}: cannot read image"
    with pytest.warns(UserWarning, match=rf"skipped 1 frame.*{pattern}"):  # read frame by frame: skipped and named
        assert len(read_viewset(tmp_path / "x")) == len(vs) - 1


def corrupt_pose(root, fmt, i, value):
    """Replace frame i's pose with ``value`` (4x4) in the on-disk format."""
    if fmt == "scannet":
        write_pose(root / "pose" / f"{i}.txt", value)
    elif fmt == "7scenes":
        write_pose(root / f"frame-{i:06d}.pose.txt", value)
    elif fmt == "blender":
        meta = json.loads((root / "transforms.json").read_text())
        meta["frames"][i]["transform_matrix"] = value.tolist()  # Python's json writes and reads NaN
        (root / "transforms.json").write_text(json.dumps(meta))
    else:
        table = np.load(root / "poses_bounds.npy")
        table[i, :15] = np.concatenate([value[:3, :4], table[i, :15].reshape(3, 5)[:, 4:]], 1).reshape(-1)
        np.save(root / "poses_bounds.npy", table)


@pytest.mark.parametrize("fmt", ["scannet", "7scenes", "blender", "llff"])
def test_bad_poses_are_skipped_and_reported(tmp_path, fmt):
    vs = make_viewset(V=4, K=intrinsics_matrix(18.0, 18.0, W / 2, H / 2), labels=False)
    root = tmp_path / fmt
    write_viewset(vs, root, fmt)
    nan = np.full((4, 4), np.nan)
    corrupt_pose(root, fmt, 1, nan)
    corrupt_pose(root, fmt, 3, np.zeros((4, 4)))  # non-invertible
    kwargs = {"background": None} if fmt == "blender" else {}  # raw RGB, no compositing
    with pytest.warns(UserWarning, match="skipped 2 frame") as rec:
        out = read_viewset(root, **kwargs)
    assert len(out) == 2 and len(out.skipped) == 2 and len(skipped_frames(out)) == 2
    assert "non-finite" in out.skipped[0] and "non-invertible" in out.skipped[1]
    torch.testing.assert_close(out.c2w, vs.c2w[[0, 2]], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.rgb, vs.rgb[[0, 2]])
    if fmt == "scannet":
        assert "pose/1.txt" in str(rec[0].message) and "pose/3.txt" in str(rec[0].message)
    for i in (0, 2):
        corrupt_pose(root, fmt, i, nan)
    with pytest.warns(UserWarning, match="skipped 4 frame"):
        with pytest.raises(InputError, match=rf"{fmt}(/transforms\.json)?: no valid frames; all 4 frame\(s\) were skipped"):
            read_viewset(root)


def test_scannet_real_style_inf_pose(tmp_path, vs):
    root = write_scannet(vs, tmp_path / "s")
    (root / "pose" / "0.txt").write_text("-inf -inf -inf -inf\n" * 4)
    with pytest.warns(UserWarning, match=r"skipped 1 frame.*pose/0\.txt \(non-finite values\)"):
        out = read_scannet(root)
    assert out.frame_names == ["1", "2"] and out.skipped == [f"{root / 'pose' / '0.txt'} (non-finite values)"]


def test_malformed_text_files(tmp_path, vs):
    root = write_scannet(vs, tmp_path / "s")
    (root / "pose" / "1.txt").write_text("1 0 0\n0 1 zero\n")
    with pytest.warns(UserWarning, match=r"pose/1\.txt: cannot read numbers"):  # that frame is skipped
        read_scannet(root)
    (root / "pose" / "1.txt").write_text("1 0 0 0\n0 1 0 0\n")
    with pytest.warns(UserWarning, match=r"pose/1\.txt: expected 16 numbers, found 8"):
        read_scannet(root)
    json_path = write_blender(vs, tmp_path / "b")
    json_path.write_text('{"frames": [')
    with pytest.raises(InputError, match=r"transforms\.json: cannot read JSON"):
        read_blender(json_path)
