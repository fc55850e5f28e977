"""LLFF and 7-Scenes as their public copies are laid out, read through ``data.source`` with the recipes' keys.

Miniature copies are written from the synthetic generator with the public file names and conventions
(LLFF: ``poses_bounds.npy`` + ``images/`` + ``images_4/`` + ``images_8/``; 7-Scenes:
``<root>/<scene>/seq-XX/frame-NNNNNN.{color.png,depth.png,pose.txt}``, uint16 mm depth with 65535 =
invalid, no per-sequence intrinsics file), read back lazily and checked against the generator's exact
cameras, images and depth, and against the eager readers bit for bit.
"""

from __future__ import annotations

import functools
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from renderssl.data.build import load_split
from renderssl.data.datasets import RGBDFrameDataset
from renderssl.data.formats import (
    OPENERS, ReadOptions, detect_format, open_llff, read_llff, read_sevenscenes, write_llff, write_sevenscenes,
)
from renderssl.data.scenes import SceneList
from renderssl.data.synthetic import SyntheticConfig, generate_scene
from renderssl.data.types import ViewSet
from renderssl.data.unreadable import SkipUnreadable
from renderssl.errors import InputError
from renderssl.experiment import load_experiment, pretraining_data
from renderssl.geometry import intrinsics_matrix
from renderssl.train.config import DataConfig

W, H = 32, 24  # 7-Scenes miniature frames (WxH)
LW, LH = 64, 48  # LLFF full size; images_4 is 16x12, images_8 is 8x6
HALF_LEVEL = 0.5 / 255 + 1e-6  # 8-bit images of float renders
MM = 0.0005 + 1e-6  # millimetre depth PNGs
SEQUENCES = {"chess/seq-01": 0, "chess/seq-02": 1, "heads/seq-01": 2}  # sequence -> generator seed


@functools.lru_cache(maxsize=None)
def scene(seed: int, views: int = 3, width: int = W, height: int = H) -> ViewSet:
    return generate_scene(seed, SyntheticConfig(num_views=views, width=width, height=height))


def mask3d_data(source, *overrides):
    """Mask3D's (rgbd) pretraining Dataset over ``source``, at the miniature's own size."""
    cfg = load_experiment("mask3d_tiny", [f"data.source={source}", f"data.width={W}", f"data.height={H}", *overrides])
    return pretraining_data(cfg)[0]


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---- 7-Scenes -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seven_root(tmp_path_factory):
    """<root>/<scene>/seq-XX/ as published; the intrinsics (ours: the frames are not 640x480) once per
    scene folder as "fx fy cx cy", plus the split files the real scene folders carry."""
    root = tmp_path_factory.mktemp("7scenes")
    for rel, seed in SEQUENCES.items():
        seq = write_sevenscenes(scene(seed), root / rel)
        (seq / "camera-intrinsics.txt").unlink()
    f = float(scene(0).K[0, 0, 0])
    for name in ("chess", "heads"):
        (root / name / "camera-intrinsics.txt").write_text(f"{f:.9g} {f:.9g} {W / 2} {H / 2}\n")
        (root / name / "TrainSplit.txt").write_text("sequence1\n")
    return root


def check_sample(sample, root):
    """One RGB-D sample against the generator (cameras to 1e-5, colour to half a level, depth to 0.5 mm)
    and against the eager reader of its sequence (bit for bit)."""
    name, frame = sample["scene"], sample["frame"]
    ref = scene(SEQUENCES[name])
    i = int(frame.split("-")[1])
    torch.testing.assert_close(sample["K"], ref.K[i], atol=1e-5, rtol=0)
    torch.testing.assert_close(sample["c2w"], ref.c2w[i], atol=1e-5, rtol=0)
    assert float((sample["rgb"] - ref.rgb[i]).abs().max()) <= HALF_LEVEL
    assert bool(((sample["depth"] == 0) == (ref.depth[i] == 0)).all())
    assert float((sample["depth"] - ref.depth[i]).abs().max()) <= MM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sequences with a bad frame warn once more here
        eager = read_sevenscenes(root / name)
    j = eager.frame_names.index(frame)
    assert torch.equal(sample["rgb"], eager.rgb[j]) and torch.equal(sample["depth"], eager.depth[j])
    assert torch.equal(sample["K"], eager.K[j]) and torch.equal(sample["c2w"], eager.c2w[j])


@pytest.mark.parametrize("where, names", [
    ("", ["chess/seq-01", "chess/seq-02", "heads/seq-01"]),  # the dataset root
    ("chess", ["chess/seq-01", "chess/seq-02"]),  # a scene folder
    ("chess/seq-02", ["chess/seq-02"]),  # a sequence folder
])
def test_sevenscenes_root_scene_or_sequence_as_source(seven_root, where, names):
    source = seven_root / where
    cfg = DataConfig(source=str(source), width=W, height=H, train_scenes=len(names), val_scenes=0, test_scenes=0)
    refs = load_split(cfg, "train")
    assert [r.name for r in refs] == names and [r.num_frames for r in refs] == [3] * len(names)
    ds = mask3d_data(source, f"data.train_scenes={len(names)}", "data.val_scenes=0", "data.test_scenes=0")
    assert isinstance(ds, RGBDFrameDataset) and len(ds) == 3 * len(names)
    for k in range(len(ds)):
        sample = ds[k]
        assert sample["scene"] == names[k // 3] and sample["frame"] == f"frame-{k % 3:06d}"
        check_sample(sample, seven_root)


def test_sevenscenes_sequences_split_as_scenes_with_default_splits(seven_root, tmp_path):
    """The root as a scene folder of a larger source; sequences are the scenes of the splits; with the
    preset's default split sizes (48 + 4 + 16 scenes) three sequences are split by frames instead."""
    source = tmp_path / "data"
    source.mkdir()
    (source / "7scenes").symlink_to(seven_root, target_is_directory=True)
    cfg = DataConfig(source=str(source), width=W, height=H, train_scenes=2, val_scenes=0, test_scenes=1)
    assert [r.name for r in load_split(cfg, "train")] == ["chess/seq-01", "chess/seq-02"]
    assert [r.name for r in load_split(cfg, "test")] == ["heads/seq-01"]
    long_root = tmp_path / "long"
    for rel, seed in SEQUENCES.items():
        write_sevenscenes(scene(seed, views=9), long_root / rel)
    ds = mask3d_data(long_root)  # mask3d_tiny's splits: 48 + 4 + 16 scenes
    cfg = load_experiment("mask3d_tiny", [f"data.source={long_root}"]).data
    names = {split: [r.name for r in load_split(cfg, split)] for split in ("train", "val", "test")}
    assert names["test"] == [f"{n}@test" for n in SEQUENCES]
    assert len(ds) == sum(r.num_frames for r in load_split(cfg, "train")) == 3 * (9 - 1 - 2)


def test_sevenscenes_default_kinect_intrinsics_and_invalid_depth(tmp_path):
    """No intrinsics file: 585, 585, 320, 240 for 640x480 frames; raw 65535 reads as invalid (0)."""
    g = torch.Generator().manual_seed(0)
    V = 2
    rgb = torch.randint(0, 256, (V, 3, 480, 640), generator=g).float() / 255
    depth = torch.full((V, 1, 480, 640), 1.5)
    depth[:, :, :10] = 0.0  # written as 65535, as 7-Scenes marks invalid depth
    c2w = torch.eye(4).repeat(V, 1, 1)
    c2w[:, :3, 3] = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.3]])
    vs = ViewSet(rgb, intrinsics_matrix(500.0, 500.0, 320.0, 240.0).expand(V, 3, 3).clone(), c2w, depth)
    seq = write_sevenscenes(vs, tmp_path / "office" / "seq-03")
    (seq / "camera-intrinsics.txt").unlink()
    assert bool((np.asarray(Image.open(seq / "frame-000000.depth.png"))[:10] == 65535).all())
    refs = load_split(DataConfig(source=str(tmp_path), width=640, height=480, train_scenes=1, val_scenes=0, test_scenes=0), "train")
    opened = refs[0].open()
    assert opened.name == "office/seq-03" and len(opened) == V
    torch.testing.assert_close(opened.K, intrinsics_matrix(585.0, 585.0, 320.0, 240.0).expand(V, 3, 3))
    frame = opened.read_frame(1)
    assert frame["rgb"].dtype == torch.uint8 and torch.equal(frame["rgb"].float() / 255, rgb[1])
    assert torch.equal(frame["depth"], depth[1])


def test_sevenscenes_bad_frames_are_skipped_and_named(seven_root, tmp_path):
    root = tmp_path / "7scenes"
    shutil.copytree(seven_root, root)
    missing = root / "chess" / "seq-01" / "frame-000001.depth.png"
    missing.unlink()
    truncated = root / "chess" / "seq-02" / "frame-000002.color.png"
    truncate(truncated)
    # eager: the frame is skipped, named and counted; the other frames keep their depth
    with pytest.warns(UserWarning, match=r"skipped 1 frame.*frame-000001\.depth\.png: depth image not found"):
        out = read_sevenscenes(root / "chess" / "seq-01")
    assert out.frame_names == ["frame-000000", "frame-000002"] and out.depth is not None
    assert len(out.skipped) == 1 and str(missing) in out.skipped[0]
    with pytest.warns(UserWarning, match=r"skipped 1 frame.*frame-000002\.color\.png: cannot read image"):
        out = read_sevenscenes(root / "chess" / "seq-02")
    assert out.frame_names == ["frame-000000", "frame-000001"] and str(truncated) in out.skipped[0]
    # lazily, through data.source: the frames are counted from the listing; reading one raises naming the
    # file, and training's wrapper replaces it by the next readable sample and reports the file
    ds = mask3d_data(root, "data.train_scenes=3", "data.val_scenes=0", "data.test_scenes=0")
    assert len(ds) == 9
    with pytest.raises(InputError, match=r"frame-000001\.depth\.png: depth image not found"):
        ds[1]
    with pytest.raises(InputError, match=r"frame-000002\.color\.png: cannot read image"):
        ds[5]
    sample, problems = SkipUnreadable(ds)[1]
    assert sample["frame"] == "frame-000002" and len(problems) == 1 and str(missing) in problems[0]
    for k in (0, 2, 3, 4, 6, 7, 8):
        check_sample(ds[k], root)


def test_sevenscenes_detect_and_count(seven_root):
    assert detect_format(seven_root / "chess" / "seq-01") == "7scenes"
    for folder in (seven_root, seven_root / "chess"):
        with pytest.raises(InputError, match=r"7-Scenes scene folder or dataset root of \d sequences \(chess/seq-01, "):
            detect_format(folder)
    open_, count = OPENERS["7scenes"]
    seq = seven_root / "heads" / "seq-01"
    for k in (1, 2):
        opts = ReadOptions(every_k=k)
        assert count(seq, opts) == len(open_(seq, opts)) == len(range(0, 3, k))


# ---- LLFF -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llff_root(tmp_path_factory):
    """<root>/room/ as nerf_llff_data is laid out: poses_bounds.npy, images/, images_4/, images_8/."""
    root = tmp_path_factory.mktemp("llff")
    vs = scene(3, views=4, width=LW, height=LH)
    write_llff(vs, root / "room", factor=4)
    write_llff(vs, root / "room", factor=8)  # the same images/ and poses again, plus images_8/
    return root


def box(rgb: torch.Tensor, n: int) -> torch.Tensor:
    V, C, Hh, Ww = rgb.shape
    return rgb.reshape(V, C, Hh // n, n, Ww // n, n).mean((3, 5))


@pytest.mark.parametrize("height, width, factor", [
    (12, 16, 4),  # images_4 is exactly the target
    (6, 8, 8), (5, 5, 8),  # images_8 is still at least the target
    (12, 12, 4),  # a square crop of images_4 (12 high) still only shrinks
    (13, 16, 1), (100, 100, 1),  # nothing smaller is large enough / nothing is: the largest, images/
])
def test_llff_factor_chosen_by_the_configured_size(llff_root, height, width, factor):
    ref = load_split(DataConfig(source=str(llff_root), width=width, height=height, train_scenes=1, val_scenes=0,
                                test_scenes=0), "train")[0]
    scene_ = ref.opener()  # the LLFF scene itself (ref.open() also fits its frames to the size)
    assert scene_.llff_factor == factor and scene_.image_dir.name == ("images" if factor == 1 else f"images_{factor}")
    assert (scene_.width, scene_.height) == (LW // factor, LH // factor) and ref.num_frames == len(scene_) == 4


def test_llff_factor_given_or_missing_folders(llff_root, tmp_path):
    root = llff_root / "room"
    assert open_llff(root, ReadOptions(llff_factor=8, target_size=(48, 64))).llff_factor == 8
    assert open_llff(root).llff_factor == 1  # no target size: the largest folder
    with pytest.raises(InputError, match=r"images_2: LLFF image folder not found \(data\.llff_factor=2; the scene has images/, images_4/, images_8/\)"):
        open_llff(root, ReadOptions(llff_factor=2))
    copy = tmp_path / "room"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "images")
    assert open_llff(copy, ReadOptions(target_size=(100, 100))).llff_factor == 4  # the largest available
    (copy / "images_4" / "000001.png").unlink()  # images are matched to poses by order: a scene error
    with pytest.raises(InputError, match=r"poses_bounds\.npy has 4 poses but .*images_4 has 3 images"):
        open_llff(copy, ReadOptions(llff_factor=4))


def test_llff_through_gmae_data_against_the_generator(llff_root):
    ref = scene(3, views=4, width=LW, height=LH)
    cfg = load_experiment("gmae_tiny", [f"data.source={llff_root}", "data.width=16", "data.height=12",
                                        "data.train_scenes=1", "data.val_scenes=0", "data.test_scenes=0"])
    ds = pretraining_data(cfg)[0]
    assert len(ds) == 4
    eager = read_llff(llff_root / "room", factor=4)
    opened = load_split(cfg.data, "train")[0].open()
    assert opened.llff_factor == 4 and eager.llff_factor == 4
    f = float(ref.K[0, 0, 0]) / 4
    torch.testing.assert_close(opened.K, intrinsics_matrix(f, f, 8.0, 6.0).expand(4, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(opened.c2w, ref.c2w, atol=1e-5, rtol=0)
    valid = [d[d > 0].numpy() for d in ref.depth]
    expected = torch.tensor(np.stack([np.percentile(d, [0.1, 99.9]) for d in valid]), dtype=torch.float32)
    torch.testing.assert_close(opened.near_far, expected)
    torch.testing.assert_close(eager.near_far, expected)
    small = box(ref.rgb, 4)  # images_4 is a 4x4 box average of the 8-bit full-size image
    for k in range(4):
        image = ds[k]["image"]  # (3, 12, 16)
        assert image.shape == (3, 12, 16) and float((image - small[k]).abs().max()) <= 1.5 / 255
        assert torch.equal(image, eager.rgb[k])  # lazily read = eager, bit for bit
    full = read_llff(llff_root / "room")  # images/, K at full size
    assert full.llff_factor == 1 and float((full.rgb - ref.rgb).abs().max()) <= HALF_LEVEL
    torch.testing.assert_close(full.K, ref.K, atol=1e-5, rtol=0)


def test_llff_bad_frames_are_skipped_and_named(llff_root, tmp_path):
    root = tmp_path / "room"
    shutil.copytree(llff_root / "room", root)
    truncated = root / "images_4" / "000002.png"
    truncate(truncated)
    table = np.load(root / "poses_bounds.npy")
    table[0, 3] = np.nan  # a non-finite pose
    np.save(root / "poses_bounds.npy", table)
    with pytest.warns(UserWarning, match="skipped 2 frame"):
        out = read_llff(root, factor=4)
    assert out.frame_names == ["000001", "000003"] and out.near_far.shape == (2, 2)
    assert "row 0, the pose of 000000.png (non-finite values)" in out.skipped[0]
    assert str(truncated) in out.skipped[1] and "cannot read image" in out.skipped[1]
    scenes = SceneList([load_split(DataConfig(source=str(root), width=16, height=12, train_scenes=1, val_scenes=0,
                                              test_scenes=0), "train")[0]])
    for k, pattern in ((0, r"poses_bounds\.npy row 0"), (2, r"images_4/000002\.png: cannot read image")):
        with pytest.raises(InputError, match=pattern):
            scenes.frame(0, k)
    assert torch.equal(scenes.frame(0, 1)["rgb"], out.rgb[0])
