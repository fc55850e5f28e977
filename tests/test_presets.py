"""Every paper-scale preset builds and takes one optimizer step here: batch 1, lazily read data at the
preset's own resolution, the preset's full scene lists (listed, never decoded up front)."""

from __future__ import annotations

import pytest
import torch

from renderssl.experiment import build_method, load_experiment, presets, run_pretraining
from renderssl.train.checkpoint import load_checkpoint

BASE = [p for p in presets() if p.endswith("_base")]


def test_there_are_base_presets_of_every_recipe():
    assert {"gmae_base", "mae_base", "mask3d_base", "gs3_rgbd_base", "gs3_rgb_base", "ponder_base", "ponder_images_base", "nps_base"} <= set(BASE)


@pytest.mark.parametrize("preset", BASE)
def test_base_preset_builds_and_takes_one_step(preset, tmp_path):
    overrides = ["train.steps=1", "train.batch_size=1", "train.accumulate=1", "train.device=cpu", "train.progress=false",
                 "train.val_every=0", f"train.out_dir={tmp_path}", "optim.warmup_steps=0"]
    cfg = load_experiment(preset, overrides)
    if "init_from" in cfg.method_config.__dataclass_fields__:
        cfg = load_experiment(preset, [*overrides, f"{cfg.method}.init_from=null"])  # Stage I is a run of its own preset
    if "lpips_weight" in cfg.method_config.__dataclass_fields__:  # LPIPS weights are local files a test machine lacks
        cfg = load_experiment(preset, [*overrides, f"{cfg.method}.lpips_weight=0"])
    if "rays_per_target" in cfg.method_config.__dataclass_fields__:  # NPS: 2048 rays hold ~48 GiB on a CPU; the model is whole
        cfg = load_experiment(preset, [*overrides, f"{cfg.method}.rays_per_target=32"])
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in build_method(cfg).encoder.state_dict().items()}
    summary = run_pretraining(cfg)
    assert summary.steps_done == 1 and summary.skipped_nonfinite == 0 and summary.skipped_reads == []
    after = {k[len("encoder."):]: v for k, v in load_checkpoint(summary.checkpoint)["model"].items() if k.startswith("encoder.")}
    assert after.keys() == before.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2  # the step updated the encoder
    height, width = cfg.data.height, cfg.data.width
    if hasattr(getattr(cfg.method_config, "encoder", None), "img_size"):  # image encoders with a fixed input size
        assert tuple(cfg.method_config.encoder.img_size) == (height, width)  # the preset's resolution reached the model
