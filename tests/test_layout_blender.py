"""Blender-family layouts as published, written from the synthetic generator and read back through
``data.source``: NeRF synthetic (``transforms_{train,val,test}.json``, ``./train/r_0`` paths without
extension, RGBA PNGs whose alpha is the object mask, OpenGL poses, ``camera_angle_x`` only) and
instant-ngp / nerfstudio (``transforms.json`` with ``fl_x, fl_y, cx, cy, w, h, aabb_scale``, OpenCV
distortion ``k1, k2, p1, p2``, uint16 mm depth). The distorted images are rendered exactly by the
generator's ray caster along the rays the distortion model assigns to each stored pixel, so the reader's
undistortion is checked against the generator's own pinhole images."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from renderssl.data.build import load_split
from renderssl.data.datasets import ImageDataset, RGBDFrameDataset
from renderssl.data.formats import count_blender, detect_format, open_blender, read_blender
from renderssl.data.formats.options import ReadOptions
from renderssl.data.scenes import SceneList
from renderssl.data.synthetic import SyntheticConfig, generate_scene, make_scene_layout, render_rays, scene_cameras
from renderssl.errors import InputError
from renderssl.experiment import load_experiment, pretraining_data
from renderssl.train.config import DataConfig

S = 24  # NeRF-synthetic frames: S x S (the public ones are 800 x 800)
SPLITS = {"train": [0, 1, 2, 3, 4, 5], "val": [6, 7], "test": [8, 9]}  # generator views of each split
GL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))  # OpenCV <-> OpenGL camera axes
NGP_SIZE = (40, 36)  # (W, H) of the instant-ngp frames
DISTORTED_SIZE = (96, 88)  # (W, H) of the undistortion check: bilinear resampling of texture is accurate enough
DIST = {"k1": -0.12, "k2": 0.03, "p1": 0.004, "p2": -0.003}


# ---- the public layouts, written here ---------------------------------------------------------------
@pytest.fixture(scope="module")
def gen():
    return generate_scene(3, SyntheticConfig(kind="object", num_views=10, width=S, height=S))


def write_nerf_synthetic(vs, root):
    """nerf_synthetic/<scene>: RGBA r_<k>.png per split (alpha = object mask), transforms_<split>.json."""
    for split, views in SPLITS.items():
        (root / split).mkdir(parents=True)
        frames = []
        for k, v in enumerate(views):
            rgb = (vs.rgb[v].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (S, S, 3)
            alpha = np.where(vs.depth[v, 0].numpy() > 0, 255, 0).astype(np.uint8)  # (S, S)
            Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(root / split / f"r_{k}.png")
            c2w_gl = vs.c2w[v].double() @ GL  # (4, 4)
            frames.append({"file_path": f"./{split}/r_{k}", "rotation": 0.012566, "transform_matrix": c2w_gl.tolist()})
        angle = 2 * math.atan(0.5 * S / float(vs.K[0, 0, 0]))
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}, indent=4))
    return root


def distort(x, y, k1=0.0, k2=0.0, p1=0.0, p2=0.0):
    """OpenCV radial-tangential model (cv::projectPoints), normalised coordinates."""
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    return x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y


def undistort(xd, yd, coeffs, iterations=50):
    """Inverse of :func:`distort` by fixed-point iteration (cv::undistortPoints)."""
    x, y = xd.copy(), yd.copy()
    for _ in range(iterations):
        ex, ey = distort(x, y, **coeffs)
        x, y = x + (xd - ex), y + (yd - ey)
    return x, y


@functools.lru_cache(maxsize=2)
def ngp_cameras(W: int, H: int):
    """(generator config, layout, cameras): 3 views of an object filling the view, pinhole truth."""
    cfg = SyntheticConfig(kind="object", num_views=3, width=W, height=H, object_camera_distance=1.6)
    layout = make_scene_layout(5, cfg)
    return cfg, layout, scene_cameras(layout)


@pytest.fixture(scope="module")
def ngp_scene():
    return ngp_cameras(*NGP_SIZE)


def render_distorted(layout, K, c2w, W, H, coeffs):
    """(rgb (H, W, 3), depth (H, W)) of a camera with lens distortion ``coeffs``: each stored pixel
    centre's ray is the undistorted direction (x, y, 1), cast by the generator (t = z-depth)."""
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    x, y = undistort((u - cx) / fx, (v - cy) / fy, coeffs)
    dirs_cam = torch.from_numpy(np.stack([x, y, np.ones_like(x)], -1).reshape(-1, 3)).float()  # (HW, 3)
    dirs = dirs_cam @ c2w[:3, :3].T  # (HW, 3) world
    out = render_rays(layout, c2w[:3, 3].expand_as(dirs).contiguous(), dirs)
    depth = torch.where(out["primitive"] >= 0, out["t"], 0.0).reshape(H, W)
    return out["rgb"].reshape(H, W, 3), depth


def write_ngp(root, layout, cams, coeffs=DIST, ext="png", extra=None):
    """instant-ngp / nerfstudio scene: images/<i>.<ext> (distorted), depth/<i>.png (uint16 mm), transforms.json."""
    W, H = cams.width, cams.height
    K = cams.K[0]
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    frames = []
    for i in range(cams.c2w.shape[0]):
        rgb, depth = render_distorted(layout, K, cams.c2w[i], W, H, coeffs)
        Image.fromarray((rgb.numpy() * 255).round().astype(np.uint8)).save(root / "images" / f"{i:04d}.{ext}")
        Image.fromarray(np.round(depth.numpy() * 1000).astype(np.uint16)).save(root / "depth" / f"{i:04d}.png")
        frames.append({"file_path": f"./images/{i:04d}.{ext}", "depth_file_path": f"depth/{i:04d}.png",
                       "sharpness": 30.0, "transform_matrix": (cams.c2w[i].double() @ GL).tolist()})
    meta = {"camera_angle_x": 2 * math.atan(0.5 * W / float(K[0, 0])), "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]),
            "cx": float(K[0, 2]), "cy": float(K[1, 2]), "w": W, "h": H, "aabb_scale": 4, "camera_model": "OPENCV",
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, **coeffs, **(extra or {}), "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta, indent=2))
    return root


def nerf_truth(gen):
    order = SPLITS["train"] + SPLITS["val"] + SPLITS["test"]
    return order, [f"{s}/r_{k}" for s, views in SPLITS.items() for k in range(len(views))]


# ---- NeRF synthetic -------------------------------------------------------------------------------
def test_nerf_synthetic_layout_through_data_source(tmp_path, gen):
    scene = write_nerf_synthetic(gen, tmp_path / "nerf_synthetic" / "lego")
    assert not (scene / "transforms.json").exists() and detect_format(scene) == "blender"
    cfg = DataConfig(source=str(tmp_path / "nerf_synthetic"), width=S, height=S, train_scenes=1, val_scenes=0, test_scenes=0)
    (ref,) = load_split(cfg, "train")
    order, names = nerf_truth(gen)
    assert ref.name == "lego" and ref.num_frames == 10
    every2 = ReadOptions(every_k=2)  # every other frame of each split's json
    assert count_blender(scene, every2) == 5 and open_blender(scene, every2).frame_names == [
        "train/r_0", "train/r_2", "train/r_4", "val/r_0", "test/r_0"]
    opened = ref.open()
    assert opened.frame_names == names and not opened.has_depth  # every split, train, val, test
    torch.testing.assert_close(opened.K, gen.K[order], atol=1e-5, rtol=0)
    torch.testing.assert_close(opened.c2w, gen.c2w[order], atol=1e-5, rtol=0)

    data = RGBDFrameDataset([ref], require_depth=False, size=(S, S))
    mask = gen.depth[order[4], 0] > 0  # (S, S) object pixels of the 5th frame
    obj, bg = mask.nonzero()[0].tolist(), (~mask).nonzero()[0].tolist()
    sample = data[4]
    assert sample["frame"] == "train/r_4"
    quantised = (gen.rgb[order[4]] * 255).round() / 255  # what the 8-bit PNG holds
    assert torch.equal(sample["rgb"][:, obj[0], obj[1]], quantised[:, obj[0], obj[1]])  # opaque: the stored colour
    assert torch.equal(sample["rgb"][:, bg[0], bg[1]], torch.ones(3))  # transparent: white (the default)
    assert torch.equal(sample["rgb"][:, mask], quantised[:, mask])

    black = dataclasses.replace(cfg, background=(0.0, 0.0, 0.0))
    sample = RGBDFrameDataset(load_split(black, "train"), require_depth=False)[4]
    assert torch.equal(sample["rgb"][:, bg[0], bg[1]], torch.zeros(3))
    assert torch.equal(sample["rgb"][:, ~mask], torch.zeros(3, int((~mask).sum())))

    val = dataclasses.replace(cfg, blender_split="val")
    (ref,) = load_split(val, "train")
    assert ref.num_frames == 2 and ref.open().frame_names == ["r_0", "r_1"]  # one split: names as stored
    torch.testing.assert_close(ref.open().c2w, gen.c2w[SPLITS["val"]], atol=1e-5, rtol=0)


def test_nerf_synthetic_with_the_recipe_defaults(tmp_path, gen):
    """gmae_tiny's own data keys (48 : 4 : 16 scenes) on a one-scene source: split by frames within it."""
    write_nerf_synthetic(gen, tmp_path / "src" / "lego")
    cfg = load_experiment("gmae_tiny", [f"data.source={tmp_path / 'src'}"])
    dataset, _ = pretraining_data(cfg)
    assert isinstance(dataset, ImageDataset) and len(dataset) == 7  # frames 0..6 of 10 (val 1, test 2)
    image = dataset[0]["image"]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_lazy_frames_equal_eager_read(tmp_path, gen, ngp_scene):
    _, layout, cams = ngp_scene
    for root, options in ((write_nerf_synthetic(gen, tmp_path / "n"), ReadOptions()),
                          (write_ngp(tmp_path / "g", layout, cams), ReadOptions(background=None))):
        eager = read_blender(root, background=options.background)
        assert count_blender(root, options) == len(eager)
        scenes = SceneList([lambda root=root, options=options: open_blender(root, options)])
        for f in range(len(eager)):
            frame = scenes.frame(0, f)
            assert torch.equal(frame["rgb"], eager.rgb[f])
            assert ("depth" in frame) == (eager.depth is not None)
            if eager.depth is not None:
                assert torch.equal(frame["depth"], eager.depth[f])
        assert torch.equal(scenes[0].K, eager.K) and torch.equal(scenes[0].c2w, eager.c2w)


# ---- instant-ngp / nerfstudio ------------------------------------------------------------------------
def test_instant_ngp_distortion_is_undistorted(tmp_path):
    W, H = DISTORTED_SIZE
    cfg, layout, cams = ngp_cameras(W, H)
    write_ngp(tmp_path / "src" / "ngp", layout, cams)
    data_cfg = DataConfig(source=str(tmp_path / "src"), width=W, height=H, train_scenes=1, val_scenes=0, test_scenes=0)
    refs = load_split(data_cfg, "train")
    scene = refs[0].open()
    torch.testing.assert_close(scene.K, cams.K, atol=1e-5, rtol=0)
    torch.testing.assert_close(scene.c2w, cams.c2w, atol=1e-5, rtol=0)
    truth = generate_scene(5, cfg)  # the pinhole images of the same cameras
    data = RGBDFrameDataset(refs, size=(H, W))
    inner = (slice(8, H - 8), slice(8, W - 8))
    for i in range(3):
        sample = data[i]
        with Image.open(tmp_path / "src" / "ngp" / "images" / f"{i:04d}.png") as im:
            stored = torch.from_numpy(np.array(im)).permute(2, 0, 1) / 255  # (3, H, W) as distorted
        err = (sample["rgb"] - truth.rgb[i])[:, inner[0], inner[1]].abs().mean()
        err_raw = (stored - truth.rgb[i])[:, inner[0], inner[1]].abs().mean()
        assert float(err) < 0.01 and float(err) < 0.4 * float(err_raw), (float(err), float(err_raw))
        d, t = sample["depth"][0][inner], truth.depth[i, 0][inner]
        both = (d > 0) & (t > 0)
        assert float(both.float().mean()) > 0.3
        assert float((d - t)[both].abs().median()) < 0.005
        assert float(((d > 0) != (t > 0)).float().mean()) < 0.05  # the silhouette moved back in place


def test_undistortion_is_exact_to_a_fraction_of_a_pixel(tmp_path):
    """A stored image whose colour is the undistorted position of each stored pixel, (u / W, v / H): the
    undistorted read must give every pixel its own centre (a half-pixel slip would be 0.5 / W = 0.016)."""
    W, H, fx, fy, cx, cy = 32, 28, 30.0, 29.0, 16.5, 13.75
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    x, y = undistort((u - cx) / fx, (v - cy) / fy, DIST)
    ramp = np.stack([(fx * x + cx) / W, (fy * y + cy) / H, np.full_like(x, 0.5)], -1)  # (H, W, 3)
    (tmp_path / "images").mkdir()
    Image.fromarray((np.clip(ramp, 0, 1) * 255).round().astype(np.uint8)).save(tmp_path / "images" / "0.png")
    meta = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": W, "h": H, **DIST,
            "frames": [{"file_path": "images/0.png", "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    rgb = open_blender(tmp_path).read_frame(0)["rgb"]  # (3, H, W)
    expected = torch.from_numpy(np.stack([u / W, v / H])).float()  # (2, H, W)
    assert float((rgb[:2] - expected)[:, 3:-3, 3:-3].abs().max()) < 0.004


@pytest.mark.parametrize("extra, key", [
    ({"k4": 0.01}, "'k4'"),
    ({"camera_model": "OPENCV_FISHEYE"}, "'camera_model' = 'OPENCV_FISHEYE'"),
    ({"camera_model": "EQUIRECTANGULAR"}, "'camera_model' = 'EQUIRECTANGULAR'"),
])
def test_unsupported_camera_models_are_refused(tmp_path, ngp_scene, extra, key):
    _, layout, cams = ngp_scene
    root = write_ngp(tmp_path / "src" / "ngp", layout, cams, extra=extra)
    cfg = DataConfig(source=str(tmp_path / "src"), train_scenes=1, val_scenes=0, test_scenes=0)
    with pytest.raises(InputError) as e:
        load_split(cfg, "train")  # refused when the source is listed, before any training
    assert str(root / "transforms.json") in str(e.value) and key in str(e.value)
    with pytest.raises(InputError, match=key.replace("'", ".")):
        read_blender(root)
    meta = json.loads((root / "transforms.json").read_text())
    for k in extra:
        meta.pop(k)
    meta["frames"][1].update(extra)  # one frame's own key: refused too, naming the frame
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"transforms\.json frame 1: " + key.replace("'", ".")):
        open_blender(root)


# ---- bad frames -----------------------------------------------------------------------------------
def test_deleted_depth_and_truncated_image_are_skipped_and_named(tmp_path, gen, ngp_scene):
    _, layout, cams = ngp_scene
    root = write_ngp(tmp_path / "src" / "ngp", layout, cams, coeffs={}, ext="jpg")
    (root / "depth" / "0001.png").unlink()
    jpg = root / "images" / "0002.jpg"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    cfg = DataConfig(source=str(tmp_path / "src"), width=NGP_SIZE[0], height=NGP_SIZE[1], train_scenes=1, val_scenes=0, test_scenes=0)
    refs = load_split(cfg, "train")
    data = RGBDFrameDataset(refs)
    assert data[0]["depth"].gt(0).any()
    with pytest.raises(InputError, match=r"depth/0001\.png: image not found"):
        data[1]  # read lazily: the frame's own error, which training skips and counts
    with pytest.raises(InputError, match=r"images/0002\.jpg: cannot read image"):
        data[2]
    with pytest.warns(UserWarning, match=r"skipped 2 frame.*depth/0001\.png.*images/0002\.jpg"):
        out = read_blender(root)
    assert out.frame_names == ["0000"] and out.depth is not None and bool(out.depth.gt(0).any())
    assert "depth/0001.png: image not found" in out.skipped[0] and "images/0002.jpg: cannot read image" in out.skipped[1]

    meta = json.loads((root / "transforms.json").read_text())
    del meta["frames"][0]["depth_file_path"]  # one frame without depth: it is skipped, the others keep theirs
    meta["frames"][1]["transform_matrix"][0][0] = float("nan")
    (root / "transforms.json").write_text(json.dumps(meta))
    scene = open_blender(root)
    assert scene.has_depth
    with pytest.raises(InputError, match=r"frame 0 \(\./images/0000\.jpg\): no 'depth_file_path', but other frames"):
        scene.read_frame(0)
    with pytest.raises(InputError, match=r"frame 1 \(\./images/0001\.jpg\): transform_matrix has non-finite values"):
        scene.read_frame(1)

    nerf = write_nerf_synthetic(gen, tmp_path / "nerf" / "lego")
    png = nerf / "train" / "r_3.png"
    png.write_bytes(png.read_bytes()[:-40])
    with pytest.warns(UserWarning, match=r"skipped 1 frame.*train/r_3\.png: cannot read image"):
        out = read_blender(nerf)
    assert len(out) == 9 and "train/r_3" not in out.frame_names and out.skipped[0].startswith(str(png))
