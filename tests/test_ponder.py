"""PonderV2 point branch (methods/ponder.py): the collider by hand; rays only at valid depth pixels, exactly
rays_per_view per frame, each reaching its back-projected pixel in the unit cube; the Dataset transform moves
cloud and cameras together (every point keeps its pixel, z-depth x s); masking; a tiny run on one scene
halves its RGB and depth L1; unknown keys are refused; the preset trains through the CLI."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import _ponder_fixture as fixture
from _ponder_fixture import SMALL, gen

from renderssl.data.synthetic import CLASS_NAMES, generate_scene
from renderssl.data.synthetic.config import SyntheticConfig
from renderssl.errors import InputError
from renderssl.geometry import Cameras
from renderssl.methods.base import StepContext
from renderssl.methods.ponder import COLLIDER, Ponder, PonderSceneTransform, ray_aabb, sample_ray_pixels
from renderssl.models.volume import apply_to_points

f64 = torch.float64


def tiny_setup(overrides=(), scenes: int = 2):
    """(method, collated batch of ``scenes`` samples) of the ponder_tiny preset at 32x24."""
    return fixture.tiny_setup("ponder_tiny", overrides, scenes)


# ---- rays ----------------------------------------------------------------------------------------
def test_ray_aabb_against_hand_cases():
    s3 = 1 / math.sqrt(3)
    o = torch.tensor([[0.0, 0, 0], [-1, 0.2, 0], [-1, -1, -1], [-1, 0.7, 0], [1, 0, 0], [0.5, 0, 0]], dtype=f64)
    d = torch.tensor([[1.0, 0, 0], [1, 0, 0], [s3, s3, s3], [1, 0, 0], [1, 0, 0], [-1, 0, 0]], dtype=f64)
    near, far, hit = ray_aabb(o, d, *COLLIDER, 0.01)
    assert hit.tolist() == [True, True, True, False, False, True]
    # inside: near clamped to 0.01; from outside: the entry face; diagonal: 0.45 sqrt 3 .. 1.55 sqrt 3
    torch.testing.assert_close(near[[0, 1, 2, 5]], torch.tensor([0.01, 0.45, 0.45 * math.sqrt(3), 0.01], dtype=f64))
    torch.testing.assert_close(far[[0, 1, 2, 5]], torch.tensor([0.55, 1.55, 1.55 * math.sqrt(3), 1.05], dtype=f64))
    with pytest.raises(InputError, match="ray_aabb"):
        ray_aabb(o, d[:, :2], *COLLIDER)


def test_sample_ray_pixels_picks_only_valid_pixels_exactly_count_per_frame():
    valid = torch.rand(6, 50, generator=gen(1)) < 0.3  # (6, 50)
    valid[4] = False
    valid[4, [3, 17]] = True  # fewer valid pixels than rays: repeated
    picks = sample_ray_pixels(valid, 8, gen(2))  # (6, 8)
    assert picks.shape == (6, 8) and valid.gather(1, picks).all()
    for f in range(6):
        if valid[f].sum() >= 8:
            assert len(set(picks[f].tolist())) == 8  # distinct when there are enough
    assert set(picks[4].tolist()) == {3, 17}
    assert torch.equal(picks, sample_ray_pixels(valid, 8, gen(2)))  # seeded


def test_rays_land_on_valid_pixels_and_reach_their_back_projected_point_in_the_unit_cube():
    model, batch = tiny_setup()
    B, V, _, H, W = batch["rgb"].shape
    R = model.config.rays_per_view
    volume, S = model.feature_volume(batch["cloud"])
    rays = model.sample_rays(batch, S, gen(0))
    assert rays.pixels.shape == (B, V, R) and rays.origins.shape == (B * V * R, 3)
    depth = batch["depth"][:, :, 0].reshape(B, V, H * W)
    assert (depth.gather(2, rays.pixels) > 0).all()  # every ray at a valid depth pixel
    # a ray misses the collider only when its surface point lies outside the cube of the (thinned) cloud
    assert rays.hit.float().mean() > 0.9 and torch.equal(rays.distance > 0, rays.hit)
    # independent: back-project each ray's pixel in the world, then move the point by S
    i, j = rays.pixels // W, rays.pixels % W
    cams = Cameras(batch["K"], batch["c2w"], W, H)
    world = cams.backproject_depth(batch["depth"]).reshape(B, V, H * W, 3)  # (B, V, H W, 3)
    points = world.gather(2, rays.pixels[..., None].expand(-1, -1, -1, 3)).reshape(-1, 3)  # (B V R, 3)
    scene = torch.arange(B).repeat_interleave(V * R)
    expected = apply_to_points(points, scene, S)  # (B V R, 3)
    reached = rays.origins + rays.distance[:, None] * rays.directions
    torch.testing.assert_close(reached[rays.hit], expected[rays.hit], atol=1e-4, rtol=0)
    colours = batch["rgb"].permute(0, 1, 3, 4, 2)[torch.arange(B)[:, None, None], torch.arange(V)[None, :, None], i, j]
    torch.testing.assert_close(rays.rgb, colours.reshape(-1, 3))


# ---- the Dataset transform -----------------------------------------------------------------------
def frame_sample(seed: int = 0) -> dict:
    """A multi-view sample whose cloud is frame 0's back-projected valid pixels (one point per pixel)."""
    vs = generate_scene(seed, SyntheticConfig(num_views=4, width=16, height=12))
    rgb, depth, K, c2w = vs.rgb[:3].float(), vs.depth[:3].float(), vs.K[:3].float(), vs.c2w[:3].float()
    cams = Cameras(K[:1], c2w[:1], 16, 12)
    valid = depth[0, 0] > 0  # (H, W)
    pixel = valid.reshape(-1).nonzero().squeeze(-1)  # (N,)
    cloud = {"points": cams.backproject_depth(depth[:1])[0].reshape(-1, 3)[pixel],
             "colors": rgb[0].permute(1, 2, 0).reshape(-1, 3)[pixel],
             "normals": vs.normals[0].float().permute(1, 2, 0).reshape(-1, 3)[pixel]}
    return {"rgb": rgb, "depth": depth, "K": K, "c2w": c2w, "cloud": cloud, "pixel": pixel, "scene": vs.name,
            "near": torch.tensor(0.5), "far": torch.tensor(9.0)}


def test_the_transform_moves_points_and_cameras_together_every_point_keeps_its_pixel():
    sample = frame_sample()
    moved_any = False
    for seed in range(4):  # flips and no flips
        out = PonderSceneTransform(grid_size=1e-5, input_mask="none")(sample, gen(seed))
        assert len(out["cloud"]["points"]) == len(sample["pixel"])  # a fine grid keeps every point, in order
        s = out["depth"][0, 0][sample["depth"][0, 0] > 0] / sample["depth"][0, 0][sample["depth"][0, 0] > 0]
        assert 0.9 <= float(s[0]) <= 1.1 and torch.allclose(s, s[0].expand_as(s))  # depth x one scale
        torch.testing.assert_close(out["near"], sample["near"] * s[0])
        uv, z = Cameras(out["K"][:1], out["c2w"][:1], 16, 12).project(out["cloud"]["points"][None])  # (1, N, 2), (1, N)
        centres = torch.stack([sample["pixel"] % 16 + 0.5, sample["pixel"] // 16 + 0.5], dim=-1).float()
        torch.testing.assert_close(uv[0], centres, atol=1e-3, rtol=0)
        torch.testing.assert_close(z[0], out["depth"][0, 0].reshape(-1)[sample["pixel"]], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out["cloud"]["normals"].norm(dim=-1), sample["cloud"]["normals"].norm(dim=-1))
        moved_any |= not torch.allclose(out["cloud"]["points"], sample["cloud"]["points"])
        assert torch.equal(out["rgb"], sample["rgb"])  # images unchanged
    assert moved_any
    again = PonderSceneTransform(grid_size=1e-5, input_mask="none")(sample, gen(3))
    torch.testing.assert_close(again["cloud"]["points"], out["cloud"]["points"])  # seeded
    assert "cloud" in sample and sample["cloud"]["points"] is not out["cloud"]["points"]  # no in-place change


def test_grid_sampling_and_masking():
    sample = frame_sample()
    n_grid = len(PonderSceneTransform(grid_size=0.3, input_mask="none")(sample, gen(0))["cloud"]["points"])
    assert n_grid < len(sample["pixel"])
    dropped = PonderSceneTransform(grid_size=0.3, input_mask="dropout", mask_ratio=0.8)(sample, gen(0))["cloud"]
    assert len(dropped["points"]) == n_grid - round(0.8 * n_grid) and "masked" not in dropped
    block = PonderSceneTransform(grid_size=0.3, input_mask="block", mask_ratio=0.5, mask_block=2)(sample, gen(0))["cloud"]
    assert len(block["points"]) == n_grid and block["masked"].dtype == torch.bool
    assert 0 < int(block["masked"].sum()) < n_grid
    # the method swaps masked points' features for its token
    model, _ = tiny_setup(["ponder.input_mask=block"], scenes=1)
    feats = model.point_features(block)
    assert torch.equal(feats[block["masked"]], model.mask_token.expand(int(block["masked"].sum()), -1).detach())
    torch.testing.assert_close(feats[~block["masked"], :3], 2 * block["colors"][~block["masked"]] - 1)


def test_a_frame_without_valid_depth_is_an_error_naming_the_scene():
    model, batch = tiny_setup(scenes=1)
    batch = dict(batch, depth=batch["depth"].clone())
    batch["depth"][0, 1] = 0
    with pytest.raises(InputError, match=repr(batch["scene"][0])):
        model(batch, StepContext(generator=gen(0)))


# ---- training ------------------------------------------------------------------------------------
def test_a_tiny_run_on_one_scene_halves_rendered_rgb_and_depth_l1():
    model, batch = tiny_setup(["data.width=64", "data.height=48"], scenes=1)
    rgb, depth, out = fixture.fit_fixed_batch(model, batch, steps=40, lr=3e-3)
    assert min(rgb[-3:]) <= 0.5 * rgb[0], rgb
    assert min(depth[-3:]) <= 0.5 * depth[0], depth
    assert out.rendered_pixels == 3 * 64 and out.renders["rendered rays 0"].shape == (1, 3, 48, 64)


def test_semantic_term_with_local_text_embeddings(tmp_path):
    path = tmp_path / "emb.pt"
    torch.save({"names": list(CLASS_NAMES), "embeddings": torch.randn(len(CLASS_NAMES), 8, generator=gen(0))}, path)
    names = "[" + ",".join(CLASS_NAMES) + "]"
    model, batch = tiny_setup([f"ponder.text_embeddings={path}", f"ponder.class_names={names}"], scenes=1)
    assert model.field.config.semantic_dim == 8 and model.class_embeddings.shape == (len(CLASS_NAMES), 8)
    out = model(batch, StepContext(generator=gen(0)))
    assert "semantic" in out.terms and math.isfinite(float(out.terms["semantic"]))
    with pytest.warns(UserWarning, match="semantic term off"):
        Ponder(type(model.config)(**{**model.config.__dict__, "text_embeddings": None}))


def test_unknown_config_keys_and_bad_values_are_refused():
    from renderssl.experiment import load_experiment

    with pytest.raises(InputError, match="rays_per_veiw"):
        load_experiment("ponder_tiny", ["ponder.rays_per_veiw=3"])
    with pytest.raises(InputError, match="input_mask"):
        load_experiment("ponder_tiny", ["ponder.input_mask=random"])
    with pytest.raises(InputError, match="dropout_ratio"):
        load_experiment("ponder_tiny", ["ponder.augment.dropout_ratio=0.5"])


def test_the_base_preset_is_the_official_config():
    from renderssl.experiment import load_experiment

    cfg = load_experiment("ponder_base")
    p = cfg.recipe
    assert p.sparse_unet.channels == (32, 64, 128, 256, 256, 128, 96, 96) and p.sparse_unet.layers == (2, 3, 4, 6, 2, 2, 2, 2)
    assert p.grid_shape == (128, 128, 32) and p.volume_channels == 128 and p.rays_per_view == 256
    assert (p.n_samples, p.n_importance, p.up_sample_steps, p.views.count) == (96, 36, 1, 5)
    assert p.sparse_unet.grid_size == p.grid_size == 0.02 and p.field.volume_channels == 128
    o = cfg.optim
    assert (o.name, o.nesterov, o.momentum, o.weight_decay, o.schedule) == ("sgd", True, 0.9, 1e-4, "onecycle")
    assert (o.pct_start, o.div_factor, o.final_div_factor, o.anneal_strategy) == (0.05, 10.0, 1e4, "cos")
    assert math.isclose(o.lr, 5e-4 * cfg.train.batch_size / 8)


def test_the_tiny_preset_pretrains_through_the_cli(tmp_path):
    from renderssl.cli import main
    from renderssl.export import read_encoder_info

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["pretrain", "ponder_tiny", *SMALL, "train.steps=2", "train.batch_size=2", "train.preview_every=1",
                     f"train.out_dir={tmp_path}"])
    assert code == 0
    assert read_encoder_info(tmp_path / "encoder")["architecture"] == "sparse_unet"
    assert list((tmp_path / "previews").glob("*.png"))
