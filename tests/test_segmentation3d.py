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
from renderssl.data.points import augment_points, fuse_frames
from renderssl.data.scenes import SceneRef
from renderssl.data.types import PointCloud
from renderssl.errors import InputError
from renderssl.eval.tasks import DownstreamConfig, PointTaskConfig
from renderssl.eval.transfer import run_downstream, run_on_splits
from renderssl.eval.segmentation3d import (
    cap_points, evaluate_point_segmentation, train_point_segmentation, training_sample,
)
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
    # steps must exceed the warm-up: 2 warm-up steps, fewer for the shortest runs
    base = dict(task="segmentation3d", steps=10, batch_size=2, lr=1e-2, warmup=min(2, kw.get("steps", 10) - 1),
                device="cpu", points=PointTaskConfig(grid_size=0.05))
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
            feats = torch.cat([2 * cloud.colors - 1, cloud.normals], dim=1).float()  # colours in [-1, 1]
            batch = {"points": cloud.points.float(), "features": feats, "offset": torch.tensor([len(cloud)])}
            pred = model(batch).argmax(1)
            for t, p in zip(cloud.semantic.tolist(), pred.tolist()):
                if t >= 0:
                    conf[t][p] += 1
    assert sum(len(fuse_frames(s, stride=2)) for s in test) == num_points == metrics["num_points_total"]
    assert metrics["num_scenes"] == 2
    total = sum(map(sum, conf))
    labelled = sum(int((fuse_frames(s, stride=2).semantic >= 0).sum()) for s in test)
    assert total == labelled == metrics["num_points"] < num_points  # the -1 points are predicted, never scored

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
    assert from_files["metrics"]["num_points_total"] == len(ordered[3]) + len(ordered[4])
    assert from_files["metrics"]["num_points"] == sum(int((c.semantic >= 0).sum()) for c in ordered[3:])
    assert 0.0 <= from_files["metrics"]["miou"] <= 1.0


def test_ply_clouds_need_the_class_list_from_the_config(ply_folder):
    """PLY clouds carry no class names, and the largest label is no class list: the config must give it;
    a test label outside it is refused, naming the keys."""
    root, ordered = ply_folder
    factory = architecture_factory("pointnet2", **TINY["pointnet2"])
    with pytest.raises(InputError, match="downstream.num_classes or downstream.points.class_names") as err:
        run_on_splits(factory, ordered[:3], ordered[3:], cfg3d(steps=1))
    assert "a_scan" in str(err.value)
    train_max = max(int(c.semantic.max()) for c in ordered[:3])
    test = [dataclasses.replace(ordered[3], semantic=ordered[3].semantic.clamp(max=train_max + 1))]
    test[0].semantic[0] = train_max + 1
    with pytest.raises(InputError, match=f"test scene 'd_scan' has label {train_max + 1}.*downstream.num_classes"):
        run_on_splits(factory, ordered[:3], test, cfg3d(steps=1, num_classes=train_max + 1))


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
OVERRIDES = ["downstream.steps=2", "downstream.warmup=1", "downstream.batch_size=2", "downstream.device=cpu", "data.width=32",
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


# ----------------------------------------------------------------------------------------- real-cloud defaults


def line_sample(n: int) -> dict:
    """n points on the x axis at x = 0, 1, ..., n - 1 (distances are hand-computable), labels = index."""
    points = torch.zeros(n, 3)
    points[:, 0] = torch.arange(n, dtype=torch.float32)
    return {"points": points, "colors": torch.rand(n, 3), "semantic": torch.arange(n)}


def test_point_cap_crop_keeps_the_nearest_points_around_a_random_point():
    cfg = PointTaskConfig(max_points=3)
    assert (cfg.max_points, cfg.cap) == (3, "crop") and PointTaskConfig().max_points == 40000
    centres = set()
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        centre = int(torch.randint(10, (1,), generator=torch.Generator().manual_seed(seed)))  # the draw cap_points makes
        out = cap_points(line_sample(10), cfg, g)
        # by hand: the 3 points nearest x = c on a line, ties to the lower index
        expected = {0: [0, 1, 2], 9: [7, 8, 9]}.get(centre, [centre - 1, centre, centre + 1])
        assert out["semantic"].tolist() == expected, (seed, centre)
        assert out["points"][:, 0].tolist() == [float(i) for i in expected]
        centres.add(centre)
    assert len(centres) > 3  # the centre is random
    small = line_sample(3)
    assert cap_points(small, cfg, torch.Generator().manual_seed(0)) is small  # within the cap: untouched
    assert cap_points(line_sample(50), PointTaskConfig(max_points=0), torch.Generator())["points"].shape[0] == 50


def test_point_cap_sample_keeps_a_random_subset_in_ascending_order():
    out = cap_points(line_sample(100), PointTaskConfig(max_points=10, cap="sample"), torch.Generator().manual_seed(0))
    kept = out["semantic"].tolist()
    assert len(kept) == 10 == len(set(kept)) and kept == sorted(kept)
    assert kept[-1] - kept[0] > 10  # spread over the cloud, not a crop
    with pytest.raises(InputError, match="cap"):
        PointTaskConfig(cap="sphere")


def test_training_clouds_are_capped_after_grid_sampling(splits):
    train, _ = splits
    cloud = fuse_frames(train[0])
    sample = {"points": cloud.points, "colors": cloud.colors, "normals": cloud.normals, "semantic": cloud.semantic}
    cfg = PointTaskConfig(grid_size=0.0, max_points=200)
    out = training_sample(sample, cfg, torch.Generator().manual_seed(0))
    assert out["points"].shape[0] == 200 < len(cloud)
    # a crop is a ball: every kept point is at least as close to the centre as every dropped one
    g = torch.Generator().manual_seed(0)
    moved, _, _ = augment_points(sample, cfg.augment, g)
    centre = moved["points"][int(torch.randint(len(cloud), (1,), generator=g))]
    dist = (moved["points"] - centre).norm(dim=1).sort().values  # (N,) the augmented cloud's distances
    kept = (out["points"] - centre).norm(dim=1).sort().values  # (200,)
    assert torch.allclose(kept, dist[:200], atol=1e-6)  # exactly the 200 nearest


def test_steps_must_exceed_the_warmup_before_any_scene_is_read():
    def unreadable():
        raise RuntimeError("opened")

    never = SceneRef("never_opened", 1, unreadable)
    for steps, warmup in ((20, 20), (5, 20)):
        with pytest.raises(InputError, match=rf"downstream.steps \({steps}\).*downstream.warmup \({warmup}\)"):
            train_point_segmentation(tiny("pointnet2"), [never], cfg3d(steps=steps, warmup=warmup))


def test_class_list_from_the_config_or_the_data(splits, ply_folder):
    train, test = splits
    _, ordered = ply_folder
    encoder = tiny("pointnet2")
    names = [f"c{k}" for k in range(13)]
    model = train_point_segmentation(encoder, ordered[:3], cfg3d(steps=2, points=PointTaskConfig(class_names=names)))
    assert model.num_classes == 13 and model.class_names == names  # not the largest label + 1
    metrics = evaluate_point_segmentation(model, ordered[3:], cfg3d())
    assert metrics["class_names"] == names and len(metrics["iou"]) == 13
    # num_classes alone: the data's names when they count as many, else class_k
    model = train_point_segmentation(encoder, train, cfg3d(steps=2, num_classes=NUM_CLASSES))
    assert model.class_names == list(train[0].class_names)
    model = train_point_segmentation(encoder, ordered[:3], cfg3d(steps=2, num_classes=12))
    assert model.class_names == [f"class_{k}" for k in range(12)]
    # nothing given: the data's class names
    assert train_point_segmentation(encoder, train, cfg3d(steps=2)).class_names == list(train[0].class_names)
    # refusals, each naming the keys
    with pytest.raises(InputError, match="downstream.num_classes is 5 but downstream.points.class_names lists 13"):
        train_point_segmentation(encoder, train, cfg3d(steps=2, num_classes=5, points=PointTaskConfig(class_names=names)))
    top = max(int(s.semantic.max()) for s in train)
    with pytest.raises(InputError, match=rf"training scene .* has label {top}.*downstream.num_classes"):
        train_point_segmentation(encoder, train, cfg3d(steps=2, num_classes=top))
    renamed = dataclasses.replace(train[1], class_names=list(reversed(train[1].class_names)))
    with pytest.raises(InputError, match="different class names"):
        train_point_segmentation(encoder, [train[0], renamed], cfg3d(steps=2))


class ConstantModel(torch.nn.Module):
    """Predicts class 0 for every point (a hand-computable confusion matrix)."""

    num_classes, class_names = 2, ["zero", "one"]

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def predict(self, batch):
        logits = torch.zeros(batch["points"].shape[0], 2)
        logits[:, 0] = 1.0
        return logits


def tiny_cloud(name: str, labels: list[int]) -> PointCloud:
    n = len(labels)
    return PointCloud(points=torch.rand(n, 3), colors=torch.rand(n, 3), normals=torch.rand(n, 3),
                      semantic=torch.tensor(labels), name=name)


def test_metrics_count_labelled_points_only():
    clouds = [tiny_cloud("p", [0, 0, 1, -1, -1]), tiny_cloud("q", [1, -1])]
    metrics = evaluate_point_segmentation(ConstantModel(), clouds, cfg3d(eval_batch_size=1))
    # by hand: labelled points 0, 0, 1, 1 all predicted 0 -> class 0: tp 2, fp 2; class 1: tp 0, fn 2
    assert (metrics["num_points"], metrics["num_points_total"], metrics["num_scenes"]) == (4, 7, 2)
    assert metrics["overall_acc"] == pytest.approx(2 / 4)
    assert metrics["iou"] == pytest.approx([2 / 4, 0.0])
    assert metrics["miou"] == pytest.approx(0.25)
    assert metrics["mean_class_acc"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["class_names"] == ["zero", "one"]
    with pytest.raises(InputError, match="'u'.*no labelled point"):
        evaluate_point_segmentation(ConstantModel(), [tiny_cloud("u", [-1, -1])], cfg3d())
