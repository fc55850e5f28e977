"""renderssl sweep: grid expansion, the shipped ratio grid, and a tiny sweep end to end."""

import pytest

from renderssl.errors import InputError
from renderssl.sweep import SweepConfig, grid_points, load_sweep, run_name, run_sweep



def test_grid_points_and_names():
    points = grid_points({"a.x": [1, 2], "b.y": [0.1, 0.2, 0.3]})
    assert len(points) == 6 and points[0] == {"a.x": 1, "b.y": 0.1} and points[-1] == {"a.x": 2, "b.y": 0.3}
    assert run_name(points[1]) == "x=1_y=0.2"


def test_shipped_mask_ratio_grid():
    cfg = load_sweep("mask3d_ratio_grid")
    assert cfg.base == "mask3d_tiny" and len(grid_points(cfg.grid)) == 9
    with pytest.raises(InputError, match="non-empty list"):
        SweepConfig(grid={"mask3d.rgb_keep": []})


def test_tiny_sweep_runs_every_point_and_compares(tmp_path):
    tiny = [
        "mask3d.encoder.preset=null", "mask3d.encoder.embed_dim=48", "mask3d.encoder.depth=1", "mask3d.encoder.num_heads=3",
        "mask3d.encoder.img_size=[32,32]", "mask3d.encoder.patch_size=8", "mask3d.depth_encoder_dim=48", "mask3d.decoder_embed_dim=32",
        "mask3d.decoder_depth=1", "mask3d.decoder_num_heads=2", "data.width=32", "data.height=32", "data.views=3", "data.train_scenes=2",
        "data.val_scenes=1", "data.test_scenes=1", "train.batch_size=4", "train.steps=2", "train.progress=false",
        "mask3d.init_from=pretrain:mae_tiny train.steps=1 train.batch_size=4",  # one Stage I run, shared by the points
    ]
    cfg = SweepConfig(base="mask3d_tiny", grid={"mask3d.rgb_keep": [0.25, 0.5]}, overrides=tiny, out_dir=str(tmp_path),
                      compare={"tasks": ["depth"], "fractions": [1.0], "seeds": 1, "downstream": {"steps": 2, "batch_size": 2}})
    result = run_sweep(cfg, log=lambda s: None)
    assert set(result["runs"]) == {"rgb_keep=0.25", "rgb_keep=0.5"}
    assert set(result["compare"]["tasks"]["depth"]["runs"]) == {"rgb_keep=0.25", "rgb_keep=0.5", "scratch"}
    assert (tmp_path / "compare" / "comparison.md").is_file()
    assert (tmp_path / "mask3d_init_from_mae_tiny" / "encoder" / "encoder.json").is_file()
