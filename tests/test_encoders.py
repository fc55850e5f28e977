"""Encoders: timm / torchvision state-dict layouts written out explicitly, known parameter counts,
feature-map shapes and strides, sin-cos position embeddings at other sizes, and masked-token forward.

Expected layouts are written from the published architectures (no timm / torchvision here):
timm ``VisionTransformer(num_classes=0)`` and torchvision ``resnet{18,50}``; order is registration order.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from renderssl.errors import InputError
from renderssl.models.encoders import ResNet, ResNetConfig, ViTConfig, VisionTransformer
from renderssl.models.encoders.pos_embed import sincos_2d




def shapes(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def on_meta(cls, config):
    """Build on the meta device: names and shapes without memory or init cost."""
    with torch.device("meta"):
        return cls(config)


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- ViT: timm layout ---------------------------------------------------------------------------


def timm_vit_layout(D: int, depth: int, patch: int = 16, img: int = 224, in_chans: int = 3) -> list:
    """timm VisionTransformer(num_classes=0, global_pool='token'): no head, no fc_norm, qkv bias, mlp 4x."""
    N = (img // patch) ** 2
    out = [
        ("cls_token", (1, 1, D)),
        ("pos_embed", (1, 1 + N, D)),
        ("patch_embed.proj.weight", (D, in_chans, patch, patch)),
        ("patch_embed.proj.bias", (D,)),
    ]
    for i in range(depth):
        b = f"blocks.{i}."
        out += [
            (b + "norm1.weight", (D,)), (b + "norm1.bias", (D,)),
            (b + "attn.qkv.weight", (3 * D, D)), (b + "attn.qkv.bias", (3 * D,)),
            (b + "attn.proj.weight", (D, D)), (b + "attn.proj.bias", (D,)),
            (b + "norm2.weight", (D,)), (b + "norm2.bias", (D,)),
            (b + "mlp.fc1.weight", (4 * D, D)), (b + "mlp.fc1.bias", (4 * D,)),
            (b + "mlp.fc2.weight", (D, 4 * D)), (b + "mlp.fc2.bias", (D,)),
        ]
    return out + [("norm.weight", (D,)), ("norm.bias", (D,))]


@pytest.mark.parametrize(
    "preset, D, params",  # timm's counts with the 1000-class head are 5,717,416 / 22,050,664 / 86,567,656
    [("tiny", 192, 5_524_416), ("small", 384, 21_665_664), ("base", 768, 85_798_656)],
)
def test_vit_state_dict_equals_timm_layout(preset, D, params):
    model = on_meta(VisionTransformer, ViTConfig(preset=preset))
    assert shapes(model) == timm_vit_layout(D, 12)
    assert len(model.state_dict()) == 4 + 12 * 12 + 2
    assert num_params(model) == params


def test_vit_tiny_literal_shapes_and_frozen_sincos_pos_embed():
    model = VisionTransformer(ViTConfig(preset="tiny"))
    sd = model.state_dict()
    assert sd["cls_token"].shape == (1, 1, 192) and sd["pos_embed"].shape == (1, 197, 192)
    assert sd["patch_embed.proj.weight"].shape == (192, 3, 16, 16)
    assert sd["blocks.0.attn.qkv.weight"].shape == (576, 192) and sd["blocks.11.mlp.fc1.weight"].shape == (768, 192)
    assert "blocks.12.norm1.weight" not in sd and sd["norm.weight"].shape == (192,)
    assert not any(k.startswith(("head", "fc_norm")) for k in sd)
    assert not model.pos_embed.requires_grad
    assert torch.equal(model.pos_embed[0], sincos_2d(192, 14, 14))
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(192))  # class-token slot


def test_vit_other_image_size_regenerates_pos_embed():
    model = VisionTransformer(ViTConfig(preset="tiny")).eval()  # configured for 224 x 224
    stored = model.pos_embed.detach().clone()
    x = torch.randn(2, 3, 96, 160)  # 6 x 10 patches
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model(x)
        fmap = model.patch_features(x)
        embedded = model.embed_patches(x)
        raw = model.patch_embed(x)
    assert tokens.shape == (2, 1 + 60, 192) and pooled.shape == (2, 192) and fmap.shape == (2, 192, 6, 10)
    torch.testing.assert_close(embedded - raw, sincos_2d(192, 6, 10)[1:].expand(2, -1, -1), rtol=0, atol=1e-6)
    assert torch.equal(model.pos_embed, stored)  # the stored 14 x 14 table is untouched
    assert torch.equal(pooled, tokens[:, 0])
    # patch_features is the row-major token grid: pixel (r, c) <- token 1 + r * gw + c
    for r, c in [(0, 0), (0, 9), (5, 0), (3, 7)]:
        assert torch.equal(fmap[:, :, r, c], tokens[:, 1 + r * 10 + c])
    with pytest.raises(InputError, match="divisible by patch 16"):
        model(torch.randn(1, 3, 100, 160))
    with pytest.raises(InputError, match="3 channels"):
        model(torch.randn(1, 4, 96, 160))


def reference_vit_tokens(model: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """timm's ViT math written from the parameters: (B, n, D) embedded tokens -> (B, 1 + n, D)."""
    D, H = model.embed_dim, model.config.num_heads
    eps = model.config.norm_eps
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
    x = torch.cat([cls, tokens], 1)
    B, n = x.shape[:2]
    for blk in model.blocks:
        h = F.layer_norm(x, (D,), blk.norm1.weight, blk.norm1.bias, eps)
        qkv = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).reshape(B, n, 3, H, D // H)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, n, d)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(B, n, D)
        x = x + o @ blk.attn.proj.weight.T + blk.attn.proj.bias
        h = F.layer_norm(x, (D,), blk.norm2.weight, blk.norm2.bias, eps)
        h = F.gelu(h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)  # exact (erf) GELU, as timm
        x = x + h @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    return F.layer_norm(x, (D,), model.norm.weight, model.norm.bias, eps)


def test_vit_masked_subset_equals_blocks_on_gathered_tokens():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(preset=None, img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4)).eval()
    with torch.no_grad():
        for p in model.parameters():  # no zero biases / unit norms that could hide a wrong formula
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(3, 3, 32, 32)  # 4 x 4 = 16 patches
        tokens = model.embed_patches(x)  # (3, 16, 64)
        assert tokens.shape == (3, 16, 64)
        assert torch.equal(model.forward_tokens(tokens), model.forward_features(x))
        keep = torch.stack([torch.randperm(16)[:5] for _ in range(3)])  # (3, 5): a different subset per sample
        gathered = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, 64))  # (3, 5, 64)
        out = model.forward_tokens(gathered)
        assert out.shape == (3, 6, 64)
        torch.testing.assert_close(out, reference_vit_tokens(model, gathered), rtol=1e-4, atol=1e-4)
        # the subset result depends on its own tokens only: shuffling them permutes the outputs
        perm = torch.randperm(5)
        shuffled = model.forward_tokens(gathered[:, perm])
        torch.testing.assert_close(shuffled[:, 1:], out[:, 1:][:, perm], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shuffled[:, 0], out[:, 0], rtol=1e-5, atol=1e-5)
        # and differs from the full-set result (attention sees fewer tokens)
        assert not torch.allclose(out[:, 0], model.forward_features(x)[:, 0], atol=1e-3)


# ---- ResNet: torchvision layout ----------------------------------------------------------------


def bn_layout(name: str, c: int) -> list:
    return [(f"{name}.weight", (c,)), (f"{name}.bias", (c,)), (f"{name}.running_mean", (c,)),
            (f"{name}.running_var", (c,)), (f"{name}.num_batches_tracked", ())]


def torchvision_resnet_layout(counts, bottleneck: bool, num_classes: int = 1000, in_chans: int = 3) -> list:
    """torchvision ResNet v1.5: stem conv 7x7 + BN, 4 stages of widths 64..512 (x4 for bottlenecks),
    a downsample (conv 1x1 + BN) only in a stage's first block when stride or width changes, fc."""
    out = [("conv1.weight", (64, in_chans, 7, 7)), *bn_layout("bn1", 64)]
    inplanes = 64
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
        for j in range(n):
            p = f"layer{s + 1}.{j}."
            stride = 2 if (s > 0 and j == 0) else 1
            if bottleneck:
                width = 4 * planes
                out += [(p + "conv1.weight", (planes, inplanes, 1, 1)), *bn_layout(p + "bn1", planes),
                        (p + "conv2.weight", (planes, planes, 3, 3)), *bn_layout(p + "bn2", planes),
                        (p + "conv3.weight", (width, planes, 1, 1)), *bn_layout(p + "bn3", width)]
            else:
                width = planes
                out += [(p + "conv1.weight", (planes, inplanes, 3, 3)), *bn_layout(p + "bn1", planes),
                        (p + "conv2.weight", (planes, planes, 3, 3)), *bn_layout(p + "bn2", planes)]
            if stride != 1 or inplanes != width:
                out += [(p + "downsample.0.weight", (width, inplanes, 1, 1)), *bn_layout(p + "downsample.1", width)]
            inplanes = width
    if num_classes:
        out += [("fc.weight", (num_classes, inplanes)), ("fc.bias", (num_classes,))]
    return out


@pytest.mark.parametrize(
    "depth, counts, bottleneck, params",
    [(18, (2, 2, 2, 2), False, 11_689_512), (34, (3, 4, 6, 3), False, 21_797_672),
     (50, (3, 4, 6, 3), True, 25_557_032), (101, (3, 4, 23, 3), True, 44_549_160)],
)
def test_resnet_state_dict_equals_torchvision_layout(depth, counts, bottleneck, params):
    model = on_meta(ResNet, ResNetConfig(depth=depth, num_classes=1000))
    assert shapes(model) == torchvision_resnet_layout(counts, bottleneck)
    assert num_params(model) == params
    headless = on_meta(ResNet, ResNetConfig(depth=depth))  # num_classes=0: no fc at all
    assert shapes(headless) == torchvision_resnet_layout(counts, bottleneck, num_classes=0)


def test_resnet_layout_details():
    r18 = on_meta(ResNet, ResNetConfig(depth=18, num_classes=1000)).state_dict()
    r50 = on_meta(ResNet, ResNetConfig(depth=50, num_classes=1000)).state_dict()
    down18 = sorted({k.split(".downsample")[0] for k in r18 if ".downsample." in k})
    down50 = sorted({k.split(".downsample")[0] for k in r50 if ".downsample." in k})
    assert down18 == ["layer2.0", "layer3.0", "layer4.0"]  # layer1 keeps 64 channels at stride 1
    assert down50 == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]  # 64 -> 256 needs a projection
    assert r50["fc.weight"].shape == (1000, 2048) and r18["fc.weight"].shape == (1000, 512)
    assert r50["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert r18["layer1.0.bn1.num_batches_tracked"].dtype == torch.long
    assert not any(".conv3." in k for k in r18) and "layer4.2.conv1.weight" not in r18
    m = on_meta(ResNet, ResNetConfig(depth=50))
    assert m.layer2[0].conv1.stride == (1, 1) and m.layer2[0].conv2.stride == (2, 2)  # v1.5: stride on the 3x3
    assert m.layer2[0].downsample[0].stride == (2, 2) and m.layer2[1].conv2.stride == (1, 1)
    four = on_meta(ResNet, ResNetConfig(depth=18, in_chans=4))
    assert four.conv1.weight.shape == (64, 4, 7, 7)


@pytest.mark.parametrize("depth, channels", [(18, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))])
def test_resnet_feature_maps_and_pooled_output(depth, channels):
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(depth=depth)).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model(x)
    assert model.feature_strides == (4, 8, 16, 32) and model.feature_channels == channels
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // s, 32 // s) for c, s in zip(channels, (4, 8, 16, 32))]
    assert pooled.shape == (2, channels[-1]) and model.num_features == model.embed_dim == channels[-1]
    torch.testing.assert_close(pooled, feats[-1].mean((2, 3)))
    assert all(bool((f >= 0).all()) for f in feats)  # every stage ends in a ReLU
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(2, 1, 64, 32))


def test_resnet_logits_with_fc():
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(depth=18, num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        pooled = model.forward_features(x)[-1].mean((2, 3))
    assert logits.shape == (2, 10)
    torch.testing.assert_close(logits, model.fc(pooled))


def test_resnet_init_matches_torchvision():
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(depth=50))
    w = model.layer4[0].conv2.weight  # (512, 512, 3, 3): fan_out = 512 * 9
    assert abs(w.std().item() / math.sqrt(2.0 / (512 * 9)) - 1) < 0.02
    w = model.conv1.weight  # (64, 3, 7, 7): fan_out = 64 * 49
    assert abs(w.std().item() / math.sqrt(2.0 / (64 * 49)) - 1) < 0.05
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bns)
    zero = ResNet(ResNetConfig(depth=50, zero_init_residual=True))
    for block in [b for layer in (zero.layer1, zero.layer4) for b in layer]:
        assert bool((block.bn3.weight == 0).all()) and bool((block.bn2.weight == 1).all())
    zero18 = ResNet(ResNetConfig(depth=18, zero_init_residual=True))
    assert bool((zero18.layer3[1].bn2.weight == 0).all()) and bool((zero18.layer3[0].downsample[1].weight == 1).all())


def test_resnet_config_rejects_bad_values():
    with pytest.raises(InputError, match="resnet.depth"):
        ResNetConfig(depth=20)
    with pytest.raises(InputError, match="num_classes"):
        ResNetConfig(depth=18, num_classes=-1)
