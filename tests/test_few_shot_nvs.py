"""Few-shot NVS (NPS Sec. 4.1.3), --scene and --video through renderssl evaluate: the view choice by hand and
exhaustively, bounds by source, fine-tuning lowers the loss on the k views, the CLI's refusal for other
recipes, and a Blender / LLFF folder written by the project's own writers evaluated end to end."""

import json

import pytest
import torch
import yaml

from renderssl.data.datasets import near_far
from renderssl.data.synthetic import SyntheticConfig, generate_scene
from renderssl.errors import InputError
from renderssl.eval.few_shot_nvs import (
    EvalScene, FewShotConfig, few_shot_loss, few_shot_views, fine_tune, parse_shots, render_views, scene_bounds,
)
from renderssl.methods.nps import NPS, NPSConfig
from renderssl.models.encoders.resunet import ResUNetConfig
from renderssl.models.nerf.generalizable_nerf import GeneralizableNeRFConfig
from renderssl.models.nerf.transformer import NeRFTransformerConfig

TINY = GeneralizableNeRFConfig(ResUNetConfig(preset="tiny"), NeRFTransformerConfig(preset="tiny", dropout=0.0))


@pytest.fixture(scope="module")
def scene():
    return generate_scene(1, SyntheticConfig(kind="object", num_views=12, width=32, height=24))


def test_view_choice_by_hand():
    # 16 frames: tests 0 and 8; the other 14 are 1..7, 9..15; k = 3 at positions round(i 13 / 2) = 0, 7, 13
    train, test = few_shot_views(16, 3)
    assert train.tolist() == [1, 9, 15] and test.tolist() == [0, 8]
    assert few_shot_views(16, 14)[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]
    with pytest.raises(InputError, match="15 training views wanted, but only 14"):
        few_shot_views(16, 15)


def test_view_choice_never_trains_on_a_test_view_and_is_deterministic():
    for n in range(2, 41):
        for every in (2, 3, 8):
            rest = n - len(range(0, n, every))
            for k in range(1, rest + 1):
                train, test = few_shot_views(n, k, every)
                assert not set(train.tolist()) & set(test.tolist())
                assert len(set(train.tolist())) == k == len(train) and train.tolist() == sorted(train.tolist())
                assert all(int(t) % every == 0 for t in test) and len(test) == len(range(0, n, every))
                again = few_shot_views(n, k, every)
                assert torch.equal(train, again[0]) and torch.equal(test, again[1])


def test_options_are_checked():
    assert parse_shots("3,6,10") == (3, 6, 10)
    with pytest.raises(InputError, match="--few-shot"):
        parse_shots("3,x")
    with pytest.raises(InputError, match="--few-shot: each view count must be >= 2"):
        parse_shots("1")
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        FewShotConfig(batch_size=0)


def test_bounds_from_depth_then_llff_then_blender(scene):
    ids = torch.tensor([1, 4, 7])
    near, far, where = scene_bounds(EvalScene(scene), ids)
    want = near_far(scene.depth[ids], (0.0, 0.0))
    assert (near, far) == (float(want[0]), float(want[1])) and "depth" in where
    no_depth = scene.select(list(range(len(scene))))
    no_depth.depth = None
    llff = torch.tensor([[2.0, 5.0], [1.5, 4.0]])
    assert scene_bounds(EvalScene(no_depth, "llff", llff), ids)[:2] == (1.5, 5.0)
    assert scene_bounds(EvalScene(no_depth, "blender"), ids)[:2] == (2.0, 6.0)
    with pytest.raises(InputError, match="has no depth and no bounds"):
        scene_bounds(EvalScene(no_depth, "scannet"), ids)


STEPS = 25


def test_fine_tuning_on_k_views_lowers_their_loss_and_leaves_the_original(scene):
    torch.manual_seed(0)
    method = NPS(NPSConfig(model=TINY, rays_per_target=64, num_samples=8, eval_source_views=3))
    train, test = few_shot_views(len(scene), 3)
    near, far, _ = scene_bounds(EvalScene(scene), train)
    model = method
    before = few_shot_loss(model, scene, train, near, far)
    losses = fine_tune(model, scene, train, near, far, steps=STEPS, lr=3e-3, feature_lr=3e-3, batch_size=2)
    after = few_shot_loss(model, scene, train, near, far)
    assert len(losses) == STEPS and after < 0.5 * before, (before, after)
    out = render_views(model, scene, train, test, near, far)
    assert out.shape == (len(test), 3, 24, 32) and 0 <= float(out.min()) and float(out.max()) <= 1


@pytest.fixture(scope="module")
def nps_run(tmp_path_factory):
    from renderssl.experiment import load_experiment, run_pretraining

    out = tmp_path_factory.mktemp("nps_run")
    cfg = load_experiment("nps_tiny", [
        "train.steps=2", "train.batch_size=1", f"train.out_dir={out}", "train.progress=false", "train.log_every=1",
        "data.width=32", "data.height=24", "data.views=10", "data.train_scenes=2", "data.val_scenes=0", "data.test_scenes=1",
        "nps.rays_per_target=32", "nps.num_samples=8", "nps.eval_source_views=3", "train.ckpt_every=100",
        "train.preview_every=100"])
    run_pretraining(cfg)
    return out


def test_the_cli_refuses_nps_options_for_other_recipes(tmp_path, capsys):
    from renderssl.cli import main
    from renderssl.experiment import config_dict, load_experiment

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_dict(load_experiment("gmae_tiny")), sort_keys=False))
    for option in (["--few-shot", "3"], ["--video"], ["--scene", str(tmp_path)]):
        assert main(["evaluate", str(tmp_path), *option]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "for NPS runs only" in err and "gmae run" in err and option[0] in err


@pytest.mark.parametrize("fmt", ["blender", "llff"])
def test_scene_folder_zero_shot_few_shot_and_video(nps_run, tmp_path, fmt):
    from PIL import Image

    from renderssl.data.formats import write_viewset
    from renderssl.evaluate import evaluate_run

    views = generate_scene(5, SyntheticConfig(kind="object", num_views=10, width=40, height=30))
    folder = tmp_path / fmt
    write_viewset(views, folder, fmt, **({"factor": 1} if fmt == "llff" else {}))
    lines = []
    few = FewShotConfig(shots=(3,), steps=2, batch_size=1)
    result = evaluate_run(nps_run, scene=folder, few_shot=few, video=True, video_frames=11, log=lines.append)
    nv = result["novel_views"]
    assert nv["images"] == 2 and nv["test_views"] == [0, 8] and nv["context_views"] == 3
    assert 0 < nv["model"]["psnr"] < 60 and 0 < nv["nearest_context_view"]["psnr"] < 60
    assert nv["near_far_from"] == ("the views' depth" if fmt == "blender" else "the LLFF bounds")
    k3 = result["few_shot"]["k"]["3"]
    assert set(k3) >= {"fine_tuned", "zero_shot", "scratch", "nearest_training_view"} and k3["images"] == 2
    assert k3["views"][folder.name]["train_views"] == [1, 5, 9]
    assert sum(line.startswith("few-shot k=3") for line in lines) == 1
    saved = json.loads((nps_run / "evaluation.json").read_text())
    # 10 frames, 4 poses per pair, <= 11 poses: every 4th frame as keyframes (0, 4, 8) -> 2 x 5 + 1 = 11 poses
    assert saved["few_shot"]["k"]["3"]["images"] == 2 and saved["video"]["frames"] == 11
    assert saved["video"]["keyframes"] == [0, 4, 8]
    with Image.open(nps_run / "path.gif") as gif:
        assert gif.n_frames == 11 and gif.size == (32, 24)


def test_the_cli_runs_few_shot_and_video_on_the_test_split(nps_run):
    from renderssl.cli import main

    assert main(["evaluate", str(nps_run), "--few-shot", "3", "--few-shot-steps", "1", "--video", "--video-frames", "6",
                 "nps.eval_source_views=2"]) == 0
    saved = json.loads((nps_run / "evaluation.json").read_text())
    assert saved["novel_views"]["context_views"] == 2 and saved["novel_views"]["images"] == 1  # the test split's
    k3 = saved["few_shot"]["k"]["3"]
    assert saved["few_shot"]["steps"] == 1 and k3["scenes"] == 1 and k3["source_views"] == 2
    assert k3["views"][saved["few_shot"]["scenes"][0]]["test_views"] == [0, 8]
    assert saved["video"]["frames"] == 6 and saved["video"]["keyframes"] == [0, 5]  # stride 5: 2 keys x (4 + 1) -> 6
