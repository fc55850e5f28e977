"""Streamed data: lazily read splits equal the eager path bit for bit, bounded caches, the unlabelled
pretraining pool, unreadable files skipped and named, one config section per recipe, earlier stages."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from renderssl.data.build import load_split, pool_indices, split_range
from renderssl.data.datasets import ImageDataset, RGBDFrameDataset, collate_stacked
from renderssl.data.formats import read_scannet, write_scannet
from renderssl.data.scenes import SceneList, SceneRef
from renderssl.data.synthetic import SyntheticConfig, generate_scene
from renderssl.data.unreadable import UnreadableDataError
from renderssl.errors import InputError
from renderssl.experiment import config_dict, load_experiment, run_pretraining
from renderssl.train.config import ConfigError, DataConfig

SMALL = dict(width=24, height=16, views=4, train_scenes=3, val_scenes=1, test_scenes=2)


def same_samples(a, b) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), (i, key)
            else:
                assert x[key] == y[key], (i, key)


@pytest.mark.parametrize("kind", ["room", "object"])
def test_lazily_read_synthetic_split_equals_the_eager_scenes_bit_for_bit(kind):
    data = DataConfig(kind=kind, **SMALL)
    synth = SyntheticConfig(kind=kind, num_views=4, width=24, height=16)
    eager = [generate_scene(data.seed + i, synth) for i in split_range(data, "train")]
    refs = load_split(data, "train")
    assert all(isinstance(r, SceneRef) for r in refs) and [r.name for r in refs] == [v.name for v in eager]
    same_samples(RGBDFrameDataset(eager), RGBDFrameDataset(refs, cache_mb=0))  # every frame rendered on its own
    same_samples(ImageDataset(eager, size=(8, 12)), ImageDataset(refs, size=(8, 12)))
    # through DataLoader workers, in the order a sampler gives
    order = [5, 0, 11, 3, 7, 1]
    loads = [DataLoader(RGBDFrameDataset(s), batch_size=3, sampler=order, collate_fn=collate_stacked, num_workers=w)
             for s, w in ((eager, 0), (refs, 2))]
    for a, b in zip(*loads):
        assert all(torch.equal(a[k], b[k]) for k in ("rgb", "depth", "K", "c2w", "semantic", "instance"))


def test_lazily_read_scannet_folder_equals_the_eager_reader(tmp_path):
    synth = SyntheticConfig(num_views=5, width=20, height=12)
    for i in range(4):
        write_scannet(generate_scene(i, synth), tmp_path / f"scene{i:02d}")
    data = DataConfig(source=str(tmp_path), train_scenes=3, val_scenes=0, test_scenes=1, width=20, height=12)
    eager = [read_scannet(tmp_path / f"scene{i:02d}") for i in range(3)]
    same_samples(RGBDFrameDataset(eager), RGBDFrameDataset(load_split(data, "train")))


def test_folder_frames_are_brought_to_the_configured_size_when_read(tmp_path):
    """A 4:3 scene read for a square model: centre-cropped then resized, K following exactly, so a world
    point projects to the same place relative to the crop."""
    synth = SyntheticConfig(num_views=3, width=40, height=30)
    vs = generate_scene(5, synth)
    write_scannet(vs, tmp_path / "s")
    data = DataConfig(source=str(tmp_path / "s"), train_scenes=1, val_scenes=0, test_scenes=0, width=16, height=16)
    ds = RGBDFrameDataset(load_split(data, "train"))
    sample = ds[1]
    assert sample["rgb"].shape == (3, 16, 16) and sample["depth"].shape == (1, 16, 16) and sample["semantic"].shape == (16, 16)
    K = vs.K[1].double()  # the 30x30 centre window starts at x = 5, then x 16/30
    expected = torch.tensor([[K[0, 0] * 16 / 30, 0, (K[0, 2] - 5) * 16 / 30], [0, K[1, 1] * 16 / 30, K[1, 2] * 16 / 30], [0, 0, 1]])
    torch.testing.assert_close(sample["K"].double(), expected.double(), atol=1e-5, rtol=0)
    assert bool(torch.isin(sample["depth"], read_scannet(tmp_path / "s").depth[1]).all())  # nearest: no invented depth


def test_scene_list_opens_on_demand_and_bounds_its_caches():
    opened = []

    def opener(seed):
        opened.append(seed)
        return generate_scene(seed, SyntheticConfig(num_views=3, width=8, height=8))

    import functools

    refs = [SceneRef(f"s{i}", 3, functools.partial(opener, i)) for i in range(5)]
    scenes = SceneList(refs, cache_scenes=2)
    assert scenes.lengths() == [3] * 5 and opened == []  # listing opens nothing
    for i in range(5):
        scenes.frame(i, 0)
    assert opened == [0, 1, 2, 3, 4] and len(scenes.cache.scenes) == 2
    lazy = load_split(DataConfig(**{**SMALL, "width": 32, "height": 32}), "train")
    frame_bytes = 32 * 32 * (3 + 1 + 3) * 4 + 2 * 32 * 32 * 2  # rgb, depth, normals float32; labels int16
    budget = SceneList(lazy, cache_mb=2.5 * frame_bytes / 2**20)
    for f in range(4):
        budget.frame(0, f)
    assert len(budget.cache.frames) == 2 and budget.cache.frame_bytes <= 2.5 * frame_bytes


def test_pretraining_pool_grows_past_the_labelled_splits_without_touching_val_or_test():
    data = DataConfig(**{**SMALL, "pretrain_scenes": 7})
    pool = pool_indices(data)
    held_out = set(split_range(data, "val")) | set(split_range(data, "test"))
    assert len(pool) == 7 and not set(pool) & held_out
    assert pool[:3] == list(split_range(data, "train"))  # the labelled train scenes first
    names = [r.name for r in load_split(data, "pretrain")]
    assert len(set(names)) == 7
    assert [r.name for r in load_split(dataclasses.replace(data, pretrain_scenes=None), "pretrain")] == names[:3]


def test_pretraining_folder_may_not_hold_a_held_out_scene(tmp_path):
    synth = SyntheticConfig(num_views=2, width=8, height=8)
    for i in range(3):
        write_scannet(generate_scene(i, synth), tmp_path / "labelled" / f"s{i}")
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "s2").symlink_to(tmp_path / "labelled" / "s2")
    write_scannet(generate_scene(9, synth), tmp_path / "pool" / "extra")
    data = DataConfig(source=str(tmp_path / "labelled"), train_scenes=2, val_scenes=0, test_scenes=1,
                      pretrain_source=str(tmp_path / "pool"))
    with pytest.raises(InputError, match="val or test scene"):
        load_split(data, "pretrain")


def corrupt_folder(root, frames: int, bad: list[int]):
    """A ScanNet-style scene of ``frames`` frames whose colour images ``bad`` are truncated."""
    write_scannet(generate_scene(0, SyntheticConfig(num_views=frames, width=16, height=16)), root / "scene")
    names = []
    for i in bad:
        path = root / "scene" / "color" / f"{i}.png"
        path.write_bytes(path.read_bytes()[:40])
        names.append(str(path))
    return names


def tiny_mae(out, source, *extra):
    return load_experiment("mae_tiny", [
        f"train.out_dir={out}", "train.progress=false", "train.device=cpu", "train.log_every=5", "train.ckpt_every=100",
        "train.preview_every=100", "mae.encoder={preset: null, embed_dim: 32, depth: 1, num_heads: 2, img_size: 16, patch_size: 4}",
        "mae.decoder_embed_dim=16", "mae.decoder_depth=1", "mae.decoder_num_heads=2", f"data.source={source}",
        "data.width=16", "data.height=16", "data.train_scenes=1", "data.val_scenes=0", "data.test_scenes=0", *extra])


def test_a_run_with_3_corrupt_files_among_200_finishes_and_names_them(tmp_path):
    names = corrupt_folder(tmp_path / "data", 200, [17, 90, 151])
    cfg = tiny_mae(tmp_path / "run", tmp_path / "data", "train.steps=25", "train.batch_size=8")  # one epoch
    summary = run_pretraining(cfg)
    assert summary.steps_done == 25
    assert len(summary.skipped_reads) == 3
    for name in names:
        assert sum(name in problem for problem in summary.skipped_reads) == 1


def test_a_run_whose_reads_mostly_fail_stops_naming_the_files(tmp_path):
    names = corrupt_folder(tmp_path / "data", 40, list(range(0, 40, 3)))
    cfg = tiny_mae(tmp_path / "run", tmp_path / "data", "train.steps=20", "train.batch_size=4", "data.max_bad_fraction=0.1")
    with pytest.raises(UnreadableDataError, match="max_bad_fraction") as err:
        run_pretraining(cfg)
    listed = [name for name in names if name in str(err.value)]
    assert len(listed) >= 5  # the run stopped once 5 > 0.1 x 40 distinct files had failed, and names them


def test_a_config_holds_its_recipes_section_only(tmp_path):
    cfg = load_experiment("gmae_tiny")
    written = config_dict(cfg)
    assert set(written) == {"method", "gmae", "data", "optim", "train"}
    assert load_experiment("gmae_tiny", ["method=gmae"]).gmae.num_gaussians == cfg.gmae.num_gaussians
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**written, "mae": {"mask_ratio": 0.5}}))
    with pytest.raises(ConfigError, match="another recipe"):
        load_experiment(path)


def test_mask3d_stage_one_is_pretrained_first_and_reused(tmp_path):
    from renderssl.experiment import resolve_stages

    common = ["train.steps=2", "train.batch_size=4", "train.progress=false", "train.device=cpu", "train.log_every=1",
              "data.train_scenes=2", "data.val_scenes=0", "data.test_scenes=0", "data.views=4"]
    stage_spec = "pretrain:mae_tiny train.steps=2 train.batch_size=4 train.progress=false"
    cfg = load_experiment("mask3d_tiny", [*common, f"train.out_dir={tmp_path / 'm3d'}", f"mask3d.init_from={stage_spec}"])
    messages = []
    resolved = resolve_stages(cfg, log=messages.append)
    stage = tmp_path / "mask3d_init_from_mae_tiny"
    assert resolved.mask3d.init_from == str(stage) and (stage / "encoder" / "encoder.json").is_file()
    stage_cfg = yaml.safe_load((stage / "config.yaml").read_text())
    assert stage_cfg["mae"]["encoder"] == yaml.safe_load(yaml.safe_dump(config_dict(cfg)))["mask3d"]["encoder"]
    assert stage_cfg["data"] == yaml.safe_load(yaml.safe_dump(config_dict(cfg)))["data"] and stage_cfg["train"]["steps"] == 2
    assert len(messages) == 1
    assert resolve_stages(cfg, log=messages.append).mask3d.init_from == str(stage) and len(messages) == 1  # reused


def test_a_config_builds_the_same_initial_weights_and_leaves_the_global_rng_alone():
    from renderssl.experiment import build_method

    state = torch.random.get_rng_state()
    a, b = (build_method(load_experiment("mae_tiny")).state_dict() for _ in range(2))
    c = build_method(load_experiment("mae_tiny", ["train.seed=1"])).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["decoder_pred.weight"], c["decoder_pred.weight"])
    assert torch.equal(state, torch.random.get_rng_state())


def test_a_source_with_too_few_scenes_is_split_by_frames_within_them(tmp_path):
    from renderssl.data.build import split_manifest

    synth = SyntheticConfig(num_views=20, width=8, height=8)
    write_scannet(generate_scene(3, synth), tmp_path / "only_scene")
    data = DataConfig(source=str(tmp_path), train_scenes=3, val_scenes=1, test_scenes=1, width=8, height=8)  # 5 wanted, 1 there
    train, val, test = (load_split(data, s) for s in ("train", "val", "test"))
    assert [r.name for r in train + val + test] == ["only_scene@train", "only_scene@val", "only_scene@test"]
    assert [r.frames for r in train + val + test] == [tuple(range(12)), tuple(range(12, 16)), tuple(range(16, 20))]
    eager = read_scannet(tmp_path / "only_scene")
    test_frames = RGBDFrameDataset(test)
    assert len(test_frames) == 4
    for i in range(4):
        assert torch.equal(test_frames[i]["rgb"], eager.rgb[16 + i]) and torch.equal(test_frames[i]["c2w"], eager.c2w[16 + i])
    assert split_manifest(data) == {"train": {"only_scene@train": list(range(12))}, "val": {"only_scene@val": list(range(12, 16))},
                                    "test": {"only_scene@test": list(range(16, 20))}}
    with pytest.raises(InputError, match=r"has 1 scene\(s\); the splits need 5 \(data.train_scenes 3 \+ data.val_scenes 1 "
                                         r"\+ data.test_scenes 1\).*data.split_by=frames"):
        load_split(dataclasses.replace(data, split_by="scenes"), "train")


def test_a_scene_with_too_many_unreadable_frames_stops_naming_them(tmp_path):
    from renderssl.data.build import open_split

    names = corrupt_folder(tmp_path, 10, [2, 5])
    data = DataConfig(source=str(tmp_path), train_scenes=1, val_scenes=0, test_scenes=0, width=16, height=16,
                      max_bad_fraction=0.1)
    with pytest.raises(InputError, match=r"2 of 10 frames cannot be read, more than 0.1") as err:
        open_split(data, "train")
    assert all(name in str(err.value) for name in names)
    with pytest.warns(UserWarning, match="skipped 2 frame"):
        assert len(open_split(dataclasses.replace(data, max_bad_fraction=0.2), "train")[0]) == 8
