"""PonderV2 image branch (models/volume/image_volume.py, methods/ponder.py encoder_architecture resnet | vit):
a coordinate-encoding encoder lifted through ImageVolume returns every voxel centre's own pixel (the K of the
feature map is right); the unit cube fit to the frames' depth holds every back-projected point, lowest at
z = -0.5, extent 1; patch masks are exact; gradient reaches every ResNet parameter; a tiny run on one scene
halves its RGB and depth L1; the ResNet is the exported encoder; unknown architectures are refused; the
preset pretrains through the CLI."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import _ponder_fixture as fixture
from _ponder_fixture import SMALL, gen

from renderssl.errors import InputError
from renderssl.geometry import Cameras
from renderssl.methods.base import StepContext
from renderssl.models.encoders.resnet import ResNet
from renderssl.models.encoders.vit import VisionTransformer
from renderssl.models.volume import ImageVolume, apply_to_points, frames_unit_cube, patch_mask, voxel_centres



def tiny_setup(overrides=(), scenes: int = 1):
    """(method, collated batch of ``scenes`` samples) of the ponder_images_tiny preset at 32x24."""
    return fixture.tiny_setup("ponder_images_tiny", overrides, scenes)


# ---- lifting through ImageVolume -----------------------------------------------------------------
class PixelCoordinates(nn.Module):
    """A 'ViT' whose patch features are the image-pixel coordinates (u, v) of each feature cell's centre."""

    patch_size = 4

    def patch_features(self, x):
        F_, _, H, W = x.shape
        s = self.patch_size
        v, u = torch.meshgrid((torch.arange(H // s) + 0.5) * s, (torch.arange(W // s) + 0.5) * s, indexing="ij")
        return torch.stack([u, v])[None].expand(F_, -1, -1, -1).to(x)  # (F, 2, H/s, W/s)


def test_a_voxel_reads_the_feature_at_its_own_pixel():
    W, H, grid = 32, 24, (8, 8, 4)
    volume = ImageVolume("vit", 2, 2, grid)
    with torch.no_grad():
        volume.projection.weight.copy_(torch.eye(2)[:, :, None, None])
        volume.projection.bias.zero_()
    K = torch.tensor([[[[30.0, 0, 16], [0, 30, 12], [0, 0, 1]]]])  # (1, 1, 3, 3)
    c2w = torch.eye(4)[None, None].clone()
    c2w[..., :3, 3] = torch.tensor([0.1, -0.05, -1.0])  # in front of the cube, looking along +z
    lifted = volume(PixelCoordinates(), torch.rand(1, 1, 3, H, W), K, c2w)  # (1, 2, Z, Y, X)
    centres = voxel_centres(grid).reshape(-1, 3)  # (N, 3)
    uv, z = Cameras(K[0], c2w[0], W, H).project(centres[None])  # (1, N, 2), (1, N) independent projection
    uv, got = uv[0], lifted[0].reshape(2, -1).T  # (N, 2) each
    inside = (uv[:, 0] >= 2) & (uv[:, 0] <= W - 2) & (uv[:, 1] >= 2) & (uv[:, 1] <= H - 2)  # between outer cell centres
    outside = (uv[:, 0] < 0) | (uv[:, 0] >= W) | (uv[:, 1] < 0) | (uv[:, 1] >= H)
    assert inside.sum() > 20 and outside.sum() > 20
    torch.testing.assert_close(got[inside], uv[inside], atol=1e-4, rtol=0)  # bilinear is exact on a linear map
    assert (got[outside] == 0).all()
    with pytest.raises(InputError, match="multiples of the feature stride"):
        volume(PixelCoordinates(), torch.rand(1, 1, 3, H, W + 2), K, c2w)


def test_the_unit_cube_of_the_frames_holds_their_back_projected_depth():
    _, batch = tiny_setup()
    depth, K, c2w = batch["depth"], batch["K"], batch["c2w"]  # (1, V, 1, H, W), ...
    B, V, _, H, W = depth.shape
    S = frames_unit_cube(depth, K, c2w, stride=1)  # (1, 4, 4)
    # independent back-projection, pixel by pixel formula: x = (u - cx) z / fx, then c2w
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    z = depth[0, :, 0]  # (V, H, W)
    k = K[0]
    cam = torch.stack([(u - k[:, None, None, 0, 2]) * z / k[:, None, None, 0, 0],
                       (v - k[:, None, None, 1, 2]) * z / k[:, None, None, 1, 1], z], dim=-1)  # (V, H, W, 3)
    world = torch.einsum("vij,vhwj->vhwi", c2w[0, :, :3, :3], cam) + c2w[0, :, None, None, :3, 3]
    points = world[z > 0]  # (n, 3)
    unit = apply_to_points(points, torch.zeros(len(points), dtype=torch.long), S)  # (n, 3)
    lo, hi = unit.amin(0), unit.amax(0)
    torch.testing.assert_close(float((hi - lo).max()), 1.0, atol=1e-5, rtol=0)  # extent 1
    torch.testing.assert_close(float(lo[2]), -0.5, atol=1e-5, rtol=0)  # floor at the bottom face
    torch.testing.assert_close(lo[:2], -hi[:2], atol=1e-5, rtol=0)  # x, y centred
    coarse = frames_unit_cube(depth, K, c2w, stride=3)
    assert not torch.equal(coarse, S) and torch.allclose(coarse, S, atol=0.1)
    with pytest.raises(InputError, match="'room-x'"):
        frames_unit_cube(torch.zeros_like(depth), K, c2w, scenes=["room-x"])


def test_patch_masks_zero_exactly_round_ratio_patches_per_frame():
    keep = patch_mask(5, 24, 30, 8, 0.4, gen(0))  # 3 x 4 patches, the last column cut at 30
    assert keep.shape == (5, 1, 24, 30)
    patches = keep[:, 0, ::8, ::8]  # (5, 3, 4) one value per patch
    assert torch.equal(keep, patches.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None, :24, :30])
    assert (patches.reshape(5, -1).sum(1) == 12 - round(0.4 * 12)).all()
    assert torch.equal(keep, patch_mask(5, 24, 30, 8, 0.4, gen(0)))  # seeded
    assert patch_mask(2, 8, 8, 4, 0.0, None).all()


# ---- the method ----------------------------------------------------------------------------------
def test_the_image_branch_needs_no_cloud_and_gets_gradient_into_every_resnet_parameter():
    model, batch = tiny_setup(["ponder.image_mask_ratio=0.3"])
    assert "cloud" not in batch and "scene_cloud" not in type(model).sample_options(model.config)
    assert isinstance(model.encoder, ResNet) and model.encoder_architecture == "resnet" and model.mask_token is None
    masked, _ = model.feature_volume_from_images(batch, gen(0))
    plain, S = model.feature_volume_from_images(batch)  # no generator: nothing masked (evaluation)
    assert not torch.allclose(masked, plain)
    out = model(batch, StepContext(generator=gen(0)))
    out.loss.backward()
    assert float(out.terms["hit_fraction"]) == 1.0  # the cube holds every supervised surface point
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all(), name


def test_a_tiny_run_on_one_scene_halves_rendered_rgb_and_depth_l1():
    model, batch = tiny_setup(["data.width=64", "data.height=48"])
    rgb, depth, out = fixture.fit_fixed_batch(model, batch, steps=50, lr=1e-3)
    assert min(rgb[-3:]) <= 0.5 * rgb[0], rgb
    assert min(depth[-3:]) <= 0.5 * depth[0], depth


def test_a_vit_image_branch_runs_and_trains_its_vit():
    model, batch = tiny_setup(["ponder.encoder_architecture=vit", "ponder.vit.preset=tiny", "ponder.vit.depth=1",
                               "ponder.vit.patch_size=8"])
    assert isinstance(model.encoder, VisionTransformer) and model.encoder_config()["patch_size"] == 8
    out = model(batch, StepContext(generator=gen(0)))
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_unknown_architectures_and_bad_values_are_refused():
    from renderssl.experiment import load_experiment

    with pytest.raises(InputError, match="encoder_architecture"):
        load_experiment("ponder_images_tiny", ["ponder.encoder_architecture=pointnet2"])
    with pytest.raises(InputError, match="image_mask_ratio"):
        load_experiment("ponder_images_tiny", ["ponder.image_mask_ratio=1.0"])
    with pytest.raises(InputError, match="architecture"):
        ImageVolume("convnext", 8, 8)


def test_the_preset_pretrains_through_the_cli_and_exports_the_resnet(tmp_path):
    from renderssl.cli import main
    from renderssl.export import read_encoder_info

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["pretrain", "ponder_images_tiny", *SMALL, "train.steps=2", "train.batch_size=2",
                     "train.preview_every=1", f"train.out_dir={tmp_path}"])
    assert code == 0
    info = read_encoder_info(tmp_path / "encoder")
    assert info["architecture"] == "resnet" and info["config"]["depth"] == 18
    state = torch.load(tmp_path / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert any(k.startswith("encoder.layer4.") for k in state)
    assert not any(k.startswith("image_volume.encoder") for k in state)  # the ResNet is stored once
    assert list((tmp_path / "previews").glob("*.png"))
