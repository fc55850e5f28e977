"""PonderV2 evaluation (eval/ponder_eval.py): rendered ray distance back to z-depth in metres by hand; the
full-frame renderer puts every pixel's own ray in its place, independently of the chunk size; an analytic
sphere SDF at a known world position meshes onto that sphere (unit cube <-> metres); a ponder_tiny run
trained 2 steps is evaluated end to end, through ``renderssl evaluate``'s dispatch."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from _ponder_fixture import SMALL, gen

from renderssl.eval import ponder_eval
from renderssl.eval.ponder_eval import (
    NO_SURFACE, PonderEvalTransform, context_views, render_target_frames, scene_mesh, unit_distance_to_z_metres,
)
from renderssl.eval.surfaces import chamfer_and_fscore, sample_surface
from renderssl.geometry import Cameras
from renderssl.models.volume import apply_to_cameras, apply_to_points, scale_of, unit_cube_transforms

f64 = torch.float64
def tiny(overrides=()):
    """(config, method, one collated evaluation sample) of ponder_tiny at 32x24."""
    from renderssl.data.build import load_split
    from renderssl.data.datasets import collate_stacked
    from renderssl.experiment import build_method, load_experiment

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = load_experiment("ponder_tiny", [*SMALL, *overrides])
        method = build_method(cfg).eval()
    dataset = ponder_eval.ponder_eval_dataset(load_split(cfg.data, "test"), cfg.data, cfg.recipe,
                                              (cfg.data.height, cfg.data.width))
    return cfg, method, collate_stacked([dataset[0]])


# ---- depth back to metres ---------------------------------------------------------------------------
def test_unit_ray_distance_back_to_metres_by_hand():
    # a ray at 45 degrees to the optical axis, 2 unit-cube units long, scale s = 0.25: z = 2 cos 45° / 0.25
    d = torch.tensor([[math.sqrt(0.5), 0.0, math.sqrt(0.5)]], dtype=f64)
    z = unit_distance_to_z_metres(torch.tensor([2.0], dtype=f64), d, torch.tensor([[0.0, 0.0, 1.0]], dtype=f64),
                                  torch.tensor([0.25], dtype=f64))
    torch.testing.assert_close(z, torch.tensor([2 * math.sqrt(0.5) / 0.25], dtype=f64))
    # geometric: a world point at z-depth 3 m of a tilted camera, seen through the unit cube of a cloud
    cloud = torch.tensor([[-2.0, -1.0, 0.0], [4.0, 3.0, 2.5]], dtype=f64)
    S = unit_cube_transforms(cloud, torch.tensor([2]))  # (1, 4, 4)
    angle = 0.3
    c2w = torch.eye(4, dtype=f64)
    c2w[:3, :3] = torch.tensor([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]], dtype=f64)
    c2w[:3, 3] = torch.tensor([0.5, 0.2, 1.2], dtype=f64)
    point_cam = torch.tensor([0.7, -0.4, 3.0], dtype=f64)  # z-depth 3 m
    point = c2w[:3, :3] @ point_cam + c2w[:3, 3]  # (3,) world
    c2w_unit = apply_to_cameras(c2w[None, None], S)[0, 0]  # (4, 4)
    p_unit = apply_to_points(point[None], torch.zeros(1, dtype=torch.int64), S)[0]  # (3,)
    ray = p_unit - c2w_unit[:3, 3]  # (3,) from the camera centre in the unit cube
    distance = ray.norm()
    z = unit_distance_to_z_metres(distance[None], (ray / distance)[None], c2w_unit[None, :3, 2], scale_of(S))
    torch.testing.assert_close(z, torch.tensor([3.0], dtype=f64))


# ---- the full-frame renderer ------------------------------------------------------------------------
def test_every_pixel_gets_its_own_ray_once_whatever_the_chunk(monkeypatch):
    cfg, method, batch = tiny()
    C = method.num_context
    calls = []

    def fake_render(method, volume, origins, directions):  # colour = the ray's direction, distance 1
        calls.append(len(origins))
        return directions * 0.5 + 0.5, torch.ones(len(origins))

    monkeypatch.setattr(ponder_eval, "render_rays", fake_render)
    rgb, depth = render_target_frames(method, batch, chunk=7)  # (1, 1, 3, 24, 32), (1, 1, 1, 24, 32)
    assert rgb.shape == (1, 1, 3, 24, 32) and depth.shape == (1, 1, 1, 24, 32)
    assert sum(calls) == 24 * 32 and max(calls) == 7
    # independent: pixel (i, j)'s ray direction from its back-projection at depth 1 (world frame: the
    # unit cube's similarity keeps directions)
    cams = Cameras(batch["K"][0, C:], batch["c2w"][0, C:], 32, 24)
    world = cams.backproject_depth(torch.ones(1, 1, 24, 32))[0]  # (24, 32, 3)
    expected = torch.nn.functional.normalize(world - batch["c2w"][0, C, :3, 3], dim=-1).permute(2, 0, 1)  # (3, 24, 32)
    torch.testing.assert_close(rgb[0, 0], (expected * 0.5 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
    # depth: distance 1 along the ray -> z = (d . axis) / s
    _, S = method.render_volume(context_views(batch, C))
    torch.testing.assert_close(depth[0, 0, 0], (expected.permute(1, 2, 0) @ batch["c2w"][0, C, :3, 2]) / scale_of(S)[0],
                               atol=1e-5, rtol=1e-5)


def test_chunking_does_not_change_the_rendering():
    torch.manual_seed(0)
    cfg, method, batch = tiny(["data.width=16", "data.height=12"])
    a_rgb, a_depth = render_target_frames(method, batch, chunk=7)
    b_rgb, b_depth = render_target_frames(method, batch, chunk=4096)
    assert a_rgb.shape == (1, 1, 3, 12, 16) and bool(torch.isfinite(a_depth).all())
    torch.testing.assert_close(a_rgb, b_rgb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a_depth, b_depth, atol=1e-5, rtol=1e-5)


def test_the_evaluation_transform_neither_augments_nor_masks():
    cloud = {"points": torch.rand(500, 3, generator=gen(1)) * 2, "colors": torch.rand(500, 3, generator=gen(2))}
    out = PonderEvalTransform(grid_size=0.5)({"cloud": cloud, "scene": "s"}, gen(3))["cloud"]
    kept = out["points"]
    assert "masked" not in out and torch.equal(out["normals"], torch.zeros_like(kept))
    # grid sampling only: one original point (not moved) per occupied 0.5 voxel
    voxels = torch.unique(torch.floor((cloud["points"] - cloud["points"].amin(0)) / 0.5), dim=0)
    assert len(kept) == len(voxels)
    assert bool((kept[:, None] == cloud["points"][None]).all(-1).any(1).all())


# ---- surfaces --------------------------------------------------------------------------------------
def test_an_analytic_sphere_sdf_meshes_onto_the_sphere_in_world_metres():
    centre, radius = torch.tensor([1.0, -0.5, 0.8], dtype=f64), 0.6
    room = torch.tensor([[-1.0, -2.0, 0.0], [3.0, 2.0, 2.5]], dtype=f64)  # the cloud's box: 4 m wide
    S = unit_cube_transforms(room, torch.tensor([2]))[0]  # (4, 4)
    s = float(scale_of(S[None])[0])
    inv = torch.linalg.inv(S)

    def sphere_sdf(p_unit):  # in unit-cube units, as the field's
        world = p_unit.double() @ inv[:3, :3].T + inv[:3, 3]
        return ((world - centre).norm(dim=-1) - radius) * s

    points_unit = apply_to_points(room, torch.zeros(2, dtype=torch.int64), S[None]).float()
    resolution = 64
    vertices, faces = scene_mesh(None, None, S, points_unit, resolution, sdf_fn=sphere_sdf)
    voxel = 1 / (resolution * s)  # metres
    assert len(faces) > 0
    torch.testing.assert_close((vertices.double() - centre).norm(dim=-1),
                               torch.full((len(vertices),), radius, dtype=f64), atol=voxel / 2, rtol=0)
    pred = sample_surface(vertices, faces, 20_000, gen(4))
    truth = torch.nn.functional.normalize(torch.randn(20_000, 3, generator=gen(5), dtype=f64), dim=-1) * radius + centre
    scores = chamfer_and_fscore(pred, truth.float(), 0.05)
    assert scores["chamfer"] < 0.01 and scores["fscore"] > 0.99


def test_a_field_without_zero_crossing_is_no_surface():
    S = unit_cube_transforms(torch.tensor([[0.0, 0, 0], [1.0, 1, 1]]), torch.tensor([2]))[0]
    vertices, faces = scene_mesh(None, None, S, torch.tensor([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]), 16,
                                 sdf_fn=lambda p: torch.ones(len(p)))
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)


# ---- end to end ------------------------------------------------------------------------------------
def test_a_two_step_tiny_run_evaluates_end_to_end(tmp_path, monkeypatch):
    from renderssl.cli import main
    from renderssl.evaluate import evaluate_run

    monkeypatch.setattr(ponder_eval, "SURFACE_POINTS", 2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["pretrain", "ponder_tiny", *SMALL, "train.steps=2", "train.batch_size=2",
                     f"train.out_dir={tmp_path}"]) == 0
        result = evaluate_run(tmp_path, max_frames=1, log=lambda *_: None)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["method"] == "ponder" and (tmp_path / "evaluation.png").is_file()
    frames, surfaces = saved["novel_frames"], saved["surfaces"]
    assert {"psnr", "ssim", "depth_abs_rel", "nearest_context_view", "scenes", "images"} <= set(frames)
    assert frames["scenes"] == frames["images"] == 1
    assert math.isfinite(frames["psnr"]) and math.isfinite(frames["nearest_context_view"]["psnr"])
    assert {"chamfer", "accuracy", "completeness", "precision", "recall", "fscore", "per_scene", "threshold", "meshed"} <= set(surfaces)
    assert surfaces["threshold"] == 0.05 and surfaces["surface_points"] == 2000
    (scene, entry), = surfaces["per_scene"].items()
    if entry["mesh"] == NO_SURFACE:
        assert entry["fscore"] == 0 and entry["chamfer"] == math.inf
    else:
        assert (tmp_path / "meshes" / f"{scene}.ply").is_file() and 0 <= entry["fscore"] <= 1
    assert result["novel_frames"]["psnr"] == pytest.approx(frames["psnr"])


def test_render_targets_is_the_full_frame_renderer():
    from renderssl.methods.base import Method
    from renderssl.methods.ponder import Ponder

    assert Ponder.render_targets is not Method.render_targets
    cfg, method, batch = tiny(["data.width=16", "data.height=12"])
    torch.testing.assert_close(method.render_targets(batch), render_target_frames(method, batch)[0])
