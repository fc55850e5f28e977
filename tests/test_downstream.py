"""Downstream transfer: heads, label fractions, held-out splits, frozen probes, and a tiny ViT that
learns segmentation and depth on synthetic rooms better than constant predictors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from renderssl.data.build import load_split
from renderssl.data.synthetic import OBJECT_CLASSES
from renderssl.data.types import ViewSet
from renderssl.errors import InputError
from renderssl.eval import downstream as ds
from renderssl.eval import transfer
from renderssl.eval.downstream import (
    DownstreamConfig,
    check_disjoint_scenes,
    frames_from_scenes,
    learning_rate,
    param_groups,
    scene_class,
    select_label_fraction,
    train_downstream,
)
from renderssl.eval.transfer import compare_with_scratch, run_downstream
from renderssl.eval.heads import DepthHead, LinearClassifier, SegmentationHead
from renderssl.eval.metrics import DepthMeter, SegmentationMeter
from renderssl.models.encoders import ViTConfig, VisionTransformer
from renderssl.train.config import ConfigError, DataConfig, from_dict




def tiny_vit() -> VisionTransformer:
    return VisionTransformer(ViTConfig(preset=None, embed_dim=48, depth=2, num_heads=3, img_size=32, patch_size=8))


def rooms(**kw) -> DataConfig:
    base = dict(kind="room", width=32, height=32, views=4, train_scenes=3, val_scenes=0, test_scenes=2)
    return DataConfig(**{**base, **kw})


def fake_scene(name: str, views: int = 2, size: int = 8, semantic: torch.Tensor | None = None) -> ViewSet:
    return ViewSet(
        rgb=torch.rand(views, 3, size, size), K=torch.eye(3).expand(views, 3, 3), c2w=torch.eye(4).expand(views, 4, 4),
        depth=torch.ones(views, 1, size, size), semantic=semantic, name=name,
    )


def fast_cfg(**kw) -> DownstreamConfig:
    return DownstreamConfig(**{**dict(steps=40, batch_size=8, lr=2e-3, warmup=5, device="cpu"), **kw})


# ----------------------------------------------------------------------------------------- heads


def test_dense_heads_predict_at_full_resolution():
    feats = torch.randn(2, 48, 4, 6)  # (B, D, gh, gw) of a 32 x 48 image with 8-pixel patches
    seg = SegmentationHead(48, 11)(feats, (32, 48))
    assert seg.shape == (2, 11, 32, 48)
    depth_head = DepthHead(48, init_depth=2.5)
    depth = depth_head(feats, (32, 48))
    assert depth.shape == (2, 1, 32, 48) and bool((depth > 0).all())
    torch.testing.assert_close(depth, depth_head.log_depth(feats, (32, 48)).exp())
    assert depth_head.trunk.predict.bias.item() == pytest.approx(torch.log(torch.tensor(2.5)).item())


def test_output_conv_commutes_with_bilinear_upsampling():
    # heads.py applies the 1x1 output conv before the final upsampling; the order does not matter
    x, conv = torch.randn(2, 16, 8, 8), torch.nn.Conv2d(16, 5, 1)
    up = lambda t: F.interpolate(t, size=(32, 40), mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(conv(up(x)), up(conv(x)), atol=1e-5, rtol=1e-5)


def test_linear_classifier_is_parameter_free_batchnorm_then_linear():
    head = LinearClassifier(48, 7)
    assert [n for n, _ in head.named_parameters()] == ["fc.weight", "fc.bias"]
    assert head.norm.eps == 1e-6 and head(torch.randn(5, 48)).shape == (5, 7)


# ----------------------------------------------------------------------------------------- data


def test_label_fraction_picks_a_seeded_nested_subset():
    scenes = [fake_scene(f"s{i}") for i in range(10)]
    pick = lambda f, s: [v.name for v in select_label_fraction(scenes, f, s)]  # noqa: E731
    assert len(pick(0.3, 0)) == 3 and len(pick(0.25, 0)) == 3 and len(pick(0.01, 0)) == 1
    assert pick(0.3, 0) == pick(0.3, 0)  # deterministic
    assert pick(1.0, 5) == [v.name for v in scenes]  # everything, in split order
    assert set(pick(0.3, 4)) <= set(pick(0.6, 4))  # nested across fractions for one seed
    assert len({tuple(pick(0.3, s)) for s in range(6)}) > 1  # the seed matters
    names = pick(0.5, 1)
    assert names == sorted(names, key=lambda n: int(n[1:]))  # kept in split order
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(InputError):
            select_label_fraction(scenes, bad, 0)


def test_scene_class_is_the_majority_label_broadcast_to_frames():
    sem = torch.full((3, 8, 8), -1)
    sem[:, :3] = 7  # 3 rows of class 7 per view
    sem[0, 3:5] = 4  # 2 rows of class 4 in one view: fewer overall
    scene = fake_scene("obj", views=3, semantic=sem)
    assert int(scene_class(scene.semantic, scene.name)) == 7
    other = fake_scene("b", views=2, semantic=torch.full((2, 8, 8), 2))
    images, labels = frames_from_scenes([scene, other], "classification")
    assert images.shape == (5, 3, 8, 8) and labels.tolist() == [7, 7, 7, 2, 2]
    with pytest.raises(InputError):
        frames_from_scenes([fake_scene("empty", semantic=torch.full((2, 8, 8), -1))], "classification")
    with pytest.raises(InputError):
        frames_from_scenes([fake_scene("nolabels")], "segmentation")


def test_train_and_test_scenes_are_disjoint_and_overlap_is_an_error(monkeypatch):
    cfg = fast_cfg(steps=2, mode="linear")
    out = run_downstream(tiny_vit, rooms(), cfg)
    assert len(out["train_scenes"]) == 3 and len(out["test_scenes"]) == 2
    assert not set(out["train_scenes"]) & set(out["test_scenes"])
    with pytest.raises(InputError, match="room_00001"):
        check_disjoint_scenes([fake_scene("room_00000"), fake_scene("room_00001")], [fake_scene("room_00001")])
    with pytest.raises(InputError):
        check_disjoint_scenes([fake_scene("")], [fake_scene("x")])

    def leaky_split(data_cfg, split):  # a test split that repeats a training scene
        return load_split(data_cfg, "train")[:2] if split == "test" else load_split(data_cfg, split)

    monkeypatch.setattr(transfer, "load_split", leaky_split)
    with pytest.raises(InputError, match="also used for training"):
        run_downstream(tiny_vit, rooms(), cfg)


# ----------------------------------------------------------------------------------------- training


def test_linear_mode_leaves_every_encoder_parameter_unchanged():
    scenes = load_split(rooms(), "train")
    torch.manual_seed(0)
    encoder = tiny_vit()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = train_downstream(encoder, scenes, fast_cfg(steps=5, mode="linear", lr=1e-2))
    model.train()
    assert not model.encoder.training  # a frozen encoder stays in eval mode
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert len(model.loss_history) == 5
    # the contrast: fine-tuning does move the (copied) encoder, never the caller's
    tuned = train_downstream(encoder, scenes, fast_cfg(steps=2, mode="finetune", lr=1e-2))
    assert not torch.equal(tuned.encoder.blocks[0].attn.qkv.weight, before["blocks.0.attn.qkv.weight"])
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())


def test_training_is_deterministic_and_leaves_the_global_rng_alone():
    scenes = load_split(rooms(train_scenes=2), "train")
    torch.manual_seed(123)
    encoder = tiny_vit()
    state = torch.random.get_rng_state()
    a = train_downstream(encoder, scenes, fast_cfg(steps=3, seed=7))
    b = train_downstream(encoder, scenes, fast_cfg(steps=3, seed=7))
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.loss_history == b.loss_history
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    c = train_downstream(encoder, scenes, fast_cfg(steps=3, seed=8))
    assert c.loss_history != a.loss_history


def test_param_groups_apply_layer_decay_and_skip_decay_on_biases_and_tokens():
    model = ds.build_model(tiny_vit(), ds.TaskFrames([fake_scene("a")], "depth"), DownstreamConfig(task="depth"))
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    enc = model.encoder
    assert scale_of[id(enc.patch_embed.proj.weight)] == (0.5**3, 0.05)  # layer 0 of depth-2 ViT
    assert scale_of[id(enc.cls_token)] == (0.5**3, 0.0)
    assert scale_of[id(enc.blocks[0].mlp.fc1.weight)] == (0.5**2, 0.05)
    assert scale_of[id(enc.blocks[1].norm1.weight)] == (0.5, 0.0)
    assert scale_of[id(enc.norm.bias)] == (1.0, 0.0)
    assert scale_of[id(model.head.trunk.reduce.weight)] == (1.0, 0.05)
    assert id(enc.pos_embed) not in scale_of  # frozen sin-cos table
    cfg = DownstreamConfig(steps=100, warmup=10, lr=1.0)
    assert learning_rate(0, cfg) == pytest.approx(0.1) and learning_rate(10, cfg) == pytest.approx(1.0)
    assert learning_rate(99, cfg) < 1e-3


def test_config_is_typed_and_validated():
    cfg = from_dict(DownstreamConfig, {"task": "depth", "mode": "linear", "label_fraction": 0.5})
    assert (cfg.task, cfg.mode, cfg.label_fraction) == ("depth", "linear", 0.5)
    for bad in ({"task": "detection"}, {"mode": "probe"}, {"label_fraction": 0.0}, {"layer_decay": 1.5},
                {"lr": "fast"}, {"stepz": 3}):
        with pytest.raises(ConfigError):
            from_dict(DownstreamConfig, bad)


def test_finetuned_tiny_vit_beats_constant_predictors_on_held_out_rooms():
    data = rooms()
    train, test = load_split(data, "train"), load_split(data, "test")

    _, train_sem = frames_from_scenes(train, "segmentation")
    _, test_sem = frames_from_scenes(test, "segmentation")
    majority = int(torch.bincount(train_sem[train_sem >= 0]).argmax())
    constant = SegmentationMeter(11)
    constant.update(torch.full_like(test_sem, majority), test_sem)
    seg = run_downstream(tiny_vit, data, fast_cfg(task="segmentation"))["metrics"]
    assert seg["miou"] > 2.0 * constant.compute()["miou"]
    assert seg["overall_acc"] > constant.compute()["overall_acc"]
    assert 0.0 <= seg["mean_class_acc"] <= 1.0 and len(seg["iou"]) == 11

    # depth: beat the training mean depth and the geometric mean (the head's starting prediction,
    # which is the better constant for AbsRel), so the margin is what training learned
    _, train_depth = frames_from_scenes(train, "depth")
    _, test_depth = frames_from_scenes(test, "depth")
    valid = train_depth[train_depth > 0]
    constants = []
    for value in (valid.mean(), valid.log().mean().exp()):
        meter = DepthMeter()
        meter.update(torch.full_like(test_depth, float(value)), test_depth)
        constants.append(meter.compute()["abs_rel"])
    depth = run_downstream(tiny_vit, data, fast_cfg(task="depth", steps=60))["metrics"]
    assert depth["abs_rel"] < 0.9 * min(constants)
    assert depth["num_images"] == 8 and depth["rmse"] > 0 and 0.0 <= depth["delta1"] <= 1.0


def test_classification_on_object_scenes_returns_top1():
    data = DataConfig(kind="object", width=32, height=32, views=3, train_scenes=4, val_scenes=0, test_scenes=2)
    _, labels = frames_from_scenes(load_split(data, "train"), "classification")
    assert set(labels.tolist()) <= set(OBJECT_CLASSES)
    for mode in ("linear", "finetune"):
        out = run_downstream(tiny_vit, data, fast_cfg(task="classification", mode=mode, steps=10))
        assert 0.0 <= out["metrics"]["top1"] <= 1.0 and out["metrics"]["num_frames"] == 6


def test_compare_with_scratch_reports_per_seed_mean_and_std():
    cfg = fast_cfg(task="depth", mode="linear", steps=3)
    same = compare_with_scratch(tiny_vit, tiny_vit, rooms(), cfg, seeds=(0, 1))
    assert same["seeds"] == [0, 1] and len(same["pretrained"]["runs"]) == 2
    assert [r["seed"] for r in same["scratch"]["runs"]] == [0, 1]
    # identical factories under identical seeds give identical runs: the comparison is fair
    assert all(v == 0.0 for v in same["delta"].values())
    assert same["pretrained"]["std"]["abs_rel"] > 0.0  # the seeds differ
    runs = [r["metrics"]["abs_rel"] for r in same["scratch"]["runs"]]
    assert same["scratch"]["mean"]["abs_rel"] == pytest.approx(sum(runs) / 2)
