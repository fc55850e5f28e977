"""NPS / GNT transformer pieces against independent references: a per-sample, per-channel loop twin of the
view transformer, softmax(QK^T/sqrt(d)) written out from the ray transformer's own weights, hand-computed
positional encodings and parameter counts, one-hot attention depths, symmetries and float64 gradcheck."""

import math

import pytest
import torch

from renderssl.errors import InputError
from renderssl.models.heads.ray_task_head import RayTaskHead, RayTaskHeadConfig
from renderssl.models.nerf.ray_transformer import RayTransformer
from renderssl.models.nerf.transformer import (
    GeneralizableNeRFTransformer, NeRFTransformerConfig, positional_encoding,
)
from renderssl.models.nerf.view_transformer import ViewTransformer

D = torch.float64


def view_inputs(N=2, S=3, V=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(N, S, dim, generator=g, dtype=D)
    tokens = torch.randn(N, S, V, dim, generator=g, dtype=D)
    ray_diff = torch.randn(N, S, V, 4, generator=g, dtype=D)
    mask = torch.rand(N, S, V, generator=g) > 0.4
    mask[0, 0] = False  # a sample no view sees
    mask[1, 2] = True  # one every view sees
    mask[0, 1] = torch.tensor([False, True, False, False])  # exactly one view
    return query, tokens, ray_diff, mask


def layer_norm(x, ln):
    mean = sum(x) / len(x)
    var = sum((xi - mean) ** 2 for xi in x) / len(x)
    return [(xi - mean) / math.sqrt(var + ln.eps) * w + b for xi, w, b in zip(x, ln.weight.tolist(), ln.bias.tolist())]


def linear(x, layer):
    W = layer.weight.tolist()
    b = layer.bias.tolist() if layer.bias is not None else [0.0] * len(W)
    return [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(W, b)]


def relu(x):
    return [max(0.0, xi) for xi in x]


def feed_forward(x, ff):
    return linear(relu(linear(x, ff.fc1)), ff.fc2)


def view_transformer_twin(block, query, tokens, ray_diff, mask):
    """The view transformer written per sample and per channel with Python lists."""
    a = block.attn
    N, S, V, dim = tokens.shape
    out = torch.zeros(N, S, dim, dtype=D)
    weights = torch.zeros(N, S, V, dim, dtype=D)
    for n in range(N):
        for s in range(S):
            x = query[n, s].tolist()
            q = linear(layer_norm(x, block.attn_norm), a.q_fc)
            seen = [v for v in range(V) if mask[n, s, v]]
            vals, logits = {}, {}
            for v in seen:
                tok = tokens[n, s, v].tolist()
                pos = linear(relu(linear(ray_diff[n, s, v].tolist(), a.pos_fc[0])), a.pos_fc[2])
                k = linear(tok, a.k_fc)
                vals[v] = [vi + pi for vi, pi in zip(linear(tok, a.v_fc), pos)]
                logits[v] = linear(relu(linear([ki - qi + pi for ki, qi, pi in zip(k, q, pos)], a.attn_fc[0])), a.attn_fc[2])
            if seen:
                agg = []
                for c in range(dim):
                    m = max(logits[v][c] for v in seen)
                    z = sum(math.exp(logits[v][c] - m) for v in seen)
                    for v in seen:
                        weights[n, s, v, c] = math.exp(logits[v][c] - m) / z
                    agg.append(sum(vals[v][c] * float(weights[n, s, v, c]) for v in seen))
                attn_out = linear(agg, a.out_fc)
            else:
                attn_out = [0.0] * dim  # our choice: no view, no attention output
            y = [xi + oi for xi, oi in zip(x, attn_out)]
            y = [yi + fi for yi, fi in zip(y, feed_forward(layer_norm(y, block.ff_norm), block.ff))]
            out[n, s] = torch.tensor(y, dtype=D)
    return out, weights


def test_view_transformer_matches_loop_twin_and_masks_exactly():
    torch.manual_seed(0)
    block = ViewTransformer(8, ff_hidden=12, dropout=0.0).to(D).eval()
    query, tokens, ray_diff, mask = view_inputs()
    out, weights = block(query, tokens, ray_diff, mask, return_weights=True)
    assert out.shape == (2, 3, 8) and weights.shape == (2, 3, 4, 8)
    ref_out, ref_w = view_transformer_twin(block, query, tokens, ray_diff, mask)
    torch.testing.assert_close(weights, ref_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    # weights sum to one over the unmasked views, per channel; masked views get exactly zero
    seen = mask.any(-1)
    torch.testing.assert_close(weights.sum(2)[seen], torch.ones(int(seen.sum()), 8, dtype=D))
    assert bool((weights[~mask] == 0).all())
    assert bool((weights[0, 1, 1] == 1).all())  # a single visible view takes all the weight
    # the sample no view sees: zero weights, finite output, the query passed through the attention branch
    assert bool((weights[0, 0] == 0).all()) and bool(torch.isfinite(out).all())
    x = query[0, 0]
    torch.testing.assert_close(out[0, 0], x + block.ff(block.ff_norm(x)))


def test_masked_views_cannot_change_the_view_transformer():
    torch.manual_seed(1)
    block = ViewTransformer(16, dropout=0.0).eval()
    query, tokens, ray_diff, mask = (t.float() if t.is_floating_point() else t for t in view_inputs(dim=16, seed=3))
    out = block(query, tokens, ray_diff, mask)
    tokens2, ray_diff2 = tokens.clone(), ray_diff.clone()
    tokens2[~mask] = 1e3 * torch.randn(int((~mask).sum()), 16)
    ray_diff2[~mask] = float("nan")
    out2 = block(query, tokens2, ray_diff2, mask)
    assert torch.equal(out, out2)
    assert bool(torch.isfinite(out2).all())


def test_view_transformer_gradcheck_and_errors():
    torch.manual_seed(2)
    block = ViewTransformer(8, ff_hidden=8, dropout=0.0).to(D)
    query, tokens, ray_diff, mask = view_inputs()
    query, tokens, ray_diff, mask = query[:1, :2], tokens[:1, :2, :3], ray_diff[:1, :2, :3], mask[:1, :2, :3].clone()
    mask[0, 0] = torch.tensor([True, False, True])
    query.requires_grad_(True)
    tokens.requires_grad_(True)
    ray_diff.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k, r: block(q, k, r, mask), (query, tokens, ray_diff))
    with pytest.raises(InputError, match="mask"):
        block(query, tokens, ray_diff, mask.float())
    with pytest.raises(InputError, match="ray_diff"):
        block(query, tokens, ray_diff[..., :3], mask)
    with pytest.raises(InputError, match="query"):
        block(query[:, :1], tokens, ray_diff, mask)


def test_ray_transformer_attention_is_softmax_qk_by_hand():
    torch.manual_seed(3)
    N, S, dim, heads = 2, 5, 12, 3
    block = RayTransformer(dim, heads=heads, ff_hidden=20, dropout=0.0).to(D).eval()
    x = torch.randn(N, S, dim, dtype=D)
    y, attn = block(x, return_attention=True)
    assert y.shape == (N, S, dim) and attn.shape == (N, heads, S, S)
    d = dim // heads
    ln = block.attn_norm
    xn = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps) * ln.weight + ln.bias
    Q, K, Vv = (xn @ m.weight.T for m in (block.attn.q_fc, block.attn.k_fc, block.attn.v_fc))  # (N, S, dim)
    for n in range(N):
        heads_out = []
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            scores = Q[n, :, sl] @ K[n, :, sl].T / math.sqrt(d)  # (S, S)
            e = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            A = e / e.sum(dim=1, keepdim=True)
            torch.testing.assert_close(attn[n, h], A, rtol=1e-12, atol=1e-14)
            heads_out.append(A @ Vv[n, :, sl])
        z = x[n] + torch.cat(heads_out, dim=1) @ block.attn.out_fc.weight.T + block.attn.out_fc.bias
        z2 = torch.stack([torch.tensor(feed_forward(layer_norm(r.tolist(), block.ff_norm), block.ff), dtype=D) for r in z])
        torch.testing.assert_close(y[n], z + z2, rtol=1e-10, atol=1e-12)


def test_positional_encoding_by_hand():
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=D)
    pe = positional_encoding(x, 2)[0].tolist()
    hand = [0.5, -1.0, 2.0]
    for f in (1.0, 2.0):
        hand += [math.sin(f * v) for v in (0.5, -1.0, 2.0)] + [math.cos(f * v) for v in (0.5, -1.0, 2.0)]
    assert pe == pytest.approx(hand, abs=1e-15)
    pe10 = positional_encoding(torch.randn(4, 7, 3, dtype=D), 10)
    assert pe10.shape == (4, 7, 63)
    assert NeRFTransformerConfig(preset="gnt").pe_dim == 63
    x = torch.tensor([0.3, 0.1, -0.2], dtype=D)
    assert positional_encoding(x, 10)[3 + 6 * 9: 3 + 6 * 9 + 3].tolist() == pytest.approx((512 * x).sin().tolist())


def trunk_inputs(cfg, N=3, S=6, V=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb_feat = torch.randn(N, S, V, cfg.in_channels, generator=g, dtype=D)
    ray_diff = torch.randn(N, S, V, 4, generator=g, dtype=D)
    mask = torch.rand(N, S, V, generator=g) > 0.3
    mask[0, 2] = False  # a sample no view sees
    points = torch.randn(N, S, 3, generator=g, dtype=D)
    view_dirs = torch.nn.functional.normalize(torch.randn(N, 3, generator=g, dtype=D), dim=-1)
    t = torch.sort(torch.rand(N, S, generator=g, dtype=D) * 3 + 1, dim=-1).values
    return rgb_feat, ray_diff, mask, points, view_dirs, t


SMALL = dict(preset=None, dim=16, depth=3, heads=2, ff_hidden=24, pe_frequencies=2, feature_channels=5, dropout=0.0)


def test_trunk_outputs_symmetries_and_unseen_samples():
    torch.manual_seed(4)
    cfg = NeRFTransformerConfig(**SMALL)
    model = GeneralizableNeRFTransformer(cfg).to(D).eval()
    inputs = trunk_inputs(cfg)
    out = model(*inputs)
    assert out.rgb.shape == (3, 3) and out.depth.shape == (3,)
    assert out.ray_weights.shape == (3, 6) and out.features.shape == (3, 6, 16)
    for value in (out.rgb, out.depth, out.features):
        assert bool(torch.isfinite(value).all())
    torch.testing.assert_close(out.ray_weights.sum(-1), torch.ones(3, dtype=D))
    torch.testing.assert_close(out.depth, (out.ray_weights * inputs[5]).sum(-1))
    t = inputs[5]
    assert bool((out.depth >= t.min(-1).values - 1e-12).all() and (out.depth <= t.max(-1).values + 1e-12).all())
    # permutation-invariant over the source views
    rgb_feat, ray_diff, mask, points, view_dirs, t = inputs
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = model(rgb_feat[:, :, perm], ray_diff[:, :, perm], mask[:, :, perm], points, view_dirs, t)
    torch.testing.assert_close(shuffled.rgb, out.rgb)
    torch.testing.assert_close(shuffled.depth, out.depth)
    # equivariant over rays
    rays = torch.tensor([2, 0, 1])
    permuted = model(*(x[rays] for x in inputs))
    torch.testing.assert_close(permuted.rgb, out.rgb[rays])
    torch.testing.assert_close(permuted.features, out.features[rays])
    # view_dirs are normalised inside (GNT)
    torch.testing.assert_close(model(rgb_feat, ray_diff, mask, points, 3 * view_dirs, t).rgb, out.rgb)


def test_initial_query_is_the_max_over_unmasked_views():
    cfg = NeRFTransformerConfig(**SMALL)
    model = GeneralizableNeRFTransformer(cfg).to(D)
    tokens = torch.randn(2, 3, 4, 16, dtype=D)
    mask = torch.rand(2, 3, 4) > 0.5
    mask[1, 1] = False
    q = model.initial_query(tokens, mask)
    for n in range(2):
        for s in range(3):
            seen = [v for v in range(4) if mask[n, s, v]]
            want = torch.stack([tokens[n, s, v] for v in seen]).max(0).values if seen else torch.zeros(16, dtype=D)
            assert torch.equal(q[n, s], want)


def test_one_hot_ray_attention_gives_that_samples_distance():
    torch.manual_seed(5)
    cfg = NeRFTransformerConfig(**SMALL)
    model = GeneralizableNeRFTransformer(cfg).to(D).eval()
    inputs = trunk_inputs(cfg)
    t = inputs[5]
    j = 4
    last = model.ray_transformers[-1].attn
    original = last.forward

    def one_hot(x):
        out, attn = original(x)
        hot = torch.zeros_like(attn)
        hot[..., j] = 1.0
        return out, hot

    last.forward = one_hot
    out = model(*inputs)
    torch.testing.assert_close(out.depth, t[:, j], rtol=0, atol=0)
    head = RayTaskHead(RayTaskHeadConfig(kind="depth", blocks=2), dim=16).to(D).eval()
    head.readout.forward = lambda x: torch.nn.functional.one_hot(torch.full(x.shape[:2], 1), x.shape[1]).to(D)[:, None].expand(-1, 4, -1, -1)
    torch.testing.assert_close(head(out.features, t), t[:, 1], rtol=0, atol=0)


def test_gradients_reach_every_parameter():
    torch.manual_seed(6)
    cfg = NeRFTransformerConfig(**SMALL)
    model = GeneralizableNeRFTransformer(cfg).to(D)
    seg = RayTaskHead(RayTaskHeadConfig(kind="classes", num_classes=5), dim=16).to(D)
    dep = RayTaskHead(RayTaskHeadConfig(kind="depth", blocks=2), dim=16).to(D)
    inputs = trunk_inputs(cfg)
    out = model(*inputs)
    loss = out.rgb.square().sum() + out.depth.sum() + seg(out.features).square().sum() + dep(out.features, inputs[5]).sum()
    loss.backward()
    assert float(model.rgbfeat_fc[0].weight.grad.abs().sum()) > 0
    for module in (model, seg, dep):
        for name, p in module.named_parameters():
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


def test_task_head_shapes_and_errors():
    features, t = torch.randn(7, 5, 32), torch.rand(7, 5)
    seg = RayTaskHead(RayTaskHeadConfig(kind="classes", num_classes=11), dim=32)
    logits, weights = seg(features, return_weights=True)
    assert logits.shape == (7, 11) and weights.shape == (7, 5)
    depth = RayTaskHead(RayTaskHeadConfig(kind="depth"), dim=32)(features, t)
    assert depth.shape == (7,)
    assert bool((depth >= t.min(-1).values - 1e-6).all() and (depth <= t.max(-1).values + 1e-6).all())
    with pytest.raises(InputError, match="num_classes"):
        RayTaskHeadConfig(kind="classes")
    with pytest.raises(InputError, match="kind"):
        RayTaskHeadConfig(kind="normals")
    with pytest.raises(InputError, match="t"):
        RayTaskHead(RayTaskHeadConfig(kind="depth"), dim=32)(features)
    with pytest.raises(InputError, match="features"):
        seg(features[..., :16])


def test_parameter_counts_by_hand():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    # SMALL with depth 2: dim 16, ff 24, heads 2, PE 2 freqs (3 + 3 * 2 * 2 = 15 dims per 3-vector), rgb_feat 3 + 5
    small = GeneralizableNeRFTransformer(NeRFTransformerConfig(**{**SMALL, "depth": 2}))
    rgbfeat = (8 * 16 + 16) + (16 * 16 + 16)  # 416
    ff = (16 * 24 + 24) + (24 * 16 + 16)  # 808
    view = 2 * 32 + 3 * 256 + (4 * 2 + 2 + 2 * 16 + 16) + (16 * 2 + 2 + 2 * 16 + 16) + (256 + 16) + ff  # 2052
    ray = 2 * 32 + 3 * 256 + (256 + 16) + ff  # 1912
    query_mlp = ((16 + 2 * 15) * 16 + 16) + (16 * 16 + 16)  # 1024, block 0 only
    head = 32 + (16 * 3 + 3)
    assert count(small) == rgbfeat + 2 * view + 2 * ray + query_mlp + head == 9451
    # GNT's gnt_full (netwidth 64, 8 blocks, ff 256, 32 CNN channels) and NPS's 1.9M model (ff 768)
    def gnt_count(ff_hidden):
        ff = 2 * 64 * ff_hidden + ff_hidden + 64
        view = 4 * 64 + 3 * 64 * 64 + (4 * 8 + 8 + 8 * 64 + 64) + (64 * 8 + 8 + 8 * 64 + 64) + (64 * 64 + 64) + ff
        ray = 4 * 64 + 3 * 64 * 64 + (64 * 64 + 64) + ff
        q_mlp = ((64 + 126) * 64 + 64) + (64 * 64 + 64)
        return (35 * 64 + 64 + 64 * 64 + 64) + 8 * (view + ray) + 4 * q_mlp + 128 + 195
    assert count(GeneralizableNeRFTransformer(NeRFTransformerConfig(preset="gnt"))) == gnt_count(256) == 882691
    assert count(GeneralizableNeRFTransformer(NeRFTransformerConfig(preset="nps"))) == gnt_count(768) == 1939459
    # the depth head's single block is its attention-weights readout: LN + q_fc + k_fc
    assert count(RayTaskHead(RayTaskHeadConfig(kind="depth"), dim=16)) == 32 + 2 * 256


def test_config_and_input_errors():
    with pytest.raises(InputError, match="preset"):
        NeRFTransformerConfig(preset="huge")
    with pytest.raises(InputError, match="divisible"):
        NeRFTransformerConfig(preset="gnt", heads=5)
    with pytest.raises(InputError, match="must be set"):
        NeRFTransformerConfig(preset=None, dim=16)
    cfg = NeRFTransformerConfig(**SMALL)
    model = GeneralizableNeRFTransformer(cfg).to(D)
    rgb_feat, ray_diff, mask, points, view_dirs, t = trunk_inputs(cfg)
    with pytest.raises(InputError, match="rgb_feat"):
        model(rgb_feat[..., :4], ray_diff, mask, points, view_dirs, t)
    with pytest.raises(InputError, match="points"):
        model(rgb_feat, ray_diff, mask, points[:, :2], view_dirs, t)
    with pytest.raises(InputError, match="t must"):
        model(rgb_feat, ray_diff, mask, points, view_dirs, t[:, :2])
    with pytest.raises(InputError, match="mask"):
        model(rgb_feat, ray_diff, mask[:, :, :2], points, view_dirs, t)
