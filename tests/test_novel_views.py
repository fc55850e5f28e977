"""renderssl evaluate on a multi-view run (eval/novel_views.py): the floor picks the nearest context camera
(ties: smaller rotation, then the first); a tiny GS³ run is scored on held-out scenes against that floor, whose
PSNR matches a hand computation; recipes without novel views say so."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from renderssl.data.synthetic import SyntheticConfig, generate_scene
from renderssl.errors import InputError
from renderssl.eval.novel_views import gather_views, nearest_context, novel_view_dataset, novel_view_scenes
from renderssl.evaluate import evaluate_run
from renderssl.experiment import load_experiment, run_pretraining
from renderssl.geometry import axis_angle_to_rotmat


def camera(x: float, yaw: float = 0.0) -> torch.Tensor:
    """(4, 4) c2w at (x, 0, 0), turned by ``yaw`` about the y axis."""
    c2w = torch.eye(4)
    c2w[:3, :3] = axis_angle_to_rotmat(torch.tensor([0.0, yaw, 0.0]).double()).float()
    c2w[0, 3] = x
    return c2w


def test_nearest_context_by_centre_then_rotation_then_first():
    context = torch.stack([camera(-1.0), camera(1.0, yaw=0.3)])[None]  # (1, 2, 4, 4)
    targets = torch.stack([
        camera(-0.6),  # nearer context 0
        camera(0.7, yaw=1.2),  # nearer context 1 (rotation does not matter when distances differ)
        camera(0.0),  # equidistant: context 0 is unrotated like the target
        camera(0.0, yaw=0.25),  # equidistant: context 1's rotation is the closer
    ])[None]  # (1, 4, 4, 4)
    assert nearest_context(context, targets).tolist() == [[0, 1, 0, 1]]
    same = torch.stack([camera(-1.0), camera(1.0)])[None]  # equidistant, equally rotated: the first
    assert nearest_context(same, camera(0.0)[None, None]).tolist() == [[0]]
    two = torch.cat([context, context.flip(1)])  # (2, 2, 4, 4): a batch, the context order swapped in scene 1
    assert nearest_context(two, torch.cat([targets, targets])).tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]
    views = torch.arange(2 * 2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 2, 3, 2, 2)  # (B, C, 3, H, W)
    picked = gather_views(views, torch.tensor([[1, 0, 0], [0, 0, 1]]))  # (B, T, 3, H, W)
    assert torch.equal(picked[0, 0], views[0, 1]) and torch.equal(picked[1, 2], views[1, 1])
    with pytest.raises(InputError, match="nearest_context"):
        nearest_context(context[0], targets)


@pytest.fixture(scope="module")
def gs3_run(tmp_path_factory):
    """gs3_rgbd_tiny trained 2 steps at 32x24 on synthetic rooms of 8 frames, one test scene."""
    out = tmp_path_factory.mktemp("gs3") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = load_experiment("gs3_rgbd_tiny", [
            f"train.out_dir={out}", "train.progress=false", "train.device=cpu", "train.steps=2", "train.batch_size=2",
            "train.ckpt_every=100", "train.preview_every=100", "train.log_every=10", "data.width=32", "data.height=24",
            "data.views=8", "data.train_scenes=2", "data.val_scenes=1", "data.test_scenes=1"])
        run_pretraining(cfg)
    return out


def psnr_by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10.0 * math.log10(float(((a.double() - b.double()) ** 2).mean()))


def test_gs3_novel_views_against_the_nearest_context_view(gs3_run):
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate_run(gs3_run, log=lines.append)
    saved = json.loads((gs3_run / "evaluation.json").read_text())
    assert saved == result and (gs3_run / "evaluation.png").is_file()
    assert result["method"] == "gs3" and result["resolution"] == [24, 32] and result["skipped"] == []
    nvs = result["novel_views"]
    assert nvs["scenes"] == 1 and nvs["images"] == 1
    for name in ("model", "nearest_context_view"):
        assert set(nvs[name]) == {"psnr", "ssim", "lpips"} and nvs[name]["lpips"].startswith("n/a (no LPIPS weights")
    floor = nvs["nearest_context_view"]
    assert math.isfinite(floor["psnr"]) and math.isfinite(floor["ssim"]) and math.isfinite(nvs["model"]["psnr"])
    assert any(line.strip().startswith("PSNR: model") and "vs nearest context view" in line for line in lines)
    assert sum("LPIPS: n/a" in line for line in lines) == 1
    # the one test scene by hand: its frames, the pair 5 apart with a target strictly between, the nearer camera
    cfg = load_experiment(gs3_run / "config.yaml")
    scene = generate_scene(cfg.data.seed + 3, SyntheticConfig(kind="room", num_views=8, width=32, height=24))  # after 2 train, 1 val
    ids = novel_view_dataset(novel_view_scenes(cfg.data, "test"), cfg.data, cfg.recipe.views, (24, 32))[0]["view_ids"].tolist()
    a, b, t = ids
    assert b - a == 5 and a < t < b
    centres = scene.c2w[:, :3, 3].double()
    nearest = a if (centres[a] - centres[t]).norm() <= (centres[b] - centres[t]).norm() else b
    assert floor["psnr"] == pytest.approx(psnr_by_hand(scene.rgb[nearest].float(), scene.rgb[t].float()), rel=1e-5)


def test_recipes_without_novel_views_say_so():
    from renderssl.methods.base import Method

    class Plain(Method):
        pass

    with pytest.raises(InputError, match="plain does not render novel views"):
        Plain().render_targets({})


def test_lpips_is_scored_for_model_and_floor_when_the_weight_files_exist(tmp_path):
    from renderssl.eval.lpips import LPIPS
    from renderssl.eval.novel_views import evaluate_novel_views, lpips_or_reason
    from renderssl.methods.base import Method
    from renderssl.eval.lpips import LPIPSWeights

    class Grey(Method):  # renders every target mid-grey
        num_context = 2

        def render_targets(self, batch):
            return torch.full_like(batch["rgb"][:, 2:], 0.5)

    torch.manual_seed(0)
    reference = LPIPS()
    for p in reference.parameters():
        p.data.abs_()
    torch.save({k: v for k, v in reference.state_dict().items() if k.startswith("features.")}, tmp_path / "vgg.pth")
    torch.save({k: v for k, v in reference.state_dict().items() if k.startswith("lin")}, tmp_path / "lin.pth")
    none, why = lpips_or_reason(LPIPSWeights(), "gs3.lpips_weights", (24, 32))
    assert none is None and why == "no LPIPS weights: set gs3.lpips_weights.vgg_path and gs3.lpips_weights.lin_path to local files"
    lpips, why = lpips_or_reason(LPIPSWeights(str(tmp_path / "vgg.pth"), str(tmp_path / "lin.pth")), "gs3.lpips_weights", (24, 32))
    assert why is None
    scene = generate_scene(0, SyntheticConfig(num_views=6, width=32, height=24))
    ids = torch.tensor([[0, 4, 1], [1, 5, 4]])  # (B, 2 context + 1 target) frames
    batch = {"rgb": scene.rgb[ids].float(), "c2w": scene.c2w[ids].float()}  # (2, 3, 3, H, W), (2, 3, 4, 4)
    scores, rows = evaluate_novel_views(Grey(), [batch], lpips, examples=4)
    target = batch["rgb"][:, 2]  # (2, 3, H, W)
    nearest = gather_views(batch["rgb"][:, :2], nearest_context(batch["c2w"][:, :2], batch["c2w"][:, 2:]))[:, 0]
    assert scores["model"]["lpips"] == pytest.approx(float(reference(torch.full_like(target, 0.5), target).mean()), rel=1e-5)
    assert scores["nearest_context_view"]["lpips"] == pytest.approx(float(reference(nearest, target).mean()), rel=1e-5)
    assert scores["images"] == scores["scenes"] == 2
    assert list(rows) == ["context 0", "context 1", "target", "rendering", "nearest view"] and len(rows["target"]) == 2
