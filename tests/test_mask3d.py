"""Mask3D: disjoint RGB/depth masks, the depth loss on valid pixels only, learning, Stage-I loading,
encoder-only export, presets and the RGB-D pretraining samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from renderssl.methods.base import StepContext
import yaml
from safetensors.torch import load_file

from renderssl.data.masking import disjoint_rgbd_masks, mask_to_pixels
from renderssl.errors import InputError
from renderssl.export import export_encoder, load_encoder
from renderssl.methods.mae import MAE, MAEConfig
from renderssl.methods.mask3d import Mask3D, Mask3DConfig, depth_patch_loss
from renderssl.models.encoders import ViTConfig, VisionTransformer
from renderssl.train.config import DataConfig, from_dict


ENC = dict(preset=None, embed_dim=48, depth=2, num_heads=3, img_size=32, patch_size=8)
CONFIGS = Path(__file__).parents[1] / "src" / "renderssl" / "configs"


def tiny_mask3d(enc: dict | None = None, **kw) -> Mask3D:
    kw = {"rgb_keep": 0.25, "depth_keep": 0.25, **kw}
    return Mask3D(Mask3DConfig(encoder=ViTConfig(**(enc or ENC)), decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
                               depth_encoder_depth=1, **kw))


def perturbed_mae(enc: dict | None = None, seed: int = 0) -> MAE:
    """A tiny MAE whose encoder tensors all differ from a fresh init (so a skipped load shows)."""
    torch.manual_seed(seed)
    mae = MAE(MAEConfig(encoder=ViTConfig(**(enc or ENC)), decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2))
    with torch.no_grad():
        for name, p in mae.named_parameters():
            if name != "encoder.pos_embed":
                p.add_(0.1 * torch.randn_like(p))
    return mae


def rgbd_batch(size: int = 32, frames: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic room frames (B, 3, H, W), (B, 1, H, W) with a band of invalid (0) depth."""
    from renderssl.data.synthetic import SyntheticConfig, generate_scene

    vs = generate_scene(3, SyntheticConfig(kind="room", num_views=frames, width=size, height=size))
    depth = vs.depth.float().clone()
    depth[:, :, :3, 5:20] = 0.0  # a hole, as real sensors have
    return vs.rgb.float(), depth


def assert_encoder_equals(encoder: VisionTransformer, state: dict) -> None:
    own = encoder.state_dict()
    for k, v in state.items():
        assert torch.equal(own[k], v), k


# ---- masks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("L,rgb_keep,depth_keep,n_rgb,n_depth", [
    (300, 0.2, 0.2, 60, 60),  # paper scale: 240x320 / 16 (Sec. 3.1), keep 20% + 20% (Sec. 4.5)
    (64, 0.2, 0.2, 12, 12),
    (100, 0.29, 0.5, 29, 50),
    (20, 0.8, 0.5, 16, 4),  # fractions above 1: depth takes the 4 patches left
    (20, 1.0, 0.2, 20, 0),  # all colour: no disjoint depth patch (the paper's pure depth prediction)
])
def test_disjoint_masks_have_the_requested_sizes(L, rgb_keep, depth_keep, n_rgb, n_depth):
    B = 5
    m = disjoint_rgbd_masks(B, L, rgb_keep, depth_keep, torch.Generator().manual_seed(0))
    assert m.rgb_ids.shape == (B, n_rgb) and m.depth_ids.shape == (B, n_depth)
    assert torch.equal((1 - m.rgb_mask).sum(1), torch.full((B,), float(n_rgb)))
    assert torch.equal((1 - m.depth_mask).sum(1), torch.full((B,), float(n_depth)))
    assert bool(((1 - m.rgb_mask) * (1 - m.depth_mask) == 0).all())  # no place given as both
    for b in range(B):
        rgb, dep = set(m.rgb_ids[b].tolist()), set(m.depth_ids[b].tolist())
        assert len(rgb) == n_rgb and len(dep) == n_depth and not rgb & dep
        assert rgb == set(torch.nonzero(m.rgb_mask[b] == 0).flatten().tolist())
        assert dep == set(torch.nonzero(m.depth_mask[b] == 0).flatten().tolist())
    # [rgb | depth | rest] unshuffles to patch order
    order = torch.cat([m.rgb_ids, m.depth_ids], 1)
    rest = m.ids_restore.argsort(1)[:, n_rgb + n_depth:]
    shuffled = torch.cat([order, rest], 1)
    assert torch.equal(torch.gather(shuffled, 1, m.ids_restore), torch.arange(L).expand(B, L))


def test_masks_come_from_the_generator():
    a = disjoint_rgbd_masks(2, 64, 0.2, 0.2, torch.Generator().manual_seed(1))
    b = disjoint_rgbd_masks(2, 64, 0.2, 0.2, torch.Generator().manual_seed(1))
    c = disjoint_rgbd_masks(2, 64, 0.2, 0.2, torch.Generator().manual_seed(2))
    assert torch.equal(a.rgb_ids, b.rgb_ids) and torch.equal(a.depth_ids, b.depth_ids)
    assert not torch.equal(a.depth_mask, c.depth_mask)
    with pytest.raises(InputError):
        disjoint_rgbd_masks(1, 10, 0.0, 0.2)


# ---- the loss ----------------------------------------------------------------------------------


def test_depth_loss_hand_case_excludes_invalid_pixels():
    # two patches of 4 pixels; patch 0 has one invalid pixel, patch 1 none valid
    pred = torch.tensor([[[0.0, 1.0, 9.0, 5.0], [3.0, 3.0, 3.0, 3.0]]])
    target = torch.tensor([[[1.0, 2.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]])
    valid = torch.tensor([[[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    every = torch.ones(1, 2)
    # plain: mean of (pred - target)^2 over the 3 valid pixels of patch 0 = (1 + 1 + 4) / 3
    torch.testing.assert_close(depth_patch_loss(pred, target, valid, every, normalise=False), torch.tensor(2.0))
    # normalised: target [1, 2, 3] -> [-1, 0, 1] / sqrt(1 + 1e-6); pred [0, 1, 5]: mean 2, unbiased var 7
    t = torch.tensor([-1.0, 0.0, 1.0]) / (1 + 1e-6) ** 0.5
    p = torch.tensor([-2.0, -1.0, 3.0]) / (7 + 1e-6) ** 0.5
    torch.testing.assert_close(depth_patch_loss(pred, target, valid, every, normalise=True), ((p - t) ** 2).mean())
    # the invalid pixel's values play no part, whatever they are
    for junk in (0.0, 7.0, -3.0, float("nan"), float("inf")):
        changed = target.clone()
        changed[0, 0, 2] = junk
        torch.testing.assert_close(depth_patch_loss(pred, changed, valid, every, normalise=True), ((p - t) ** 2).mean())
    # a patch mask leaves patches out
    assert depth_patch_loss(pred, target, valid, torch.tensor([[0.0, 1.0]]), normalise=False) == 0


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "plain"])
def test_method_loss_ignores_invalid_depth(norm):
    torch.manual_seed(0)
    model = tiny_mask3d(norm_depth_loss=norm)
    rgb, depth = rgbd_batch()
    invalid = depth == 0
    assert invalid.any()

    def loss(d):
        return model({"rgb": rgb, "depth": d}, StepContext(torch.Generator().manual_seed(5))).loss

    base = loss(depth)
    for junk in (float("nan"), -1.0, float("-inf")):  # other encodings of "no depth" change nothing
        assert torch.equal(loss(torch.where(invalid, torch.full_like(depth, junk), depth)), base), junk
    # the target's values at invalid pixels (given explicitly as invalid) are ignored
    out = model.predict(rgb, depth, torch.Generator().manual_seed(5))
    junk_target = torch.where(invalid, torch.full_like(depth, 0.7), out["depth_in"])
    a = model.forward_loss(out["depth_pred"], out["depth_in"], out["valid"], out["masks"])
    b = model.forward_loss(out["depth_pred"], junk_target, out["valid"], out["masks"])
    assert torch.equal(a, b) and torch.equal(a, base)
    # while a valid pixel does count
    moved = depth.clone()
    moved[~invalid.expand_as(depth) & (torch.rand_like(depth) < 0.3)] *= 1.5
    assert not torch.equal(loss(moved), base)


# ---- learning ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,ratio", [({}, 0.6), ({"norm_depth_loss": False, "reconstruct_rgb": True}, 0.5)],
                         ids=["norm-depth", "plain-rgb+depth"])
def test_tiny_mask3d_reduces_its_loss_on_a_fixed_batch(kw, ratio):
    torch.manual_seed(0)
    model = tiny_mask3d(**kw)
    rgb, depth = rgbd_batch()
    batch = {"rgb": rgb, "depth": depth}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        out = model(batch, StepContext(torch.Generator().manual_seed(0)))  # same masks every step
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < ratio * losses[0], losses[::8]
    assert model.depth_encoder.patch_embed.weight.grad is not None  # the depth branch takes part
    panels = model.preview_panels(batch, out)
    names = [n for n, _ in panels]
    assert names[:5] == ["input", "masked rgb", "masked depth", "predicted depth", "target depth"]
    assert ("predicted rgb" in names) == ("rgb_l2" in out.terms) == bool(kw.get("reconstruct_rgb"))
    assert all(img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 1 for _, img in panels)
    from renderssl.viz import colorize_depth

    torch.testing.assert_close(dict(panels)["target depth"], colorize_depth(depth[0]), atol=0.01, rtol=0)


# ---- Stage I and export ------------------------------------------------------------------------


def test_stage1_loads_mae_weights_from_a_checkpoint_a_run_folder_and_an_export(tmp_path):
    mae = perturbed_mae()
    want = mae.encoder.state_dict()
    ckpt = tmp_path / "mae.pt"
    torch.save({"model": mae.state_dict(), "step": 7}, ckpt)
    model = tiny_mask3d(init_from=str(ckpt))  # Stage I at construction
    assert_encoder_equals(model.encoder, want)
    fresh = tiny_mask3d()
    assert not torch.equal(fresh.encoder.blocks[0].attn.qkv.weight, want["blocks.0.attn.qkv.weight"])

    export = export_encoder(mae.encoder, "vit", mae.encoder_config(), tmp_path / "export")
    assert fresh.load_stage1(export) == []
    assert_encoder_equals(fresh.encoder, want)

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": mae.state_dict()}, run / "checkpoints" / "last.pt")
    other = tiny_mask3d()
    other.load_stage1(run)
    assert_encoder_equals(other.encoder, want)
    # a bare timm-named ViT state dict with extra (decoder) keys, e.g. MAE's released files
    bare = tmp_path / "bare.pth"
    torch.save({"model": {**want, "decoder_embed.weight": torch.zeros(2, 2)}}, bare)
    assert tiny_mask3d().load_stage1(bare) == ["decoder_embed.weight"]


def test_stage1_keeps_its_own_sincos_table_on_another_grid_and_refuses_other_vits(tmp_path):
    mae = perturbed_mae()  # 32x32
    ckpt = tmp_path / "mae.pt"
    torch.save({"model": mae.state_dict()}, ckpt)
    model = tiny_mask3d(enc={**ENC, "img_size": (32, 48)})
    model.load_stage1(ckpt)
    assert_encoder_equals(model.encoder, {k: v for k, v in mae.encoder.state_dict().items() if k != "pos_embed"})
    assert model.encoder.pos_embed.shape == (1, 1 + 4 * 6, 48)
    wider = tiny_mask3d(enc={**ENC, "embed_dim": 96})
    with pytest.raises(InputError, match="shape mismatches"):
        wider.load_stage1(ckpt)
    with pytest.raises(InputError, match="does not exist"):
        wider.load_stage1(tmp_path / "nothing.pt")


def test_exported_encoder_is_the_colour_vit_only(tmp_path):
    model = tiny_mask3d()
    out = export_encoder(model.encoder, "vit", model.encoder_config(), tmp_path / "enc")
    keys = set(load_file(str(out / "encoder.safetensors")))
    assert keys == set(VisionTransformer(ViTConfig(**ENC)).state_dict())
    assert not any("depth" in k or "decoder" in k or "mask_token" in k for k in keys)
    assert any(k.startswith("depth_encoder.") for k in model.state_dict())  # the method does hold one
    loaded = load_encoder(out)
    assert_encoder_equals(model.encoder, loaded.state_dict())


# ---- presets and data --------------------------------------------------------------------------


def test_presets_parse_and_base_is_paper_scale():
    tiny = yaml.safe_load((CONFIGS / "mask3d_tiny.yaml").read_text())
    base = yaml.safe_load((CONFIGS / "mask3d_base.yaml").read_text())
    for preset in (tiny, base):
        assert preset["method"] == "mask3d"
        from_dict(DataConfig, preset["data"], "data")
    t, b = from_dict(Mask3DConfig, tiny["mask3d"], "mask3d"), from_dict(Mask3DConfig, base["mask3d"], "mask3d")
    assert t.encoder.grid_size == (8, 8) and t.encoder.embed_dim == 192
    assert b.encoder.grid_size == (15, 20) and b.encoder.embed_dim == 768  # 300 patches of 16x16, ViT-B
    assert (b.rgb_keep, b.depth_keep, b.norm_depth_loss, b.reconstruct_rgb) == (0.2, 0.2, True, False)
    assert base["data"]["height"] == 240 and base["data"]["width"] == 320
    assert (base["train"]["batch_size"], base["train"]["accumulate"]) == (64, 2)  # effective 128 (Sec. 4.1)
    assert Mask3DConfig().encoder.img_size == (240, 320)  # the dataclass defaults are the paper's too


def test_pretraining_data_gives_resized_rgbd_frames():
    from renderssl.data.datasets import RGBDFrameDataset
    from renderssl.data.synthetic import SyntheticConfig, generate_scene
    from renderssl.experiment import load_experiment, pretraining_data

    cfg = load_experiment("mask3d_tiny", ["data.width=32", "data.height=24", "data.views=2", "data.train_scenes=2",
                                          "data.val_scenes=1", "data.test_scenes=1"])
    ds, collate = pretraining_data(cfg)
    batch = collate([ds[0], ds[3]])
    assert len(ds) == 4 and batch["rgb"].shape == (2, 3, 24, 32) and batch["depth"].shape == (2, 1, 24, 32)
    # resizing: colour bilinear, depth nearest (every output depth is an input depth, holes stay 0), K follows
    vs = generate_scene(0, SyntheticConfig(kind="room", num_views=1, width=32, height=32))
    vs.depth[0, 0, :8] = 0.0
    small = RGBDFrameDataset([vs], size=(16, 16))[0]
    assert small["rgb"].shape == (3, 16, 16) and small["depth"].shape == (1, 16, 16) and small["semantic"].shape == (16, 16)
    assert bool(torch.isin(small["depth"], vs.depth[0]).all()) and bool((small["depth"][0, :4] == 0).all())
    torch.testing.assert_close(small["K"], vs.cameras().resized(16, 16).K[0])


def test_previews_are_built_only_when_asked_and_show_the_masked_inputs(monkeypatch):
    torch.manual_seed(0)
    method = tiny_mask3d(reconstruct_rgb=True)
    rgb, depth = rgbd_batch()
    batch = {"rgb": rgb, "depth": depth}
    built = []
    real = method.make_renders
    monkeypatch.setattr(method, "make_renders", lambda *a: built.append(1) or real(*a))
    output = method(batch, StepContext(torch.Generator().manual_seed(0)))
    assert not built and not output.renders  # a training step builds no preview
    with torch.no_grad():
        panels = dict(method.preview_panels(batch, output))
    assert built == [1]
    assert list(panels) == ["input", "masked rgb", "masked depth", "predicted depth", "target depth", "predicted rgb"]
    assert torch.equal(panels["input"], rgb[0])
    keep = 1 - mask_to_pixels(output.extras["masks"].rgb_mask, 8, method.encoder.grid_for(rgb))[0]  # (1, H, W)
    assert torch.equal(panels["masked rgb"], rgb[0] * keep)
    assert all(p.shape == (3, 32, 32) and 0 <= p.min() and p.max() <= 1 for p in panels.values())
