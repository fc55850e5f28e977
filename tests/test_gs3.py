"""GS³ 3D path (methods/gs3.py): the point mask keeps exactly half and only kept points make Gaussians; the
joint rotation keeps every point on its pixel in every camera; a tiny run halves its loss on a fixed batch; the
LPIPS weights are required by name unless lpips_weight=0; the presets build and train through the experiment."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from renderssl.data.datasets import near_far
from renderssl.data.synthetic import generate_scene
from renderssl.data.synthetic.config import SyntheticConfig
from renderssl.errors import InputError
from renderssl.geometry import Cameras
from renderssl.methods.base import StepContext
from renderssl.methods.gs3 import GS3, GS3Config, LPIPSWeights, random_rotations
from renderssl.models.encoders.pointnet2 import PointNet2Config
from renderssl.models.encoders.resnet import ResNetConfig
from renderssl.models.heads.epipolar import EpipolarTransformerConfig
from renderssl.models.encoders.sparse_unet import SparseUNetConfig
from renderssl.models.heads.gaussian_head import GaussianHeadConfig

W, H = 32, 24


@pytest.fixture(scope="module")
def batch() -> dict:
    """Two synthetic rooms, each: context pair 5 frames apart plus one extra target view."""
    samples = []
    for seed, ids in ((0, [0, 5, 2]), (1, [1, 6, 3])):
        vs = generate_scene(seed, SyntheticConfig(num_views=8, width=W, height=H))
        ids = torch.tensor(ids)
        depth = vs.depth[ids].float()  # (3, 1, H, W)
        near, far = near_far(depth, (0.1, 100.0))
        samples.append(dict(rgb=vs.rgb[ids].float(), depth=depth, K=vs.K[ids].float(), c2w=vs.c2w[ids].float(),
                            near=near, far=far))
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def tiny(center: str = "depth_bins", arch: str = "pointnet2", k: int = 2, **kw) -> GS3:
    cfg = GS3Config(encoder_architecture=arch, pointnet2=PointNet2Config(preset="small"),
                    sparse_unet=SparseUNetConfig(preset="small", in_channels=3, grid_size=0.1),
                    head=GaussianHeadConfig(center=center, gaussians_per_element=k, sh_degree=1), lpips_weight=0.0, **kw)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GS3(cfg)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("center", ["depth_bins", "point_offset"])
def test_exactly_half_the_points_are_kept_and_masked_points_make_no_gaussians(batch, center):
    model, k = tiny(center, k=2), 2
    prep = model.prepare(batch, gen(3))
    cloud, keep = prep["cloud"], prep["keep"]
    valid = (batch["depth"][:, :2] > 0).reshape(2, -1).sum(1)  # (B,) valid context pixels, counted independently
    assert cloud.counts.tolist() == valid.tolist()
    kept = torch.bincount(cloud.batch[keep], minlength=2)  # (B,)
    assert kept.tolist() == [n - math.floor(n * 0.5 + 0.5) for n in valid.tolist()]  # round(n/2) masked
    even = torch.tensor([int(n) // 2 * 2 for n in valid])  # an even-sized cloud keeps exactly half
    assert all(int(n) % 2 or int(m) * 2 == int(n) for n, m in zip(valid, kept)) and even.sum() > 0
    head_out, point_index = model.predict_gaussians(prep)
    sources = point_index[head_out.valid]  # packed point index of every real Gaussian
    per_point = torch.bincount(sources, minlength=len(keep))  # (N,)
    assert per_point[keep].eq(k).all() and per_point[~keep].eq(0).all()
    assert (point_index[~head_out.valid] == -1).all() and (head_out.gaussians.opacities[~head_out.valid] == 0).all()
    if center == "depth_bins":  # each Gaussian on its point's pixel ray in the rotated source camera (sub-pixel shift <= 0.5 px)
        cams = prep["cameras"]
        b, v = cloud.batch[sources], cloud.view[sources]
        uv, z = Cameras(cams.K[b, v], cams.c2w[b, v], W, H).project(head_out.gaussians.means[head_out.valid][:, None])
        assert ((uv[:, 0] - cloud.uv[sources]).abs().max() <= 0.5 + 1e-3) and bool((z > 0).all())


def test_the_rotation_keeps_every_point_on_its_pixel_in_every_camera(batch):
    model = tiny()
    prep = model.prepare(batch, gen(7))
    cloud, cams = prep["cloud"], prep["cameras"]
    original = GS3.check_batch(batch)
    world = Cameras(original[2][:, :2], original[3][:, :2], W, H).backproject_depth(batch["depth"][:, :2])  # (B, 2, H, W, 3) unrotated
    before = world.reshape(-1, 3)[cloud.flat]  # (N, 3)
    assert (cloud.points - before).norm(dim=-1).max() > 0.1  # the scene did move
    b = cloud.batch
    uv0, z0 = Cameras(original[2][b], original[3][b], W, H).project(before[:, None, None])  # (N, V, 1, 2): unrotated
    uv1, z1 = Cameras(cams.K[b], cams.c2w[b], W, H).project(cloud.points[:, None, None])  # rotated points and cameras
    # every point, every camera (3 views); float32 rounding grows with |uv| for points near another camera's plane
    assert ((uv1 - uv0).abs() <= 1e-3 + 1e-5 * uv0.abs()).all() and ((z1 - z0).abs() <= 1e-4 + 1e-5 * z0.abs()).all()
    own = uv1[torch.arange(len(b)), cloud.view, 0]  # (N, 2) in its source camera
    assert (own - cloud.uv).abs().max() < 2e-3 and (z1[torch.arange(len(b)), cloud.view, 0] - cloud.depth).abs().max() < 1e-4
    R = prep["rotations"]  # (B, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(2, 3, 3), atol=1e-12)
    # the angle ranges: X, Y tilt the z axis by at most sqrt(2) pi/64; Z spans (-pi, pi)
    many = random_rotations(2000, math.pi / 64, math.pi, gen(1))  # (2000, 3, 3)
    tilt = torch.acos(many[:, 2, 2].clamp(-1, 1))
    assert tilt.max() <= math.sqrt(2) * math.pi / 64 + 1e-9 and tilt.max() > 0.8 * math.pi / 64
    yaw = torch.atan2(many[:, 1, 0], many[:, 0, 0])
    assert yaw.min() < -0.95 * math.pi and yaw.max() > 0.95 * math.pi
    flat = random_rotations(50, 0.0, math.pi, gen(2))
    assert torch.allclose(flat[:, 2, 2], torch.ones(50, dtype=flat.dtype))


@pytest.mark.parametrize("center, arch", [("depth_bins", "pointnet2"), ("point_offset", "sparse_unet")])
def test_a_tiny_3d_run_halves_its_loss_on_a_fixed_batch(batch, center, arch):
    out, losses = fit_fixed_batch(tiny(center, arch), batch)
    assert out.renders["rendering 0"].shape == (2, 3, H, W)
    assert min(losses[-3:]) <= 0.5 * losses[0], losses


def fit_fixed_batch(model, batch, steps: int = 12):
    """Adam on one batch with the same masks every step: (last output, losses)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        out = model(batch, StepContext(generator=gen(0), step=1))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return out, losses


def tiny_2d(**kw) -> GS3:
    cfg = GS3Config(encoder_architecture="resnet", resnet=ResNetConfig(depth=18),
                    epipolar=EpipolarTransformerConfig(dim=32, layers=1, heads=2, dim_head=16, mlp_dim=64, num_samples=16),
                    head=GaussianHeadConfig(gaussians_per_element=2, sh_degree=1), lpips_weight=0.0, **kw)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GS3(cfg)


def test_2d_path_keeps_exactly_half_the_pixels_and_only_they_make_gaussians(batch):
    model = tiny_2d()
    prep = model.prepare_pixels(batch, gen(4))
    keep = prep["keep"]  # (B 2 H W,)
    assert keep.reshape(2, -1).sum(1).tolist() == [H * W, H * W]  # half of 2 H W pixels per scene
    head_out, pixel_index = model.predict_gaussians_2d(batch["rgb"], prep)
    per_pixel = torch.bincount(pixel_index[head_out.valid], minlength=len(keep))
    assert per_pixel[keep].eq(2).all() and per_pixel[~keep].eq(0).all()
    # a masked pixel's colour never reaches the Gaussians: changing it changes nothing
    changed = dict(batch, rgb=batch["rgb"].clone())
    hidden = (~keep).reshape(2, 2, 1, H, W).expand(-1, -1, 3, -1, -1)
    changed["rgb"][:, :2][hidden] = torch.rand(int(hidden.sum()))
    model.eval()
    with torch.no_grad():
        a = model.predict_gaussians_2d(batch["rgb"], prep)[0].gaussians.means
        b = model.predict_gaussians_2d(changed["rgb"], prep)[0].gaussians.means
    assert torch.equal(a, b)
    with pytest.raises(InputError, match="gs3.head.center"):
        GS3Config(encoder_architecture="resnet", head=GaussianHeadConfig(center="point_offset"))


def test_a_tiny_2d_run_halves_its_loss_on_a_fixed_batch(batch):
    out, losses = fit_fixed_batch(tiny_2d(), batch)
    assert out.renders["visible 1"].shape == (2, 3, H, W)
    assert min(losses[-3:]) <= 0.5 * losses[0], losses


def test_missing_lpips_weights_stop_the_recipe_naming_the_key_and_weight_zero_says_mse_only(tmp_path):
    cfg = GS3Config(pointnet2=PointNet2Config(preset="small"), lpips_weights=LPIPSWeights(vgg_path=str(tmp_path / "none.pth")))
    with pytest.raises(InputError) as err:
        GS3(cfg)
    message = str(err.value)
    assert message.startswith("gs3.lpips_weights:") and "gs3.lpips_weight=0" in message and "none.pth" in message
    assert "\n" not in message
    with pytest.warns(UserWarning, match=r"gs3.lpips_weight=0: training with the MSE loss only") as record:
        GS3(GS3Config(pointnet2=PointNet2Config(preset="small"), lpips_weight=0.0))
    assert len([w for w in record if "lpips_weight" in str(w.message)]) == 1


def test_with_weights_the_loss_is_mse_plus_005_lpips(batch, tmp_path):
    from renderssl.eval.lpips import LPIPS

    torch.manual_seed(1)
    reference = LPIPS()  # random VGG and head weights, saved the way the real files are laid out
    for p in reference.parameters():
        p.data.abs_()
    torch.save({k: v for k, v in reference.state_dict().items() if k.startswith("features.")}, tmp_path / "vgg.pth")
    torch.save({k: v for k, v in reference.state_dict().items() if k.startswith("lin")}, tmp_path / "lin.pth")
    cfg = GS3Config(pointnet2=PointNet2Config(preset="small"), head=GaussianHeadConfig(gaussians_per_element=1),
                    lpips_weights=LPIPSWeights(str(tmp_path / "vgg.pth"), str(tmp_path / "lin.pth")))
    model = GS3(cfg)
    assert not any(n.startswith("_lpips") or "features." in n for n in model.state_dict())  # not checkpointed
    out = model(batch, StepContext(generator=gen(0)))
    rendered = out.extras["rendered"]  # (B, V, 3, H, W)
    lp = reference(rendered.flatten(0, 1), batch["rgb"].flatten(0, 1)).mean()
    mse = ((rendered - batch["rgb"]) ** 2).mean()
    assert float(out.terms["lpips"]) == pytest.approx(float(lp), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(mse + 0.05 * lp), rel=1e-5)


def test_the_presets_build_and_train_through_the_experiment(tmp_path):
    from renderssl.experiment import build_method, load_experiment, pretraining_data, run_pretraining
    from renderssl.export import read_encoder_info

    small = ["data.width=32", "data.height=24", "data.views=8", "data.train_scenes=2", "data.val_scenes=1",
             "data.test_scenes=1", "train.batch_size=2", "train.progress=false"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = load_experiment("gs3_rgbd_base", small + ["gs3.lpips_weight=0"])
        assert base.recipe.head.in_dim == 128 and base.recipe.sparse_unet.out_channels == 128
        assert (base.data.width, base.train.batch_size) == (32, 2) and base.optim.min_lr == 1e-6
        assert isinstance(build_method(base), GS3)
        with pytest.raises(InputError, match="gs3.lpips_weights"):
            build_method(load_experiment("gs3_rgbd_base"))
        cfg = load_experiment("gs3_rgbd_tiny", small + ["train.steps=2", "train.preview_every=1", f"train.out_dir={tmp_path / 'run'}"])
        dataset, collate = pretraining_data(cfg)
        sample = collate([dataset[0], dataset[1]])
        assert sample["rgb"].shape == (2, 2, 3, 24, 32)
        assert (sample["view_ids"][:, 1] - sample["view_ids"][:, 0]).tolist() == [5, 5]  # the frame interval
        summary = run_pretraining(cfg)
    assert summary.steps_done == 2 and math.isfinite(summary.last_loss)
    assert read_encoder_info(tmp_path / "run" / "encoder")["architecture"] == "pointnet2"
    assert list((tmp_path / "run" / "previews").glob("*.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rgb = load_experiment("gs3_rgb_tiny", small + ["train.steps=1", f"train.out_dir={tmp_path / 'rgb'}"])
        assert run_pretraining(rgb).steps_done == 1
    assert read_encoder_info(tmp_path / "rgb" / "encoder")["architecture"] == "resnet"


@pytest.mark.parametrize("path", ["3d", "2d"])
def test_render_targets_renders_only_the_targets_without_mask_or_rotation(batch, path):
    model = (tiny() if path == "3d" else tiny_2d()).eval()
    with torch.no_grad():
        torch.manual_seed(1)
        first = model.render_targets(batch)
        torch.manual_seed(2)  # no random draw anywhere: the global generator does not matter either
        second = model.render_targets(batch)
    assert first.shape == (2, 1, 3, H, W) and torch.equal(first, second)
    # the same Gaussians as an unmasked, unrotated forward input, rasterized into view 2 only
    if path == "3d":
        prep = model.prepare(batch, gen(5), mask_ratio=0.0, augment=False)
        assert bool(prep["keep"].all()) and torch.equal(prep["cameras"].c2w, batch["c2w"])
        assert torch.equal(prep["cloud"].points, model.prepare(batch, gen(6), mask_ratio=0.0, augment=False)["cloud"].points)
        head_out = model.predict_gaussians(prep)[0]
    else:
        prep = model.prepare_pixels(batch, gen(5), mask_ratio=0.0)
        assert bool(prep["keep"].all())
        head_out = model.predict_gaussians_2d(batch["rgb"], prep)[0]
    with torch.no_grad():
        every = model.render(head_out, prep["cameras"]).color  # (B, 3, 3, H, W): all views
    torch.testing.assert_close(first[:, 0], every[:, 2], atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError, match="render_targets"):
        model.render_targets({k: v[:, :2] if torch.is_tensor(v) and v.dim() > 1 else v for k, v in batch.items()})
