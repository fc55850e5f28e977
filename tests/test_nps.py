"""NPS: the recipe's step, its parameter groups, the curriculum through the trainer, and learning one scene."""

import pytest
import torch

from renderssl.data.datasets import collate_stacked, near_far
from renderssl.data.synthetic import SyntheticConfig, generate_scene
from renderssl.data.views import SourceViewCurriculum, select_target_and_sources
from renderssl.errors import InputError
from renderssl.methods.base import StepContext
from renderssl.methods.nps import NPS, NPSConfig
from renderssl.models.encoders.resunet import ResUNetConfig
from renderssl.models.nerf.generalizable_nerf import GeneralizableNeRFConfig
from renderssl.models.nerf.transformer import NeRFTransformerConfig

TINY = GeneralizableNeRFConfig(ResUNetConfig(preset="tiny"), NeRFTransformerConfig(preset="tiny", dropout=0.0))


def tiny_nps(**fields) -> NPS:
    torch.manual_seed(0)
    return NPS(NPSConfig(**{"model": TINY, "rays_per_target": 64, "num_samples": 16, "eval_source_views": 3, **fields}))


@pytest.fixture(scope="module")
def scene():
    return generate_scene(1, SyntheticConfig(kind="object", num_views=12, width=32, height=24))


def sample(scene, ids: list[int]) -> dict:
    """A multi-view sample of the frames ``ids`` (sources, then the target)."""
    ids = torch.tensor(ids)
    depth = scene.depth[ids]
    near, far = near_far(depth[:-1], (0.1, 100.0))
    return {"rgb": scene.rgb[ids], "depth": depth, "K": scene.K[ids], "c2w": scene.c2w[ids], "near": near, "far": far}


def test_a_step_renders_the_target_rays_and_trains_both_networks(scene):
    method = tiny_nps()
    batch = collate_stacked([sample(scene, [0, 1, 2, 5]), sample(scene, [6, 7, 8, 3])])
    out = method(batch, StepContext(torch.Generator().manual_seed(1), 1, 10))
    assert torch.isfinite(out.loss) and out.rendered_pixels == 2 * 64
    assert {"mse", "psnr", "source_views", "depth_abs_rel"} <= set(out.terms) and float(out.terms["source_views"]) == 3
    assert out.renders["rendered rays"].shape == (2, 3, 24, 32)
    out.loss.backward()
    grads = {n: p.grad for n, p in method.named_parameters() if p.requires_grad}
    assert grads["encoder.feature_net.conv1.weight"].abs().sum() > 0  # through the projector's feature sampling
    assert grads["encoder.transformer.rgbfeat_fc.0.weight"].abs().sum() > 0
    again = method(batch, StepContext(torch.Generator().manual_seed(1), 1, 10))
    assert float(again.loss.detach()) == float(out.loss.detach())  # a step is a function of its generator


def test_parameter_groups_give_the_cnn_its_own_learning_rate():
    method = tiny_nps(feature_lr=2e-3)
    (group,) = method.param_groups()
    assert group.lr == 2e-3 and group.prefixes == ("encoder.feature_net.",)
    assert any(n.startswith("encoder.feature_net.") for n, _ in method.named_parameters())


def test_bad_config_and_batch_are_named(scene):
    with pytest.raises(InputError, match="near_scale"):
        NPSConfig(near_scale=1.2)
    with pytest.raises(InputError, match="rays_per_target: 1000 rays wanted from targets of 24x32"):
        tiny_nps(rays_per_target=1000)(collate_stacked([sample(scene, [0, 1])]), StepContext(torch.Generator()))
    with pytest.raises(InputError, match="no 'near'"):
        tiny_nps()({"rgb": torch.zeros(1, 2, 3, 8, 8), "K": torch.eye(3).repeat(1, 2, 1, 1), "c2w": torch.eye(4).repeat(1, 2, 1, 1)})


def test_render_targets_is_deterministic_and_full_frame(scene):
    method = tiny_nps().eval()
    batch = collate_stacked([sample(scene, [0, 1, 2, 5])])
    a, b = method.render_targets(batch), method.render_targets(batch)
    assert a.shape == (1, 1, 3, 24, 32) and torch.equal(a, b)


def test_the_curriculum_follows_the_trainers_steps(tmp_path):
    """Through the trainer: the source count of each step's batch is the curriculum's at that step."""
    from renderssl.experiment import load_experiment, run_pretraining

    cfg = load_experiment("nps_tiny", [
        "train.steps=8", "train.batch_size=2", f"train.out_dir={tmp_path}", "train.progress=false", "train.log_every=1",
        "data.width=32", "data.height=24", "data.views=10", "data.train_scenes=4", "data.val_scenes=0", "data.test_scenes=1",
        "nps.rays_per_target=32", "nps.num_samples=8", "nps.views.warmup=0.0", "nps.views.ramp=1.0",
        "nps.views.farther_views=false", "nps.views.uniform_sampling=false", "train.ckpt_every=100", "train.preview_every=100"])
    run_pretraining(cfg)
    import json

    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    counts = [int(r["source_views"]) for r in logged if "source_views" in r]
    from renderssl.data.views import step_view_count

    assert counts == [step_view_count(cfg.recipe.views, s, 8, cfg.data.seed) for s in range(1, 9)]
    assert counts[-1] == 2 and counts[0] >= 4  # 6 +- 2 at the start, 2 at the end

    # renderssl evaluate: a random target of each test scene from its 2 nearest views, against the nearest view
    from renderssl.data.build import load_split
    from renderssl.eval.novel_views import nearest_sources, novel_view_dataset
    from renderssl.evaluate import evaluate_run

    logged = []
    result = evaluate_run(tmp_path, overrides=["nps.eval_source_views=2", "nps.lpips_weights.vgg_path=/nowhere/vgg.pth"],
                          log=logged.append)["novel_views"]
    assert any("LPIPS: n/a (no LPIPS weights: set nps.lpips_weights.vgg_path" in line for line in logged)
    assert result["context_views"] == 2 and result["images"] == 1
    assert 0 < result["model"]["psnr"] < 60 and 0 < result["nearest_context_view"]["psnr"] < 60
    scenes = load_split(cfg.data, "test")
    s = novel_view_dataset(scenes, cfg.data, nearest_sources(2), (24, 32), 2)[0]
    c2w = scenes[0].open().c2w
    dist = (c2w[:, :3, 3] - c2w[s["view_ids"][-1], :3, 3]).norm(dim=-1)
    dist[s["view_ids"][-1]] = float("inf")
    assert set(s["view_ids"][:2].tolist()) == set(dist.argsort()[:2].tolist())  # exactly the 2 nearest
    with pytest.raises(InputError, match="only data.\\* keys and nps.eval_source_views, nps.eval_chunk, nps.lpips_weights"):
        evaluate_run(tmp_path, overrides=["nps.num_samples=4"], log=lambda s: None)


def test_a_tiny_run_on_one_object_scene_halves_its_loss(scene):
    """Frames 0..8 of one object scene, random targets and their 3 nearest sources; the loss of a fixed
    batch halves within 80 steps. (Beating the nearest view on held-out frames takes a longer budget:
    ``scripts/nps_one_scene.py``, figures in docs/results.)"""
    method = tiny_nps(rays_per_target=128, num_samples=16)
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    train = torch.arange(9)
    curriculum = SourceViewCurriculum(views_start=3, jitter=0)
    g = torch.Generator().manual_seed(0)
    fixed = collate_stacked([sample(scene, [0, 1, 2, 4]), sample(scene, [5, 6, 7, 3])])
    losses = []
    for step in range(80):
        batch = collate_stacked([sample(scene, train[select_target_and_sources(curriculum, scene.c2w[train], 0, 1, g)].tolist())
                                 for _ in range(2)]) if step % 2 else fixed
        out = method(batch, StepContext(g, step + 1, 80))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if batch is fixed:
            losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_full_frame_rendering_in_chunks_equals_the_rays_rendered_at_once(scene):
    """render_image (chunks of 100 rays) = render_pixels of every pixel centre in one call (midpoint samples)."""
    from renderssl.geometry import Cameras

    model = tiny_nps().encoder.eval()
    b = collate_stacked([sample(scene, [0, 1, 2, 5])])
    sources = model.encode_sources(b["rgb"][:, :3], b["K"][:, :3], b["c2w"][:, :3])
    K, c2w = b["K"][:, 3], b["c2w"][:, 3]
    rgb, depth = model.render_image(sources, K, c2w, b["near"], b["far"], 8, chunk=100)  # (1, 3, 24, 32), (1, 1, 24, 32)
    uv = Cameras(K, c2w, 32, 24).pixel_centers().reshape(1, -1, 2)  # (1, H W, 2)
    with torch.no_grad():
        once = model.render_pixels(sources, K, c2w, uv, b["near"], b["far"], 8)
    torch.testing.assert_close(rgb.flatten(2).transpose(1, 2), once.rgb)
    torch.testing.assert_close(depth.flatten(1), once.depth)
    assert bool((once.t[..., 1:] > once.t[..., :-1]).all()) and bool((once.t >= b["near"]).all() and (once.t <= b["far"]).all())
    assert GeneralizableNeRFConfig(ResUNetConfig(preset="tiny"), NeRFTransformerConfig(preset="tiny")).transformer.feature_channels == 16
