"""renderssl compare: held-out checks, aggregation, the markdown table and the plot."""

import json

import pytest
from PIL import Image

from renderssl.compare import CompareConfig, check_held_out, run_compare, summarise
from renderssl.errors import InputError
from renderssl.eval.report import markdown_table, plot_metric
from renderssl.export import export_encoder
from renderssl.models.encoders import ViTConfig, VisionTransformer
from renderssl.train.config import DataConfig, to_dict

DATA = DataConfig(width=32, height=32, views=3, train_scenes=2, val_scenes=1, test_scenes=1)


def exported(tmp_path, name, data: DataConfig):
    cfg = ViTConfig(preset=None, embed_dim=48, depth=1, num_heads=3, img_size=32, patch_size=8)
    return export_encoder(VisionTransformer(cfg), "vit", cfg, tmp_path / name, pretraining={"method": name, "data": to_dict(data)})


def test_summarise_hand_case():
    mean, std, n = summarise([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and abs(std - 1.0) < 1e-12


def test_encoder_that_saw_a_test_scene_is_refused(tmp_path):
    ok = exported(tmp_path, "ok", DATA)
    check_held_out([ok], DATA)
    wide = exported(tmp_path, "wide", DataConfig(train_scenes=10))  # pretrained on seeds 0..9, incl. DATA's test seed 3
    with pytest.raises(InputError, match="pretrained on 1 of the test scenes"):
        check_held_out([wide], DATA)


def test_table_and_plot(tmp_path):
    rows = {"a": {0.1: (0.5, 0.01, 3), 1.0: (0.7, 0.02, 3)}, "scratch": {0.1: (0.4, 0.03, 3), 1.0: (0.6, 0.0, 3)}}
    table = markdown_table(rows, [0.1, 1.0], "mIoU")
    assert "| a | 0.500 ± 0.010 | 0.700 ± 0.020 |" in table and "10% labels" in table
    path = plot_metric(rows, [0.1, 1.0], "mIoU", tmp_path / "p.png")
    assert Image.open(path).size == (560, 380)


def test_run_compare_end_to_end(tmp_path):
    enc = exported(tmp_path, "gmae", DATA)
    cfg = CompareConfig(encoders=[str(enc)], tasks=["segmentation", "depth"], fractions=[0.5, 1.0], seeds=2,
                        out_dir=str(tmp_path / "cmp"))
    cfg.downstream.steps, cfg.downstream.batch_size = 2, 2
    result = run_compare(cfg, log=lambda s: None)
    runs = result["tasks"]["segmentation"]["runs"]
    assert set(runs) == {"gmae", "scratch"} and all(len(v) == 2 for r in runs.values() for v in r.values())
    for name in ("comparison.md", "results.json", "segmentation.png", "depth.png"):
        assert (tmp_path / "cmp" / name).is_file()
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["tasks"]["depth"]["metric"] == "abs_rel"


def test_bad_compare_configs():
    with pytest.raises(InputError, match="at least one encoder"):
        CompareConfig()
    with pytest.raises(InputError, match="unknown"):
        CompareConfig(encoders=["x"], tasks=["detection"])
    with pytest.raises(InputError, match="first_seed >= 0"):
        CompareConfig(encoders=["x"], first_seed=-1)


def test_architecture_spec_sets_preset_and_fields():
    from renderssl.errors import InputError
    from renderssl.finetune import architecture_factory

    model = architecture_factory("sparse_unet:small:grid_size=0.05", in_channels=3)()
    assert (model.config.grid_size, model.config.channels[0], model.in_channels) == (0.05, 16, 3)
    assert architecture_factory("pointnet2:small:in_channels=0", in_channels=6)().in_channels == 0  # the spec wins
    for bad in ("sparse_unet:small:=3", "sparse_unet:small:gird=3", "nonsense:small"):
        with pytest.raises(InputError):
            architecture_factory(bad)


def test_entries_default_tasks_and_unique_names(tmp_path):
    from renderssl.compare import build_entries
    from renderssl.eval.tasks import assign_tasks

    a, b = exported(tmp_path, "a", DATA), exported(tmp_path, "b", DATA)
    entries = build_entries(CompareConfig(encoders=[str(a), str(b)]), [a, b])
    assert [(e.name, e.architecture) for e in entries] == [("a", "vit"), ("b", "vit"), ("scratch", "vit")]
    # no tasks given: ViT encoders get segmentation and depth, every entry on both
    assert assign_tasks({e.name: e.architecture for e in entries}, CompareConfig(encoders=["x"]).tasks) == {
        "segmentation": ["a", "b", "scratch"], "depth": ["a", "b", "scratch"]}
    cfg = CompareConfig(encoders=[str(a), str(b)], names=["same", "same"], out_dir=str(tmp_path / "cmp"))
    with pytest.raises(InputError, match="two entries are named 'same'"):
        run_compare(cfg, log=lambda s: None)
    assert not (tmp_path / "cmp").exists()


def test_point_encoders_of_different_input_features_each_get_their_own(tmp_path):
    """A colour encoder (3 channels) and a colour + normal one (6) fine-tune side by side; the scratch
    baseline copies the first; an architecture spec takes ``downstream.points.features``."""
    from renderssl.eval.tasks import DownstreamConfig, PointTaskConfig
    from renderssl.models.encoders.pointnet2 import PointNet2, PointNet2Config

    def point_encoder(name, channels):
        cfg = PointNet2Config(preset="small", in_channels=channels)
        return export_encoder(PointNet2(cfg), "pointnet2", cfg, tmp_path / name, pretraining={"method": name, "data": to_dict(DATA)})

    rgb, rgb_normal = point_encoder("rgb", 3), point_encoder("rgbn", 6)
    ds = DownstreamConfig(steps=1, batch_size=2, warmup=0, device="cpu",
                          points=PointTaskConfig(features="color", grid_size=0.1, max_points=2000))
    cfg = CompareConfig(encoders=[str(rgb), str(rgb_normal)], architectures=["pointnet2:small"], fractions=[1.0], seeds=1,
                        first_seed=2, data=DATA, downstream=ds, out_dir=str(tmp_path / "cmp"))
    logged = []
    results = run_compare(cfg, log=logged.append)["tasks"]["segmentation3d"]
    assert sum("seed 2 " in line for line in logged) == 4 and not any("seed 0 " in line for line in logged)
    assert results["point_features"] == {"rgb": "color", "rgbn": "color_normal", "scratch": "color", "pointnet2:small (scratch)": "color"}
    assert all(0.0 <= v["1.0"][0] <= 1.0 for v in results["runs"].values())
    assert "rgbn: color_normal" in (tmp_path / "cmp" / "comparison.md").read_text()
