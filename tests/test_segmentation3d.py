"""Downstream 3D semantic segmentation: metrics against a brute-force confusion matrix, training, frozen
probes, determinism, split checks, PLY scene folders, and the scratch-only 3D entries of ``compare``."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from renderssl import cli
from renderssl.compare import CompareConfig, run_compare
from renderssl.data.build import open_split
from renderssl.data.formats.ply import write_ply
from renderssl.data.points import fuse_frames
from renderssl.data.types import PointCloud
from renderssl.errors import InputError
from renderssl.eval.tasks import DownstreamConfig, PointTaskConfig
from renderssl.eval.transfer import run_downstream, run_on_splits
from renderssl.eval.segmentation3d import evaluate_point_segmentation, train_point_segmentation
from renderssl.export import build_encoder
from renderssl.finetune import architecture_factory
from renderssl.models.encoders import ViTConfig, VisionTransformer
from renderssl.train.config import DataConfig

DATA = DataConfig(width=32, height=24, views=3, train_scenes=3, val_scenes=0, test_scenes=2)
TINY = {
    "sparse_unet": dict(preset=None, base_channels=8, channels=(8, 16, 16, 8), layers=(1, 1, 1, 1), in_channels=6,
                        grid_size=0.1),
    "pointnet2": dict(preset=None, in_channels=6, npoints=(64, 16), radii=(0.3, 0.6), nsamples=(8, 8),
                      sa_mlps=((16,), (32,)), fp_mlps=((16,), (16,))),
}
NUM_CLASSES = 11  # the synthetic rooms' class_names


@pytest.fixture(scope="module")
def splits():
    return open_split(DATA, "train"), open_split(DATA, "test")


def cfg3d(**kw) -> DownstreamConfig:
    base = dict(task="segmentation3d", steps=10, batch_size=2, lr=1e-2, warmup=2, device="cpu",
                points=PointTaskConfig(grid_size=0.05))
    return DownstreamConfig(**{**base, **kw})


def tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder(arch, TINY[arch])


def same(a: dict, b: dict) -> bool:
    """Exact equality of metric dicts (NaN per-class IoUs compare equal)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def with_unlabelled_rows(scene):
    """The scene with the top 5 rows of its first view unlabelled (-1)."""
    semantic = scene.semantic.clone()
    semantic[0, :5] = -1
    return dataclasses.replace(scene, semantic=semantic)


# ----------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("arch", ["sparse_unet", "pointnet2"])
def test_metrics_equal_a_brute_force_confusion_matrix(splits, arch):
    train, test = splits
    test = [with_unlabelled_rows(s) for s in test]
    cfg = cfg3d(steps=6, eval_batch_size=2, points=PointTaskConfig(frame_stride=2, grid_size=0.05))
    model = train_point_segmentation(tiny(arch), train, cfg)
    metrics = evaluate_point_segmentation(model, test, cfg)

    K = model.num_classes
    assert K == NUM_CLASSES
    conf = [[0] * K for _ in range(K)]
    num_points = 0
    with torch.no_grad():
        for scene in test:  # one cloud at a time, independent of the evaluator's batching
            cloud = fuse_frames(scene, stride=2)
            num_points += len(cloud)
            feats = torch.cat([cloud.colors, cloud.normals], dim=1).float()
            batch = {"points": cloud.points.float(), "features": feats, "offset": torch.tensor([len(cloud)])}
            pred = model(batch).argmax(1)
            for t, p in zip(cloud.semantic.tolist(), pred.tolist()):
                if t >= 0:
                    conf[t][p] += 1
    assert sum(len(fuse_frames(s, stride=2)) for s in test) == num_points == metrics["num_points"]
    assert metrics["num_scenes"] == 2
    total = sum(map(sum, conf))
    labelled = sum(int((fuse_frames(s, stride=2).semantic >= 0).sum()) for s in test)
    assert total == labelled < num_points  # the -1 points are counted in num_points, never scored

    tp = [conf[k][k] for k in range(K)]
    gt = [sum(conf[k]) for k in range(K)]
    pr = [sum(conf[j][k] for j in range(K)) for k in range(K)]
    ious = [tp[k] / (gt[k] + pr[k] - tp[k]) for k in range(K) if gt[k] + pr[k] > 0]
    accs = [tp[k] / gt[k] for k in range(K) if gt[k] > 0]
    assert metrics["miou"] == pytest.approx(sum(ious) / len(ious), rel=1e-12, abs=1e-15)
    assert metrics["overall_acc"] == pytest.approx(sum(tp) / total, rel=1e-12)
    assert metrics["mean_class_acc"] == pytest.approx(sum(accs) / len(accs), rel=1e-12, abs=1e-15)
    for k in range(K):
        union = gt[k] + pr[k] - tp[k]
        if union:
            assert metrics["iou"][k] == pytest.approx(tp[k] / union, rel=1e-12, abs=1e-15)
        else:
            assert math.isnan(metrics["iou"][k])


# ----------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("arch", ["sparse_unet", "pointnet2"])
def test_finetuning_reduces_the_loss(splits, arch):
    train, _ = splits
    model = train_point_segmentation(tiny(arch), train, cfg3d(steps=25, seed=1))
    h = model.loss_history
    assert len(h) == 25 and all(math.isfinite(v) for v in h)
    assert sum(h[-5:]) / 5 < 0.8 * sum(h[:5]) / 5, h
    assert not model.training


@pytest.mark.parametrize("arch", ["sparse_unet", "pointnet2"])
def test_linear_mode_freezes_the_encoder_and_its_batchnorm_statistics(splits, arch):
    train, _ = splits
    encoder = tiny(arch)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert any("running_mean" in k for k in before)
    linear = train_point_segmentation(encoder, train, cfg3d(steps=4, mode="linear"))
    for name, value in linear.encoder.state_dict().items():
        assert torch.equal(value, before[name]), name  # parameters, running mean/var, num_batches_tracked
    assert not any(p.requires_grad for p in linear.encoder.parameters())
    linear.train()
    assert not linear.encoder.training
    head0 = build_head_like(encoder, train)
    assert not torch.equal(linear.head.weight, head0.weight)  # the head did train
    # the contrast: fine-tuning moves encoder weights and BN statistics (of the copy, never the caller's)
    tuned = train_point_segmentation(encoder, train, cfg3d(steps=2, mode="finetune"))
    moved = [k for k, v in tuned.encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert any("running_mean" in k for k in moved) and any(k.endswith("weight") for k in moved)
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())


def build_head_like(encoder, train):
    """The head as initialised for cfg3d() (seed 0): trained for 0 steps would equal this."""
    from renderssl.eval.segmentation3d import build_point_model, scene_cloud

    cfg = cfg3d()
    clouds = [scene_cloud(s, cfg.points) for s in train]
    return build_point_model(encoder, train, clouds, cfg).head


def test_same_seed_same_metrics_other_seed_other_metrics(splits):
    train, test = splits
    factory = architecture_factory("pointnet2", **TINY["pointnet2"])
    a = run_on_splits(factory, train, test, cfg3d(seed=3))
    b = run_on_splits(factory, train, test, cfg3d(seed=3))
    assert same(a["metrics"], b["metrics"])
    c = run_on_splits(factory, train, test, cfg3d(seed=4))
    assert not same(a["metrics"], c["metrics"])
    factory_su = architecture_factory("sparse_unet", **TINY["sparse_unet"])
    d = run_on_splits(factory_su, train, test, cfg3d(seed=3, steps=3))
    e = run_on_splits(factory_su, train, test, cfg3d(seed=3, steps=3))
    assert same(d["metrics"], e["metrics"])


# ----------------------------------------------------------------------------------------- splits and errors


def test_train_scene_in_test_split_is_refused(splits):
    train, test = splits
    factory = architecture_factory("pointnet2", **TINY["pointnet2"])
    with pytest.raises(InputError, match=train[1].name):
        run_on_splits(factory, train, [train[1], *test], cfg3d(steps=1))
    clouds = [fuse_frames(s) for s in train]
    with pytest.raises(InputError, match="also used for training"):
        run_on_splits(factory, clouds, [clouds[0]], cfg3d(steps=1))


def test_encoder_channels_must_match_the_features(splits):
    train, test = splits
    six = architecture_factory("sparse_unet", **TINY["sparse_unet"])
    with pytest.raises(InputError, match="'color'"):
        run_on_splits(six, train, test, cfg3d(steps=1, points=PointTaskConfig(features="color")))
    three = architecture_factory("pointnet2", **{**TINY["pointnet2"], "in_channels": 3})
    with pytest.raises(InputError, match="'color_normal'"):
        run_on_splits(three, train, test, cfg3d(steps=1))
    # the matching pair runs: 3 colour channels into a 3-channel encoder
    out = run_on_splits(three, train, test, cfg3d(steps=1, points=PointTaskConfig(features="color")))
    assert out["metrics"]["num_scenes"] == 2


# ----------------------------------------------------------------------------------------- PLY folders

NAMES = ["b_scan", "e_scan", "a_scan", "d_scan", "c_scan"]  # file names of synthetic rooms 0..4


@pytest.fixture(scope="module")
def ply_folder(tmp_path_factory):
    """Five labelled clouds as PLY files whose name order is not their scene order, plus a stray file."""
    root = tmp_path_factory.mktemp("plys")
    scenes = open_split(DataConfig(**{**dataclasses.asdict(DATA), "train_scenes": 5, "test_scenes": 0}), "train")
    clouds = []
    for scene, name in zip(scenes, NAMES):
        cloud = fuse_frames(scene)
        semantic = cloud.semantic.clone()
        semantic[::7] = -1  # unlabelled points must survive the round trip
        cloud = dataclasses.replace(cloud, semantic=semantic, name=name)
        write_ply(cloud, root / f"{name}.ply", color_type="float")
        clouds.append(cloud)
    (root / "README.txt").write_text("not a scene")
    by_name = dict(zip(NAMES, clouds))
    return root, [by_name[n] for n in sorted(NAMES)]


def ply_data(root) -> DataConfig:
    return DataConfig(source=str(root), train_scenes=3, val_scenes=0, test_scenes=2)


def test_ply_folder_loads_clouds_in_name_order_with_labels_intact(ply_folder):
    root, ordered = ply_folder
    data = ply_data(root)
    loaded = open_split(data, "train") + open_split(data, "test")
    assert [c.name for c in loaded] == ["a_scan", "b_scan", "c_scan", "d_scan", "e_scan"]
    for got, want in zip(loaded, ordered):
        assert isinstance(got, PointCloud)
        for key in ("points", "colors", "normals", "semantic", "instance"):
            assert torch.equal(getattr(got, key), getattr(want, key).to(getattr(got, key).dtype)), (got.name, key)
        assert int((got.semantic == -1).sum()) == len(range(0, len(want), 7))


def test_segmentation3d_on_ply_scenes_equals_the_in_memory_clouds(ply_folder):
    root, ordered = ply_folder
    cfg = cfg3d(num_classes=NUM_CLASSES, points=PointTaskConfig(features="color_normal", grid_size=0.05))
    factory = architecture_factory("pointnet2", **TINY["pointnet2"])
    from_files = run_downstream(factory, ply_data(root), cfg)
    assert from_files["train_scenes"] == ["a_scan", "b_scan", "c_scan"]
    assert from_files["test_scenes"] == ["d_scan", "e_scan"]
    in_memory = run_on_splits(factory, ordered[:3], ordered[3:], cfg)
    assert same(from_files["metrics"], in_memory["metrics"])
    assert from_files["metrics"]["num_points"] == len(ordered[3]) + len(ordered[4])
    assert 0.0 <= from_files["metrics"]["miou"] <= 1.0


def test_test_label_beyond_the_inferred_classes_names_num_classes(ply_folder):
    """PLY clouds carry no class names: classes = largest training label + 1, checked on the test clouds."""
    root, ordered = ply_folder
    train_max = max(int(c.semantic.max()) for c in ordered[:3])
    test = [dataclasses.replace(ordered[3], semantic=ordered[3].semantic.clamp(max=train_max + 1))]
    test[0].semantic[0] = train_max + 1
    factory = architecture_factory("pointnet2", **TINY["pointnet2"])
    with pytest.raises(InputError, match="downstream.num_classes"):
        run_on_splits(factory, ordered[:3], test, cfg3d(steps=1))


def test_image_task_on_point_cloud_scenes_is_refused(ply_folder):
    root, _ = ply_folder
    def vit():
        return VisionTransformer(ViTConfig(preset=None, embed_dim=48, depth=1, num_heads=3, img_size=32, patch_size=8))

    cfg = DownstreamConfig(task="segmentation", steps=1, batch_size=2, device="cpu")
    with pytest.raises(InputError, match="point clouds"):
        run_downstream(vit, ply_data(root), cfg)


def test_unlabelled_clouds_are_refused(tmp_path, ply_folder):
    _, ordered = ply_folder
    for i, cloud in enumerate(ordered):
        write_ply(dataclasses.replace(cloud, semantic=None), tmp_path / f"s{i}.ply")
    factory = architecture_factory("pointnet2", **TINY["pointnet2"])
    with pytest.raises(InputError, match="semantic labels"):
        run_downstream(factory, ply_data(tmp_path), cfg3d(steps=1))


# ----------------------------------------------------------------------------------------- compare


SPECS = ["sparse_unet:small", "pointnet2:small"]


def test_compare_scratch_architectures_equal_direct_runs(tmp_path, splits):
    cfg = CompareConfig(architectures=SPECS, tasks=["segmentation3d"], fractions=[1.0], seeds=1, data=DATA,
                        out_dir=str(tmp_path / "cmp"),
                        downstream=DownstreamConfig(steps=3, batch_size=2, lr=1e-2, warmup=1, device="cpu"))
    run_compare(cfg, log=lambda s: None)
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    task = results["tasks"]["segmentation3d"]
    assert task["metric"] == "miou"
    assert set(task["runs"]) == {f"{s} (scratch)" for s in SPECS}
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert all(s in table for s in SPECS)
    train, test = splits
    direct_cfg = DownstreamConfig(task="segmentation3d", steps=3, batch_size=2, lr=1e-2, warmup=1, device="cpu",
                                  seed=0, label_fraction=1.0)
    for spec in SPECS:
        direct = run_on_splits(architecture_factory(spec, in_channels=6), train, test, direct_cfg)
        assert task["runs"][f"{spec} (scratch)"]["1.0"] == [direct["metrics"]["miou"]]
        recorded = task["all_metrics"][f"{spec} (scratch)"]["1.0"][0]
        for key in ("miou", "mean_class_acc", "overall_acc", "num_points"):
            assert recorded[key] == direct["metrics"][key]


COMMON = ["--tasks", "segmentation3d", "--fractions", "1.0", "--seeds", "1"]
# key=value items after all options: argparse (3.11) cannot split the positional items around options
OVERRIDES = ["downstream.steps=2", "downstream.batch_size=2", "downstream.device=cpu", "data.width=32",
             "data.height=24", "data.views=3", "data.train_scenes=3", "data.val_scenes=0", "data.test_scenes=2"]


def test_cli_compare_with_3d_architectures(tmp_path, capsys):
    # colour-only features: the sparse_unet preset's 6 input channels must be overridden to 3 by compare
    out = tmp_path / "cli"
    assert cli.main(["compare", "--architectures", "pointnet2:small,sparse_unet:small", "--out", str(out), *COMMON,
                     *OVERRIDES, "downstream.points.features=color"]) == 0
    table = (out / "comparison.md").read_text()
    assert "pointnet2:small (scratch)" in table and "sparse_unet:small (scratch)" in table
    capsys.readouterr()
    assert cli.main(["compare", "--architectures", "nonsense:small", "--out", str(tmp_path / "bad"), *COMMON,
                     *OVERRIDES]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "comparison.md").exists()
