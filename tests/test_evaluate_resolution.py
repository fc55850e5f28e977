"""renderssl evaluate runs at the run's training resolution: the same synthetic frames given at 64x64 and at
640x480 (4:3, written in the ScanNet layout) score the same; metrics without labels are n/a; an empty split
is a one-line refusal."""

from __future__ import annotations

import json

import pytest
import torch

from renderssl.cli import main
from renderssl.data.formats import write_scannet
from renderssl.data.formats.images import write_rgb
from renderssl.data.synthetic import SyntheticConfig, generate_scene, make_scene_layout, render_layout
from renderssl.data.types import ViewSet
from renderssl.evaluate import evaluate_run, evaluation_frames, model_size
from renderssl.experiment import load_experiment, run_pretraining
from renderssl.geometry import Cameras, intrinsics_matrix

pytestmark = pytest.mark.filterwarnings("ignore:frames of .* are (centre-cropped|stretched|resized)")

SEED, VIEWS = 7, 4
ON_ONE_SCENE = ["data.split_by=scenes", "data.train_scenes=0", "data.val_scenes=0", "data.test_scenes=1"]


@pytest.fixture(scope="module")
def gmae_run(tmp_path_factory):
    """GMAE trained 20 steps at 64x64 on synthetic rooms with a tiny encoder (~16 dB: past the untrained
    model's uniform colour, so the score depends on the frames' content)."""
    out = tmp_path_factory.mktemp("gmae") / "run"
    cfg = load_experiment("gmae_tiny", [
        f"train.out_dir={out}", "train.progress=false", "train.device=cpu", "train.steps=20", "train.batch_size=8",
        "train.ckpt_every=100", "train.preview_every=100", "train.log_every=10", "optim.warmup_steps=2", "optim.lr=3e-3",
        "gmae.encoder={preset: null, embed_dim: 48, depth: 1, num_heads: 3, img_size: 64, patch_size: 8}",
        "gmae.num_gaussians=64", "gmae.decoder_embed_dim=32", "gmae.decoder_depth=1", "gmae.decoder_num_heads=2",
        "gmae.render_backend=tiles", "data.views=4", "data.train_scenes=4", "data.val_scenes=1", "data.test_scenes=1"])
    run_pretraining(cfg)
    return out


def write_scene(rgb, K, c2w, depth, instance, root):
    write_scannet(ViewSet(rgb=rgb, K=K, c2w=c2w, depth=depth, instance=instance, name="s"), root)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Scene SEED rendered by the generator at 640x480 and, from the same poses, at 64x64 through the camera
    a centre crop makes (the central 480x480 window, resized) and through the stretched camera; each
    written as a ScanNet-style folder holding one scene."""
    root = tmp_path_factory.mktemp("frames")
    config = SyntheticConfig(kind="room", num_views=VIEWS, width=640, height=480)
    big = generate_scene(SEED, config)
    f = float(big.K[0, 0, 0])
    assert torch.allclose(big.K[0], intrinsics_matrix(f, f, 320, 240))
    write_scene(big.rgb, big.K, big.c2w, big.depth, big.instance, root / "640x480" / "s")
    layout = make_scene_layout(SEED, config)
    s = 64 / 480
    cameras = {  # hand-made: crop shifts cx by the 80-pixel margin, then everything scales by 64/480
        "crop": intrinsics_matrix(f * s, f * s, (320 - 80) * s, 240 * s),
        "stretch": intrinsics_matrix(f * 64 / 640, f * s, 320 * 64 / 640, 240 * s),
    }
    for name, K in cameras.items():
        Ks = K.expand(VIEWS, 3, 3).clone()
        out = render_layout(layout, Cameras(Ks, big.c2w, 64, 64))
        write_scene(out["rgb"], Ks, big.c2w, out["depth"], out["instance"], root / f"64x64_{name}" / "s")
    return root


def evaluate(run, source, *extra, log=lambda *_: None):
    return evaluate_run(run, max_frames=VIEWS, num_layers=4, log=log,
                        overrides=[f"data.source={source}", *ON_ONE_SCENE, *extra])


def model_inputs(run, source, mode):
    """(V, 3, 64, 64) images and (V, 64, 64) instance maps evaluate gives the model from ``source``."""
    cfg = load_experiment(run / "config.yaml", [f"data.source={source}", *ON_ONE_SCENE, f"data.resize={mode}"])
    ds = evaluation_frames(cfg, "test", model_size(cfg))
    return torch.stack([ds[i]["image"] for i in range(len(ds))]), torch.stack([ds[i]["instance"] for i in range(len(ds))])


@pytest.mark.parametrize("mode", ["crop", "stretch"])
def test_the_same_frames_at_64x64_and_640x480_score_the_same(gmae_run, frames, mode):
    lines = []
    small = evaluate(gmae_run, frames / f"64x64_{mode}", f"data.resize={mode}")
    big = evaluate(gmae_run, frames / "640x480", f"data.resize={mode}", log=lines.append)
    assert small["resolution"] == big["resolution"] == [64, 64] and small["reconstruction"]["frames"] == VIEWS
    assert lines[0].startswith("evaluate: gmae at its training resolution 64x64;")
    # equal up to the difference between an antialiased 7.5x reduction and the generator's point samples
    # (the failure: 5.5 dB at full resolution vs 12.3 dB at the trained size)
    assert abs(small["reconstruction"]["psnr"] - big["reconstruction"]["psnr"]) < 0.3
    for result in (small, big):  # the ScanNet folders carry instance maps: edges are scored
        assert 0 <= result["zero_shot_edges"]["ods"] <= 1 and result["zero_shot_edges"]["frames"] == VIEWS
    # what the model sees: the 640x480 frames brought to 64x64 are the 64x64 renders of that mode's camera
    seen, seen_instance = model_inputs(gmae_run, frames / "640x480", mode)
    other = "stretch" if mode == "crop" else "crop"
    for ref, close in ((mode, True), (other, False)):
        rendered, instance = model_inputs(gmae_run, frames / f"64x64_{ref}", ref)
        difference, agreement = float((seen - rendered).abs().mean()), float((seen_instance == instance).float().mean())
        assert (difference < 0.015 and agreement > 0.99) if close else (difference > 0.04 and agreement < 0.9)


def test_edges_are_na_without_instance_labels(gmae_run, frames, tmp_path):
    big = generate_scene(SEED, SyntheticConfig(kind="room", num_views=2, width=48, height=36))
    for i in range(2):
        write_rgb(tmp_path / "photos" / "test" / f"{i}.png", big.rgb[i])
    write_rgb(tmp_path / "photos" / "train" / "0.png", big.rgb[0])
    lines = []
    result = evaluate_run(gmae_run, max_frames=8, num_layers=4, log=lines.append, overrides=[f"data.source={tmp_path / 'photos'}"])
    assert result["reconstruction"]["frames"] == 2 and result["zero_shot_edges"]["ods"] is None
    assert result["zero_shot_edges"]["n/a"] == "no instance labels"
    assert any(line.endswith("vs instance boundaries: n/a (no instance labels)") for line in lines)
    assert not any("0.000" in line for line in lines)
    saved = json.loads((gmae_run / "evaluation.json").read_text())
    assert saved["zero_shot_edges"]["n/a"] == "no instance labels"


def test_an_empty_split_is_refused_in_one_line(gmae_run, tmp_path, capsys):
    assert main(["evaluate", str(gmae_run), "data.test_scenes=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the test split of synthetic is empty (data.test_scenes=0)" in err
    assert "--split train or --split val" in err and "data.test_scenes=N" in err
    assert main(["evaluate", str(gmae_run), "train.steps=3"]) == 2
    assert "only data.* keys" in capsys.readouterr().err
