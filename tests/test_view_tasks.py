"""NPS's view tasks (novel-view segmentation and depth): ray labels, metrics of forced heads, training,
the task / encoder pairing and `renderssl compare` end to end on a tiny exported NeRF."""

import json

import pytest
import torch
import torch.nn.functional as F

from renderssl.compare import CompareConfig, run_compare
from renderssl.data.datasets import collate_stacked
from renderssl.data.synthetic import SyntheticConfig, generate_scene
from renderssl.errors import InputError
from renderssl.eval.tasks import DownstreamConfig, ViewTaskConfig, assign_tasks, check_task_fits
from renderssl.eval.view_tasks import (
    build_view_model, gather_pixels, pick_ray_pixels, pixel_centres, score_views, target_labels, train_view_task,
    view_task_dataset,
)
from renderssl.export import export_encoder
from renderssl.models.encoders.resunet import ResUNetConfig
from renderssl.models.nerf.generalizable_nerf import GeneralizableNeRF, GeneralizableNeRFConfig
from renderssl.models.nerf.transformer import NeRFTransformerConfig
from renderssl.train.config import DataConfig, from_dict, to_dict

TINY = GeneralizableNeRFConfig(ResUNetConfig(preset="tiny"), NeRFTransformerConfig(preset="tiny", dropout=0.0))
VIEWS = ViewTaskConfig(source_views=3, rays_per_target=48, num_samples=8, eval_targets=1, eval_chunk=100)


def tiny_nerf() -> GeneralizableNeRF:
    torch.manual_seed(0)
    return GeneralizableNeRF(TINY)


def config(task: str, **fields) -> DownstreamConfig:
    return DownstreamConfig(**{"task": task, "steps": 2, "batch_size": 2, "warmup": 0, "lr": 1e-3, "views": VIEWS, **fields})


@pytest.fixture(scope="module")
def rooms():
    return [generate_scene(s, SyntheticConfig(kind="room", num_views=6, width=32, height=24)) for s in (1, 2)]


def eval_batch(rooms, task: str) -> dict:
    dataset = view_task_dataset(rooms, config(task), seed=0)
    return collate_stacked([dataset[i] for i in range(len(dataset))])


# ---- rays and their labels -----------------------------------------------------------------------
def test_ray_labels_are_the_target_pixels_labels():
    semantic = torch.tensor([[[0, -1, 2, 1], [-1, 3, 3, -1], [1, 0, -1, 2]]])  # (1, 3, 4) the target's
    batch = {"semantic": torch.stack([torch.full_like(semantic, 7), semantic], dim=1)}  # (1, 2, 3, 4): source, target
    labels, valid = target_labels(batch, "view_segmentation")
    assert torch.equal(labels, semantic) and int(valid.sum()) == 8
    pixels, labelled = pick_ray_pixels(valid, 12, torch.Generator().manual_seed(0))  # every pixel, once
    uv = pixel_centres(pixels, 4)
    rays = gather_pixels(labels, pixels)
    got = {(int(v - 0.5), int(u - 0.5)) for u, v in uv[0].tolist()}  # uv = (j + 0.5, i + 0.5)
    assert got == {(i, j) for i in range(3) for j in range(4)}
    for (u, v), label, flag in zip(uv[0].tolist(), rays[0].tolist(), labelled[0].tolist()):
        assert label == int(semantic[0, int(v), int(u)]) and flag == (label >= 0)  # the pixel the ray's centre lies in
    rgb = torch.arange(24.0).reshape(1, 2, 3, 4)  # (B, C, H, W) colours
    colours = gather_pixels(rgb, pixels)  # (1, R, 2)
    for (u, v), c in zip(uv[0].tolist(), colours[0].tolist()):
        assert c == [float(rgb[0, 0, int(v), int(u)]), float(rgb[0, 1, int(v), int(u)])]
    counts = torch.zeros(12)
    for seed in range(600):  # 4 distinct rays of 12 pixels: each pixel drawn with probability 1/3, labelled or not
        pixels, labelled = pick_ray_pixels(valid, 4, torch.Generator().manual_seed(seed))
        assert len(set(pixels[0].tolist())) == 4 and torch.equal(labelled, valid.reshape(1, -1).gather(1, pixels))
        counts[pixels[0]] += 1
    assert bool(((counts / 600 - 1 / 3).abs() < 0.08).all()), counts
    depth = torch.tensor([[[[0.0, 2.0], [3.0, 0.0]]]]).expand(1, 2, 1, 2, 2)  # (B, V, 1, H, W)
    labels, valid = target_labels({"depth": depth}, "view_depth")
    assert labels.shape == (1, 2, 2) and valid.tolist() == [[[False, True], [True, False]]]
    with pytest.raises(InputError, match="rays_per_target: 13 rays wanted from targets of 3x4"):
        pick_ray_pixels(torch.ones(1, 3, 4, dtype=torch.bool), 13, torch.Generator())


# ---- metrics of forced heads ---------------------------------------------------------------------
def forced(model, make):
    """Make the model's rays predict ``make(batch, pixels)`` (its head bypassed)."""
    render = model.render

    def patched(batch, sources, uv, generator=None):
        out, _ = render(batch, sources, uv, generator)
        W = batch["rgb"].shape[-1]
        pixels = (uv[..., 1] - 0.5).long() * W + (uv[..., 0] - 0.5).long()  # (B, R)
        return out, make(batch, pixels)

    model.render = patched
    return model


def test_segmentation_scores_of_a_true_and_a_constant_head(rooms):
    batch = eval_batch(rooms, "view_segmentation")
    labels = batch["semantic"][:, -1]  # (B, H, W)
    K = 11
    model = forced(build_view_model(tiny_nerf(), config("view_segmentation"), K).eval(),
                   lambda b, p: F.one_hot(gather_pixels(b["semantic"][:, -1], p).clamp_min(0), K).float())
    scores = score_views(model, [batch])
    assert scores["miou"] == 1.0 and scores["overall_acc"] == 1.0 and scores["mean_class_acc"] == 1.0
    assert scores["num_images"] == 2 and 0 < scores["psnr"] < 100
    c = 1  # a constant prediction: class 1 (wall) everywhere
    model = forced(build_view_model(tiny_nerf(), config("view_segmentation"), K).eval(),
                   lambda b, p: F.one_hot(torch.full_like(p, c), K).float())
    scores = score_views(model, [batch])
    counts = torch.bincount(labels[labels >= 0], minlength=K).double()  # (K,) labelled pixels per class
    present = int((counts > 0).sum())  # classes with a non-empty union (class c is present in these rooms)
    assert counts[c] > 0
    N = counts.sum()
    assert scores["miou"] == pytest.approx(float(counts[c] / N) / present)  # IoU_c = n_c / N, others 0
    assert scores["overall_acc"] == pytest.approx(float(counts[c] / N))
    assert scores["mean_class_acc"] == pytest.approx(1.0 / present)


def test_depth_of_a_head_forced_to_the_true_depth_scores_zero(rooms):
    batch = eval_batch(rooms, "view_depth")
    model = forced(build_view_model(tiny_nerf(), config("view_depth"), 1).eval(),
                   lambda b, p: gather_pixels(b["depth"][:, -1, 0], p).clamp_min(0.5))
    scores = score_views(model, [batch])
    assert scores["abs_rel"] == 0.0 and scores["rmse"] == 0.0 and scores["delta1"] == 1.0 and scores["num_images"] == 2
    model = forced(build_view_model(tiny_nerf(), config("view_depth"), 1).eval(),
                   lambda b, p: 2 * gather_pixels(b["depth"][:, -1, 0], p).clamp_min(0.5))
    assert score_views(model, [batch])["abs_rel"] == pytest.approx(1.0)  # |2d - d| / d


# ---- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, steps, lr", [("view_segmentation", 12, 3e-3), ("view_depth", 24, 1e-2)])
def test_training_steps_lower_the_task_loss_on_a_fixed_batch(rooms, task, steps, lr):
    """(The depth head's attention starts near uniform over the samples and needs more steps to move.)"""
    batch = eval_batch(rooms, task)
    model = build_view_model(tiny_nerf(), config(task), 11).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def loss():
        return model.training_loss(batch, torch.Generator().manual_seed(0))  # the same rays and samples each time

    first = loss()[1]["task"]
    for _ in range(steps):
        value, _ = loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert loss()[1]["task"] < 0.8 * first


def test_train_is_deterministic_and_linear_mode_keeps_the_nerf(rooms):
    encoder = tiny_nerf()
    state = torch.get_rng_state()
    a = train_view_task(encoder, rooms, config("view_depth"))
    b = train_view_task(encoder, rooms, config("view_depth"))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert a.loss_history == b.loss_history and len(a.loss_history) == 2
    assert any(not torch.equal(p, q) for p, q in zip(a.encoder.parameters(), encoder.parameters()))  # finetune: all train
    probe = train_view_task(encoder, rooms, config("view_segmentation", mode="linear"))
    assert all(torch.equal(p, q) for p, q in zip(probe.encoder.parameters(), encoder.parameters()))
    assert all(p.requires_grad for p in probe.head.parameters())


# ---- configs and pairing -------------------------------------------------------------------------
def test_bad_view_configs_are_named():
    with pytest.raises(InputError, match="source_views"):
        ViewTaskConfig(source_views=0)
    with pytest.raises(InputError, match="near_scale"):
        ViewTaskConfig(near_scale=1.1)
    with pytest.raises(InputError, match="rgb_weight"):
        ViewTaskConfig(rgb_weight=-1)
    cfg = from_dict(DownstreamConfig, {"task": "view_depth", "views": {"source_views": 4, "rgb_weight": 0.5}})
    assert (cfg.views.source_views, cfg.views.rgb_weight, cfg.views.far_scale) == (4, 0.5, 1.5)


def test_too_few_frames_for_the_source_views_is_refused(rooms):
    with pytest.raises(InputError, match="source_views is 6, but a scene has only 6 frames"):
        view_task_dataset(rooms, config("view_depth", views=ViewTaskConfig(source_views=6)), seed=0)


def test_tasks_and_encoders_of_other_families_are_refused():
    with pytest.raises(InputError, match="task 'segmentation' needs an image encoder.*nerf_transformer encoder"):
        check_task_fits("segmentation", "nerf_transformer", "nps")
    with pytest.raises(InputError, match="task 'view_depth' needs a view encoder.*vit encoder"):
        check_task_fits("view_depth", "vit", "gmae")
    assert assign_tasks({"nps": "nerf_transformer"}, None) == {"view_segmentation": ["nps"], "view_depth": ["nps"]}
    with pytest.raises(InputError, match="needs a view encoder"):
        train_view_task(torch.nn.Linear(2, 2), [], config("view_depth"))


# ---- renderssl compare ---------------------------------------------------------------------------
def test_compare_runs_both_view_tasks_against_scratch(tmp_path):
    data = DataConfig(kind="room", width=32, height=24, views=5, train_scenes=2, val_scenes=1, test_scenes=1)
    enc = export_encoder(tiny_nerf(), "nerf_transformer", TINY, tmp_path / "nps",
                         pretraining={"method": "nps", "data": to_dict(data)})
    cfg = CompareConfig(encoders=[str(enc)], fractions=[1.0], seeds=1, out_dir=str(tmp_path / "cmp"))
    cfg.downstream = config("view_segmentation", views=ViewTaskConfig(source_views=3, rays_per_target=32, num_samples=8,
                                                                       eval_targets=1))
    result = run_compare(cfg, log=lambda s: None)
    assert set(result["tasks"]) == {"view_segmentation", "view_depth"}  # the views family's defaults
    for task, key in (("view_segmentation", "miou"), ("view_depth", "abs_rel")):
        runs = result["tasks"][task]["runs"]
        assert set(runs) == {"nps", "scratch"} and result["tasks"][task]["metric"] == key
        metrics = result["tasks"][task]["all_metrics"]["nps"]["1.0"][0]
        assert {key, "psnr", "num_images"} <= set(metrics) and metrics["num_images"] == 1
    assert {"overall_acc", "mean_class_acc"} <= set(result["tasks"]["view_segmentation"]["all_metrics"]["scratch"]["1.0"][0])
    assert "rmse" in result["tasks"]["view_depth"]["all_metrics"]["scratch"]["1.0"][0]
    for name in ("comparison.md", "results.json", "view_segmentation.png", "view_depth.png"):
        assert (tmp_path / "cmp" / name).is_file()
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "novel-view segmentation mIoU" in table and "| scratch |" in table
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["tasks"]["view_depth"]["metric"] == "abs_rel"
