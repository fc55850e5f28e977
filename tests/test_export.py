"""Encoder export: exact round trips, file layout, name hints, checkpoints, and clean errors on bad files."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import renderssl
from renderssl.errors import InputError
from renderssl.export import (
    encoder_state_from_checkpoint, export_encoder, load_encoder, load_state_dict_file, model_name_hint,
    read_encoder_info,
)
from renderssl.models.encoders import ResNet, ResNetConfig, ViTConfig, VisionTransformer

SMALL_VIT = dict(preset=None, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)




def small_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(ViTConfig(**SMALL_VIT))
    with torch.no_grad():  # every tensor distinct from a fresh init, so a load that skips one shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def trained_resnet18(seed: int = 0) -> ResNet:
    """ResNet-18 whose BN running statistics have moved off their init (they are part of the export)."""
    torch.manual_seed(seed)
    model = ResNet(ResNetConfig(depth=18)).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 32, 32) * 2 + 1)
    return model.eval()


class ToyMethod(nn.Module):
    """A pretraining method: an encoder plus pretext-only parts that must not be exported."""

    def __init__(self):
        super().__init__()
        self.encoder = small_vit()
        self.decoder = nn.Linear(64, 48)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 64))


class NotAWeight:  # pickled by reference: weights_only loading must refuse it
    pass


# ---- round trips ---------------------------------------------------------------------------------


def test_vit_round_trip_is_exact(tmp_path):
    model = small_vit()
    out = export_encoder(model, "vit", SMALL_VIT, tmp_path / "exp", pretraining={"method": "toy", "steps": 7, "data": tmp_path})
    assert out == tmp_path / "exp"
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "encoder.safetensors"]
    loaded = load_encoder(out)
    assert isinstance(loaded, VisionTransformer) and not loaded.training
    assert not loaded.pos_embed.requires_grad  # frozen sin-cos table stays frozen
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), model.forward_features(x))
        y = torch.randn(1, 3, 48, 24)  # other grid: regenerated pos embed on both sides
        assert torch.equal(loaded.patch_features(y), model.patch_features(y))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    for other in (out / "encoder.json", out / "encoder.safetensors"):  # the json or weights path work too
        assert torch.equal(load_encoder(other).cls_token, model.cls_token)
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["format"] == "renderssl-encoder" and meta["version"] == 1 and meta["architecture"] == "vit"
    assert meta["config"] == {**SMALL_VIT, "img_size": [32, 32], "in_chans": 3, "mlp_ratio": 4.0, "qkv_bias": True, "norm_eps": 1e-6}
    assert meta["timm_model"] is None  # no timm model has this width / size
    assert meta["pretraining"] == {"method": "toy", "steps": 7, "data": str(tmp_path)}


def test_resnet_round_trip_is_exact_including_bn_statistics(tmp_path):
    model = trained_resnet18()
    assert model.bn1.num_batches_tracked.item() == 2 and not torch.allclose(model.bn1.running_mean, torch.zeros(64))
    out = export_encoder(model, "resnet", ResNetConfig(depth=18), tmp_path)
    loaded = load_encoder(out)
    assert isinstance(loaded, ResNet) and not loaded.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        for a, b in zip(loaded.forward_features(x), model.forward_features(x)):
            assert torch.equal(a, b)
    assert torch.equal(loaded.layer3[0].downsample[1].running_var, model.layer3[0].downsample[1].running_var)
    assert loaded.bn1.num_batches_tracked.item() == 2
    meta = read_encoder_info(out)
    assert meta["torchvision_model"] == "resnet18"
    assert meta["config"] == {"depth": 18, "in_chans": 3, "num_classes": 0, "zero_init_residual": False}


def test_safetensors_keys_are_the_encoder_state_dict(tmp_path):
    method = ToyMethod()
    export_encoder(method.encoder, "vit", SMALL_VIT, tmp_path)
    stored = load_file(str(tmp_path / "encoder.safetensors"))
    assert set(stored) == set(method.encoder.state_dict())
    assert not any(k.startswith(("encoder.", "decoder.", "mask_token")) for k in stored)
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "norm.bias"} <= set(stored)
    for k, v in method.encoder.state_dict().items():
        assert torch.equal(stored[k], v), k
    r = trained_resnet18()
    export_encoder(r, "resnet", {"depth": 18}, tmp_path / "r")
    stored = load_file(str(tmp_path / "r" / "encoder.safetensors"))
    assert set(stored) == set(r.state_dict()) and "layer1.0.bn1.num_batches_tracked" in stored
    assert not any(k.startswith("fc.") for k in stored)


def test_name_hints():
    assert model_name_hint("vit", {"preset": "tiny"}) == ("timm_model", "vit_tiny_patch16_224")
    assert model_name_hint("vit", {"preset": "base", "img_size": 384}) == ("timm_model", "vit_base_patch16_384")
    assert model_name_hint("vit", {"preset": "small", "img_size": 96}) == ("timm_model", None)
    assert model_name_hint("vit", {"preset": "base", "in_chans": 4}) == ("timm_model", None)
    assert model_name_hint("vit", {"preset": None, "embed_dim": 192, "depth": 12, "num_heads": 3}) == ("timm_model", "vit_tiny_patch16_224")
    assert model_name_hint("resnet", {"depth": 50}) == ("torchvision_model", "resnet50")
    assert model_name_hint("resnet", {"depth": 50, "in_chans": 4}) == ("torchvision_model", None)


def test_export_rejects_a_config_that_does_not_describe_the_encoder(tmp_path):
    with pytest.raises(InputError, match=r"missing keys \['blocks\.2\."):
        export_encoder(small_vit(), "vit", {**SMALL_VIT, "depth": 3}, tmp_path / "a")
    with pytest.raises(InputError, match="shape mismatches"):
        export_encoder(trained_resnet18(), "resnet", {"depth": 50}, tmp_path / "b")
    with pytest.raises(InputError, match="unknown field"):
        export_encoder(small_vit(), "vit", {**SMALL_VIT, "dropout": 0.1}, tmp_path / "c")
    with pytest.raises(InputError, match="architecture"):
        export_encoder(small_vit(), "swin", SMALL_VIT, tmp_path / "d")
    assert not any(tmp_path.iterdir())  # nothing written


# ---- bad files -----------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path) -> Path:
    return export_encoder(small_vit(), "vit", SMALL_VIT, tmp_path / "exp")


def test_missing_files_name_the_file(tmp_path, exported):
    with pytest.raises(InputError, match="nowhere.*encoder.json"):
        load_encoder(tmp_path / "nowhere")
    (exported / "encoder.safetensors").unlink()
    with pytest.raises(InputError, match=r"encoder\.safetensors: no such weight file"):
        load_encoder(exported)


def test_corrupt_or_foreign_files_name_the_file(exported):
    meta_path, weights = exported / "encoder.json", exported / "encoder.safetensors"
    good = meta_path.read_text()
    weights.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(InputError, match=r"encoder\.safetensors: could not read weights"):
        load_encoder(exported)
    meta_path.write_text("{not json")
    with pytest.raises(InputError, match=r"encoder\.json: not valid JSON"):
        load_encoder(exported)
    meta_path.write_text(json.dumps({**json.loads(good), "format": "something-else"}))
    with pytest.raises(InputError, match=r"encoder\.json: not a renderssl encoder"):
        load_encoder(exported)
    meta_path.write_text(json.dumps({**json.loads(good), "version": 2}))
    with pytest.raises(InputError, match=r"encoder\.json: unsupported version 2"):
        load_encoder(exported)
    meta_path.write_text(json.dumps({**json.loads(good), "config": {**SMALL_VIT, "depht": 2}}))
    with pytest.raises(InputError, match=r"encoder\.json: .*unknown field.*depht"):
        load_encoder(exported)


def test_mismatched_weights_list_the_first_keys(exported):
    weights = exported / "encoder.safetensors"
    state = load_file(str(weights))
    state["norm.weight"] = torch.ones(65)
    del state["blocks.1.mlp.fc2.bias"]
    state["head.weight"] = torch.zeros(10, 64)
    save_file(state, str(weights))
    with pytest.raises(InputError) as err:
        load_encoder(exported)
    msg = str(err.value)
    assert str(weights) in msg
    assert "missing keys ['blocks.1.mlp.fc2.bias']" in msg and "unexpected keys ['head.weight']" in msg
    assert "norm.weight: (65,) vs expected (64,)" in msg
    meta = json.loads((exported / "encoder.json").read_text())  # a config of another width: many keys, listed briefly
    meta["config"]["embed_dim"] = 32
    (exported / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"shape mismatches .*\.\.\. \(\d+ in all\)"):
        load_encoder(exported)


# ---- checkpoints ---------------------------------------------------------------------------------


def test_encoder_from_pretrain_checkpoint(tmp_path):
    method = ToyMethod()
    ckpt = tmp_path / "last.pt"
    torch.save({"model": method.state_dict(), "step": 5, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}}, ckpt)
    full = load_state_dict_file(ckpt)
    assert set(full) == set(method.state_dict())
    state = encoder_state_from_checkpoint(full)
    assert set(state) == set(method.encoder.state_dict())
    fresh = VisionTransformer(ViTConfig(**SMALL_VIT)).eval()
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), method.encoder(x))
    assert set(encoder_state_from_checkpoint(ckpt)) == set(state)  # a path works too
    raw = torch.load(ckpt, weights_only=True)  # the raw checkpoint dict as well
    assert set(encoder_state_from_checkpoint(raw)) == set(state)
    out = export_encoder(fresh, "vit", SMALL_VIT, tmp_path / "exp")
    with torch.no_grad():
        assert torch.equal(load_encoder(out)(x), method.encoder(x))
    with pytest.raises(InputError, match=r"no keys start with 'backbone\.'.*decoder\..*encoder\."):
        encoder_state_from_checkpoint(full, prefix="backbone.")


def test_real_mae_checkpoint_to_export(tmp_path):
    """The trainer's checkpoint layout ({'model': method.state_dict(), ...}) and Method.encoder_config()."""
    from renderssl.methods.mae import MAE, MAEConfig

    torch.manual_seed(0)
    method = MAE(MAEConfig(encoder=ViTConfig(**SMALL_VIT), decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2))
    torch.save({"model": method.state_dict(), "optimizer": {}, "counters": {"step": 1}}, tmp_path / "step.pt")
    encoder = VisionTransformer(ViTConfig(**method.encoder_config()))
    encoder.load_state_dict(encoder_state_from_checkpoint(tmp_path / "step.pt"), strict=True)
    out = export_encoder(encoder, "vit", method.encoder_config(), tmp_path / "exp", pretraining={"method": "mae"})
    stored = load_file(str(out / "encoder.safetensors"))
    assert set(stored) == set(method.encoder.state_dict()) and not any("decoder" in k or "mask_token" in k for k in stored)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_encoder(out)(x), method.encoder.eval()(x))


def test_state_dict_files_of_every_kind(tmp_path):
    sd = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "ddp.pth")
    torch.save({"state_dict": {"model": sd}}, tmp_path / "nested.ckpt")
    save_file(sd, str(tmp_path / "plain.safetensors"))
    for name in ("ddp.pth", "nested.ckpt", "plain.safetensors"):
        got = load_state_dict_file(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], v) for k, v in sd.items()), name
    torch.save({"model": sd, "hook": NotAWeight()}, tmp_path / "code.pt")
    with pytest.raises(InputError, match=r"code\.pt: could not read weights"):
        load_state_dict_file(tmp_path / "code.pt")
    torch.save({"step": 3, "lr": 0.1}, tmp_path / "nostate.pt")
    with pytest.raises(InputError, match=r"nostate\.pt: expected a state dict .*\['step', 'lr'\]"):
        load_state_dict_file(tmp_path / "nostate.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InputError, match=r"trunc\.pt: could not read weights"):
        load_state_dict_file(tmp_path / "trunc.pt")
    with pytest.raises(InputError, match=r"absent\.pt: no such weight file"):
        load_state_dict_file(tmp_path / "absent.pt")


def test_torch_load_is_always_weights_only():
    """Every ``torch.load(...)`` in the package passes ``weights_only=True`` literally (no code runs)."""
    root = Path(renderssl.__file__).parent
    calls, bad = 0, []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == "load" \
                    and isinstance(func.value, ast.Name) and func.value.id == "torch":
                calls += path.name == "weights.py"
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
                if not ok:
                    bad.append(f"{path.relative_to(root)}:{node.lineno}")
    assert bad == []
    assert calls >= 1  # models/weights.py does read torch files, and only this way


# ---- 3D encoders ---------------------------------------------------------------------------------

from renderssl.models.encoders.pointnet2 import PointNet2, PointNet2Config  # noqa: E402
from renderssl.models.encoders.sparse_unet import SparseUNet, SparseUNetConfig  # noqa: E402

TINY_3D = {
    "sparse_unet": (SparseUNet, SparseUNetConfig(preset=None, base_channels=8, channels=(8, 16, 16, 8),
                                                 layers=(1, 1, 1, 1), in_channels=6, grid_size=0.1)),
    "pointnet2": (PointNet2, PointNet2Config(preset=None, in_channels=6, npoints=(64, 16), radii=(0.3, 0.6),
                                             nsamples=(8, 8), sa_mlps=((16,), (32,)), fp_mlps=((16,), (16,)))),
}


def fixed_clouds(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two clouds (300 + 200 points) in a 2 m box with 6 feature channels, flat batch."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(500, 3, generator=g) * 2.0
    features = torch.rand(500, 6, generator=g)
    return points, features, torch.tensor([300, 500])


def trained_3d(architecture: str):
    """A tiny 3D encoder with perturbed weights and BN statistics moved off their init."""
    cls, cfg = TINY_3D[architecture]
    torch.manual_seed(0)
    model = cls(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.train()
        for seed in (1, 2):
            model(*fixed_clouds(seed))
    return model.eval()


@pytest.mark.parametrize("architecture", ["sparse_unet", "pointnet2"])
def test_3d_encoder_round_trip_is_exact(tmp_path, architecture):
    model = trained_3d(architecture)
    bn = [k for k in model.state_dict() if k.endswith("running_var")]
    assert bn and not torch.equal(model.state_dict()[bn[0]], torch.ones_like(model.state_dict()[bn[0]]))
    cfg = TINY_3D[architecture][1]
    out = export_encoder(model, architecture, cfg, tmp_path / architecture, pretraining={"method": "ponder"})
    loaded = load_encoder(out)
    assert type(loaded) is type(model) and not loaded.training
    assert set(loaded.state_dict()) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert set(load_file(str(out / "encoder.safetensors"))) == set(model.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded(*fixed_clouds(7)), model(*fixed_clouds(7)))
    meta = read_encoder_info(out)
    assert meta["architecture"] == architecture and meta["pretraining"] == {"method": "ponder"}
    rebuilt = type(cfg)(**meta["config"])  # the stored config describes the same encoder
    assert (rebuilt.in_channels, model.out_channels) == (cfg.in_channels, loaded.out_channels)
    hint_key = {"sparse_unet": "pointcept_model", "pointnet2": "reference_model"}[architecture]
    assert hint_key in meta and meta[hint_key] is None  # tiny widths: no public model has these shapes


def test_3d_name_hints():
    assert model_name_hint("sparse_unet", SparseUNetConfig(preset="base")) == ("pointcept_model", "SpUNet-v1m1")
    assert model_name_hint("sparse_unet", {"preset": "base", "in_channels": 3}) == ("pointcept_model", "SpUNet-v1m1")
    # the base widths spelled out without the preset name are the same model
    base = dict(preset=None, base_channels=32, channels=(32, 64, 128, 256, 256, 128, 96, 96),
                layers=(2, 3, 4, 6, 2, 2, 2, 2))
    assert model_name_hint("sparse_unet", base) == ("pointcept_model", "SpUNet-v1m1")
    assert model_name_hint("sparse_unet", {"preset": "small"}) == ("pointcept_model", None)
    assert model_name_hint("sparse_unet", {**base, "layers": (2, 3, 4, 6, 2, 2, 2, 1)}) == ("pointcept_model", None)
    yanx27 = "yanx27/Pointnet_Pointnet2_pytorch pointnet2_sem_seg"
    assert model_name_hint("pointnet2", PointNet2Config(preset="ssg")) == ("reference_model", yanx27)
    assert model_name_hint("pointnet2", {"preset": "small"}) == ("reference_model", None)
    assert model_name_hint("pointnet2", {"preset": "scene"}) == ("reference_model", None)
    assert model_name_hint("pointnet2", {"preset": "ssg", "fp1_skip": True}) == ("reference_model", None)


def test_base_sparse_unet_hint_matches_its_shapes():
    """The hint promises Pointcept's layout: a base-preset model built on the meta device (no memory)
    has conv_input k=5, 96-d output, and spconv >= 2.2's KRSC weight layout (out, k, k, k, in)."""
    with torch.device("meta"):
        model = SparseUNet(SparseUNetConfig(preset="base", in_channels=6))
    state = model.state_dict()
    assert tuple(state["conv_input.0.weight"].shape) == (32, 5, 5, 5, 6)
    assert tuple(state["down.0.0.weight"].shape) == (32, 2, 2, 2, 32)
    assert tuple(state["enc.3.block5.conv2.weight"].shape) == (256, 3, 3, 3, 256)
    assert model.out_channels == 96 and "final.weight" not in state


def test_pointnet2_hint_needs_the_reference_input_channels():
    """yanx27's pointnet2_sem_seg hard-codes sa1's 9 + 3 inputs: other in_channels get no hint."""
    with torch.device("meta"):
        ours = PointNet2(PointNet2Config(preset="ssg", in_channels=6)).state_dict()
    assert tuple(ours["sa1.mlp_convs.0.weight"].shape) == (32, 9, 1, 1)  # the reference has (32, 12, 1, 1)
    assert model_name_hint("pointnet2", {"preset": "ssg", "in_channels": 6}) == ("reference_model", None)
