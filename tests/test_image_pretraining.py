"""Plain image folders as data.source for the image recipes, and frames brought to the configured size by
data.resize (centre crop keeping the aspect ratio, or stretch) with K following exactly."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from renderssl.data.build import sample_dataset, split_manifest
from renderssl.data.datasets import ImageDataset, MultiViewDataset, RGBDFrameDataset, resize_frame
from renderssl.data.formats import write_scannet
from renderssl.data.formats.image_folder import is_image_source
from renderssl.data.formats.images import fit_intrinsics, write_rgb
from renderssl.data.synthetic import SyntheticConfig, generate_scene
from renderssl.data.unreadable import SkipUnreadable
from renderssl.errors import InputError
from renderssl.experiment import load_experiment, pretraining_data, run_pretraining
from renderssl.geometry import Cameras, intrinsics_matrix
from renderssl.train.config import DataConfig

pytestmark = pytest.mark.filterwarnings("ignore:frames of .* are (centre-cropped|stretched|resized)")


# ---- resizing: K follows the pixels ---------------------------------------------------------------
# A pinhole camera, fx = fy = 500, principal point at the centre, sees the camera-frame point
# X = (0.2, -0.1, 2.0): u = 500 * 0.2 / 2 + cx = cx + 50, v = 500 * -0.1 / 2 + cy = cy - 25.
# Landscape 640x480 (cx, cy = 320, 240): (u, v) = (370, 215).
#   crop to 64x64: window 480x480 at left 80, scale 64/480: ((370 - 80) 64/480, 215 * 64/480) = (38.6667, 28.6667)
#   stretch to 64x64: (370 * 64/640, 215 * 64/480) = (37.0, 28.6667)
#   crop to 32x48 (H x W, 3:2): window 640x427 (round(640 * 32/48) = 426.67 -> 427) at top (480-427)//2 = 26,
#     scales 48/640, 32/427: (370 * 0.075, (215 - 26) * 32/427) = (27.75, 14.16393)
# Portrait 480x640 (W x H; cx, cy = 240, 320): (u, v) = (290, 295).
#   crop to 64x64: window 480x480 at top 80: (290 * 64/480, (295 - 80) 64/480) = (38.6667, 28.6667)
#   stretch to 64x64: (290 * 64/480, 295 * 64/640) = (38.6667, 29.5)
POINT = torch.tensor([[0.2, -0.1, 2.0]])
CASES = [  # (W, H, target H, target W, mode, expected (u, v))
    (640, 480, 64, 64, "crop", (290 * 64 / 480, 215 * 64 / 480)),
    (640, 480, 64, 64, "stretch", (37.0, 215 * 64 / 480)),
    (640, 480, 32, 48, "crop", (27.75, (215 - 26) * 32 / 427)),
    (480, 640, 64, 64, "crop", (290 * 64 / 480, 215 * 64 / 480)),
    (480, 640, 64, 64, "stretch", (290 * 64 / 480, 29.5)),
]


def project(K: torch.Tensor, W: int, H: int) -> torch.Tensor:
    uv, _ = Cameras(K[None], torch.eye(4)[None], W, H).project(POINT[None])  # (1, 1, 2)
    return uv[0, 0]


@pytest.mark.parametrize("W,H,th,tw,mode,expected", CASES)
def test_intrinsics_after_crop_or_stretch_project_a_point_where_hand_computed(W, H, th, tw, mode, expected):
    K = intrinsics_matrix(500.0, 500.0, W / 2, H / 2)
    assert torch.allclose(project(K, W, H), torch.tensor([W / 2 + 50, H / 2 - 25]))
    torch.testing.assert_close(project(fit_intrinsics(K, H, W, th, tw, mode), tw, th), torch.tensor(expected), atol=1e-4, rtol=0)


def blob(W: int, H: int, centre, sigma: float) -> torch.Tensor:
    """(3, H, W) a Gaussian spot at the continuous pixel position ``centre`` (pixel centres at +0.5)."""
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    g = torch.exp(-((u - centre[0]) ** 2 + (v - centre[1]) ** 2) / (2 * sigma**2))
    return g.expand(3, H, W).double().float()


def centroid(img: torch.Tensor) -> torch.Tensor:
    w = img[0].double()
    v, u = torch.meshgrid(torch.arange(w.shape[0]) + 0.5, torch.arange(w.shape[1]) + 0.5, indexing="ij")
    return torch.stack([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()]).float()


@pytest.mark.parametrize("W,H,th,tw,mode,expected", CASES)
def test_the_image_and_its_intrinsics_move_together(W, H, th, tw, mode, expected):
    """A spot drawn where the point projects lands, after resizing the frame, where the new K projects it."""
    K = intrinsics_matrix(500.0, 500.0, W / 2, H / 2)
    sample = {"rgb": blob(W, H, project(K, W, H), sigma=24.0), "K": K,
              "depth": torch.full((1, H, W), 2.0), "semantic": torch.zeros(H, W, dtype=torch.int64)}
    out = resize_frame(sample, th, tw, mode)
    assert out["rgb"].shape == (3, th, tw) and out["depth"].shape == (1, th, tw) and out["semantic"].shape == (th, tw)
    torch.testing.assert_close(centroid(out["rgb"]), torch.tensor(expected), atol=0.03, rtol=0)


def test_depth_and_labels_are_cropped_and_taken_by_nearest():
    """A 8x6 frame into 6x6: the crop is columns 1..6 exactly (no resampling), so every value is known."""
    H, W = 6, 8
    depth = torch.arange(H * W, dtype=torch.float32).reshape(1, H, W) + 1
    depth[0, :, 4] = 0  # a hole stays a hole
    sample = {"rgb": torch.rand(3, H, W), "depth": depth, "instance": depth[0].long(), "K": intrinsics_matrix(10, 10, 4, 3)}
    out = resize_frame(sample, 6, 6)
    assert torch.equal(out["rgb"], sample["rgb"][:, :, 1:7]) and torch.equal(out["depth"], depth[:, :, 1:7])
    torch.testing.assert_close(out["K"], intrinsics_matrix(10, 10, 3, 3))
    small = resize_frame(sample, 3, 3)  # then 2x down by nearest pixel centre: rows 1, 3, 5 of the window (floor((i + .5) 2))
    assert torch.equal(small["depth"], depth[:, 1::2, 1:7][:, :, 1::2]) and torch.equal(small["instance"], small["depth"][0].long())
    stretched = resize_frame(sample, 3, 4, "stretch")
    assert torch.equal(stretched["depth"], depth[:, 1::2, 1::2])


def test_rgbd_and_multiview_datasets_crop_4_3_frames_for_a_square_model():
    """Synthetic 4:3 frames (the generator's exact cameras) read at 32x32: the centre 24x24 window, K moved."""
    vs = generate_scene(3, SyntheticConfig(kind="room", num_views=3, width=32, height=24))
    sample = RGBDFrameDataset([vs], size=(24, 24))[1]  # crop only: 32x24 -> 24x24 at left 4, no resampling
    assert torch.equal(sample["rgb"], vs.rgb[1][:, :, 4:28]) and torch.equal(sample["depth"], vs.depth[1][:, :, 4:28])
    K = vs.K[1].clone()
    K[0, 2] -= 4
    torch.testing.assert_close(sample["K"], K)
    view = MultiViewDataset([vs], num_views=2, size=(24, 24))[0]
    ids = view["view_ids"]
    assert view["rgb"].shape == (2, 3, 24, 24) and torch.equal(view["rgb"], vs.rgb[ids][..., 4:28])
    torch.testing.assert_close(view["K"], K.expand(2, 3, 3))
    squashed = RGBDFrameDataset([vs], size=(24, 24), resize="stretch")[1]
    torch.testing.assert_close(squashed["K"][0], vs.K[1][0] * 24 / 32)
    with pytest.raises(InputError, match="'squash' is not one of"):
        RGBDFrameDataset([vs], size=(24, 24), resize="squash")


def test_a_4_3_frame_is_reported_as_cropped_not_squashed():
    vs = generate_scene(4, SyntheticConfig(kind="room", num_views=1, width=40, height=30))
    with pytest.warns(UserWarning, match=r"frames of 40x30 \(WxH\) are centre-cropped to 30x30 .* resized to 20x20"):
        ImageDataset([vs], size=(20, 20))[0]


# ---- plain image folders as data.source -------------------------------------------------------------
def synthetic_images(n: int, W: int = 16, H: int = 12) -> torch.Tensor:
    """(n, 3, H, W) synthetic views (exact PNG round trip: stored as 8-bit values)."""
    vs = generate_scene(0, SyntheticConfig(kind="room", num_views=n, width=W, height=H))
    return (vs.rgb * 255).round() / 255


def test_bsds_style_folder_uses_its_own_splits_and_is_read_lazily(tmp_path):
    imgs = synthetic_images(6)
    root = tmp_path / "BSDS500" / "data" / "images"
    names = {"train": ["b.png", "a.jpg", "c.png"], "val": ["v.png"], "test": ["t1.png", "t0.png"]}
    i = 0
    for split, files in names.items():
        for f in files:
            write_rgb(root / split / f, imgs[i], jpg_quality=100)
            i += 1
    (root / "train" / "notes.txt").write_text("not an image")
    (root / "train" / ".hidden.png").write_bytes(b"skipped")
    cfg = DataConfig(source=str(root), width=12, height=12)
    assert is_image_source(root)
    ds, collate = sample_dataset("image", cfg, "pretrain", recipe="gmae")
    assert collate is None and len(ds) == 3
    sample = ds[2]  # train/c.png (sorted by relative path: a.jpg, b.png, c.png), 16x12 -> centre 12x12
    assert sample["image"].shape == (3, 12, 12) and torch.equal(sample["image"], imgs[2][:, :, 2:14])
    assert len(sample_dataset("image", cfg, "val")[0]) == 1 and len(sample_dataset("image", cfg, "test")[0]) == 2
    manifest = split_manifest(cfg)
    assert manifest == {"train": {str(root): ["train/a.jpg", "train/b.png", "train/c.png"]},
                        "val": {str(root): ["val/v.png"]}, "test": {str(root): ["test/t0.png", "test/t1.png"]}}


def test_imagenet_style_or_flat_folder_split_by_a_seeded_permutation(tmp_path):
    imgs = synthetic_images(10)
    for i in range(10):  # class folders, nested at different depths
        write_rgb(tmp_path / "imgs" / f"n0{i % 3}" / ("deep" if i % 2 else "") / f"{i}.png", imgs[i])
    cfg = DataConfig(source=str(tmp_path / "imgs"), width=16, height=12, train_scenes=6, val_scenes=2, test_scenes=2, seed=3)
    manifest = split_manifest(cfg)
    parts = [manifest[s][str(tmp_path / "imgs")] for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [6, 2, 2]  # val = test = round(10 * 2 / 10)
    assert sorted(sum(parts, [])) == sorted(f"n0{i % 3}/{'deep/' if i % 2 else ''}{i}.png" for i in range(10))
    assert all(p == sorted(p) for p in parts)
    assert split_manifest(cfg) == manifest  # a pure function of the seed
    other = split_manifest(DataConfig(source=str(tmp_path / "imgs"), train_scenes=6, val_scenes=2, test_scenes=2, seed=4))
    assert other != manifest
    test = sample_dataset("image", cfg, "test")[0]
    first = parts[2][0]
    assert torch.equal(test[0]["image"], imgs[int(first.rsplit("/", 1)[1][:-4])])  # 16x12 at 16x12: as stored
    with pytest.raises(InputError, match="too few for train 6 : val 2 : test 2"):
        split_manifest(DataConfig(source=str(tmp_path / "imgs" / "n00" / "deep"), train_scenes=6, val_scenes=2, test_scenes=2))


def test_scene_folders_are_not_image_sources(tmp_path):
    vs = generate_scene(0, SyntheticConfig(kind="room", num_views=2, width=8, height=8))
    write_scannet(vs, tmp_path / "scenes" / "s0")
    assert not is_image_source(tmp_path / "scenes") and not is_image_source(tmp_path / "scenes" / "s0")
    assert not is_image_source(tmp_path / "nothing_here")


def test_an_rgbd_recipe_given_an_image_folder_is_a_one_line_error(tmp_path):
    for i, img in enumerate(synthetic_images(3)):
        write_rgb(tmp_path / "photos" / f"{i}.png", img)
    cfg = load_experiment("mask3d_tiny", [f"data.source={tmp_path / 'photos'}", "mask3d.init_from=null"])
    with pytest.raises(InputError) as err:
        pretraining_data(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith("mask3d trains on rgbd samples and needs posed RGB-D scenes")
    assert str(tmp_path / "photos") in message


def test_an_unreadable_image_is_skipped_and_named(tmp_path):
    imgs = synthetic_images(4)
    for i, img in enumerate(imgs):
        write_rgb(tmp_path / "photos" / f"{i}.jpg", img)
    bad = tmp_path / "photos" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    cfg = DataConfig(source=str(tmp_path / "photos"), width=12, height=12, train_scenes=1, val_scenes=0, test_scenes=0)
    ds, _ = sample_dataset("image", cfg, "train")
    with pytest.raises(InputError, match=r"1\.jpg: cannot read image"):
        ds[1]
    sample, problems = SkipUnreadable(ds)[1]
    assert len(problems) == 1 and str(bad) in problems[0] and torch.equal(sample["image"], ds[2]["image"])


def test_mae_pretrains_on_an_image_folder_and_saves_the_split(tmp_path, capsys):
    imgs = synthetic_images(8, W=20, H=16)
    for i, img in enumerate(imgs):
        write_rgb(tmp_path / "photos" / ("a" if i < 4 else "b") / f"{i}.png", img)
    cfg = load_experiment("mae_tiny", [
        f"train.out_dir={tmp_path / 'run'}", "train.progress=false", "train.device=cpu", "train.steps=2",
        "train.batch_size=4", "train.ckpt_every=100", "train.preview_every=100", "train.log_every=1",
        "mae.encoder={preset: null, embed_dim: 32, depth: 1, num_heads: 2, img_size: 16, patch_size: 4}",
        "mae.decoder_embed_dim=16", "mae.decoder_depth=1", "mae.decoder_num_heads=2", f"data.source={tmp_path / 'photos'}",
        "data.width=16", "data.height=16", "data.train_scenes=6", "data.val_scenes=1", "data.test_scenes=1"])
    assert run_pretraining(cfg).steps_done == 2
    out = capsys.readouterr().out
    assert "8 plain images, split by image: a permutation seeded by data.seed=0" in out and "train 6, val 1, test 1" in out
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert sorted(sum((v for s in splits.values() for v in s.values()), [])) == sorted(
        f"{'a' if i < 4 else 'b'}/{i}.png" for i in range(8))


def test_an_image_folder_as_pretraining_pool_may_not_hold_held_out_images(tmp_path):
    imgs = synthetic_images(4)
    for i, img in enumerate(imgs):
        write_rgb(tmp_path / "photos" / f"{i}.png", img)
        Image.open(tmp_path / "photos" / f"{i}.png").save(tmp_path / f"pool_{i}.png")
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "extra.png").symlink_to(tmp_path / "pool_0.png")
    cfg = DataConfig(source=str(tmp_path / "photos"), width=12, height=12, train_scenes=2, val_scenes=1, test_scenes=1,
                     pretrain_source=str(tmp_path / "pool"))
    assert len(sample_dataset("image", cfg, "pretrain")[0]) == 1  # all images of the pool
    test_image = split_manifest(cfg)["test"][str(tmp_path / "photos")][0]
    (tmp_path / "pool" / "held_out.png").symlink_to(tmp_path / "photos" / test_image)
    with pytest.raises(InputError, match="val or test image of data.source"):
        sample_dataset("image", cfg, "pretrain")


def test_split_folders_are_found_below_the_source_too(tmp_path):
    """BSDS500 as downloaded: data.source at the dataset root, the splits in data/images/{train,val,test}."""
    imgs = synthetic_images(4)
    root = tmp_path / "BSDS500"
    for i, (split, name) in enumerate([("train", "a.jpg"), ("train", "b.jpg"), ("val", "c.jpg"), ("test", "d.jpg")]):
        write_rgb(root / "data" / "images" / split / name, imgs[i], jpg_quality=100)
    write_rgb(root / "extra.jpg", imgs[0], jpg_quality=100)  # outside the splits: not used
    cfg = DataConfig(source=str(root), width=12, height=12)
    assert [len(sample_dataset("image", cfg, s)[0]) for s in ("pretrain", "val", "test")] == [2, 1, 1]
    assert split_manifest(cfg)["test"] == {str(root): ["data/images/test/d.jpg"]}
