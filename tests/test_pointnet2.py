"""PointNet++ encoder: each grouping / interpolation op against an independent brute-force loop (its
sampler, ``data.points.farthest_point_sampling``, is tested in test_points.py), the encoder's batch
independence, gradients, a gradcheck, an overfit run, and the reference's names."""

import math

import pytest
import torch
from torch import nn

from renderssl.data.points import farthest_point_sampling
from renderssl.errors import InputError
from renderssl.models.encoders.pointnet2 import (
    PRESETS,
    PointNet2,
    PointNet2Config,
    PointNetFeaturePropagation,
    PointNetSetAbstraction,
    ball_query,
    build_pointnet2,
    three_nn_interpolate,
)

TINY = dict(preset=None, in_channels=4, npoints=(32, 8), radii=(0.35, 0.7), nsamples=(8, 8), sa_mlps=((8, 16), (16, 32)),
            fp_mlps=((32,), (16, 16)))


def clouds(sizes, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(sum(sizes), 3, generator=g, dtype=dtype) * scale
    return points, torch.tensor(sizes).cumsum(0)


def bounds(offset):
    ends = offset.tolist()
    return list(zip([0] + ends[:-1], ends))


# ------------------------------------------------------------------------------------------- ball query


def brute_ball_query(radius, nsample, points, offset, centres, centre_offset):
    rows = []
    for (s, e), (cs, ce) in zip(bounds(offset), bounds(centre_offset)):
        for c in centres[cs:ce].tolist():
            hits = []
            for j in range(s, e):
                p = points[j].tolist()
                if (p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 + (p[2] - c[2]) ** 2 < radius ** 2:
                    hits.append(j)
            hits = hits[:nsample]
            rows.append(hits + [hits[0]] * (nsample - len(hits)) if hits else [s] * nsample)
    return rows


@pytest.mark.parametrize("chunk_entries", [None, 7, 150])
def test_ball_query_equals_brute_force(chunk_entries):
    sizes = [40, 90, 17]
    points, offset = clouds(sizes)
    g = torch.Generator().manual_seed(1)
    # centres: some points of each cloud, some random positions, one far away (no hit)
    centre_sizes = [6, 9, 4]
    parts = []
    for (s, e), m in zip(bounds(offset), centre_sizes):
        pick = points[s:e][torch.randperm(e - s, generator=g)[: m // 2]]
        parts += [pick, torch.rand(m - m // 2, 3, generator=g, dtype=points.dtype)]
    parts[-1][-1] = torch.tensor([5.0, 5.0, 5.0], dtype=points.dtype)
    centres, centre_offset = torch.cat(parts), torch.tensor(centre_sizes).cumsum(0)
    radius, nsample = 0.3, 6
    got = ball_query(radius, nsample, points, offset, centres, centre_offset, chunk_entries=chunk_entries)
    assert got.shape == (centres.shape[0], nsample) and got.dtype == torch.long
    assert got.tolist() == brute_ball_query(radius, nsample, points, offset, centres, centre_offset)
    cloud_of = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    centre_cloud = torch.repeat_interleave(torch.arange(3), torch.tensor(centre_sizes))
    assert bool((cloud_of[got] == centre_cloud[:, None]).all())
    within = ((points[got] - centres[:, None]) ** 2).sum(-1) < radius ** 2
    assert bool(within[:-1].all()) and not bool(within[-1].any())  # the far centre has no hit


def test_neighbour_searches_name_the_bad_offset():
    points, offset = clouds([10, 5])
    with pytest.raises(InputError, match="ball_query: offset"):  # an empty cloud of points
        ball_query(0.3, 4, points, torch.tensor([10, 10, 15]), points[:3], torch.tensor([1, 2, 3]))
    with pytest.raises(InputError, match="ball_query: centres_offset"):  # does not cover the centres
        ball_query(0.3, 4, points, offset, points[:3], torch.tensor([1, 2]))
    with pytest.raises(InputError, match="three_nn_interpolate: unknown_offset"):  # 1 cloud, known has 2
        three_nn_interpolate(points[:3], torch.tensor([3]), points, offset, torch.zeros(15, 2))


def test_ball_query_caps_at_nsample_in_index_order():
    pts = torch.zeros(10, 3)
    pts[:, 0] = torch.arange(10) * 0.01
    got = ball_query(1.0, 4, pts, torch.tensor([10]), pts[9:], torch.tensor([1]))
    assert got.tolist() == [[0, 1, 2, 3]]


# ----------------------------------------------------------------------------------------- interpolation


def brute_interpolate(unknown, unknown_offset, known, known_offset, feats):
    out = []
    for (s, e), (us, ue) in zip(bounds(known_offset), bounds(unknown_offset)):
        for u in unknown[us:ue]:
            d2 = sorted((float(((known[j] - u) ** 2).sum()), j) for j in range(s, e))[:3]
            w = [1.0 / (d + 1e-8) for d, _ in d2]
            out.append(sum(wi / sum(w) * feats[j] for wi, (_, j) in zip(w, d2)))
    return torch.stack(out)


@pytest.mark.parametrize("chunk_entries", [None, 5])
def test_three_nn_interpolate_equals_brute_force(chunk_entries):
    known, known_offset = clouds([12, 2, 1, 30], seed=2)  # clouds with 2 and 1 known points too
    unknown, unknown_offset = clouds([20, 7, 3, 41], seed=3)
    feats = torch.randn(known.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    got = three_nn_interpolate(unknown, unknown_offset, known, known_offset, feats, chunk_entries=chunk_entries)
    want = brute_interpolate(unknown, unknown_offset, known, known_offset, feats)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_three_nn_interpolate_copies_at_known_points():
    known, known_offset = clouds([30, 25], seed=5)
    feats = torch.randn(known.shape[0], 4, dtype=torch.float64)
    got = three_nn_interpolate(known, known_offset, known, known_offset, feats)
    torch.testing.assert_close(got, feats, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- encoder


def test_set_abstraction_centres_are_min_npoint_n_fps_samples_per_cloud():
    sa = PointNetSetAbstraction(npoint=16, radius=0.3, nsample=4, in_channel=3, mlp=[4]).eval()
    points, offset = clouds([40, 9, 25], torch.float32)
    centres, feats, centre_offset = sa(points, torch.zeros(74, 0), offset)
    assert centre_offset.tolist() == [16, 25, 41] and feats.shape == (41, 4)
    assert torch.equal(centres, points[farthest_point_sampling(points, torch.tensor([16, 9, 16]), offset)])



def test_encoder_output_shape_and_batch_independence():
    torch.manual_seed(0)
    model = build_pointnet2("small")
    (pa, oa), (pb, ob) = clouds([300], torch.float32, 1, 3.0), clouds([700], torch.float32, 2, 3.0)
    fa, fb = torch.rand(300, 3), torch.rand(700, 3)
    both = (torch.cat([pa, pb]), torch.cat([fa, fb]), torch.tensor([300, 1000]))
    with torch.no_grad():
        out = model(*both)  # train mode: updates the running statistics
        assert out.shape == (1000, model.out_channels) == (1000, 64)
        model.eval()
        out = model(*both)
        torch.testing.assert_close(out[:300], model(pa, fa, oa), rtol=0, atol=1e-5)
        torch.testing.assert_close(out[300:], model(pb, fb, ob), rtol=0, atol=1e-5)


def test_gradients_reach_every_parameter_and_points():
    torch.manual_seed(0)
    model = PointNet2(PointNet2Config(**TINY))
    points, offset = clouds([150, 90], torch.float32, 0)
    points.requires_grad_(True)
    feats = torch.rand(240, 4, requires_grad=True)
    out = model(points, feats, offset)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert float(points.grad.abs().sum()) > 0 and float(feats.grad.abs().sum()) > 0


def test_gradcheck_set_abstraction_and_feature_propagation():
    torch.manual_seed(0)
    sa = PointNetSetAbstraction(npoint=4, radius=0.6, nsample=5, in_channel=2 + 3, mlp=[6, 5]).double()
    fp = PointNetFeaturePropagation(in_channel=2 + 5, mlp=[4]).double()
    for bn in [*sa.mlp_bns, *fp.mlp_bns]:  # eval mode: BN is a fixed affine map
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
    sa.eval(), fp.eval()
    points, offset = clouds([7, 6], seed=6)
    feats = torch.randn(13, 2, dtype=torch.float64)

    def f(p, x):
        c, cx, co = sa(p, x, offset)
        return fp(p, offset, c, co, x, cx)

    assert torch.autograd.gradcheck(f, (points.requires_grad_(), feats.requires_grad_()), eps=1e-6, atol=1e-5)


def test_tiny_model_overfits_a_segmentation_batch():
    torch.manual_seed(0)
    encoder = PointNet2(PointNet2Config(**TINY))
    head = nn.Linear(encoder.out_channels, 3)
    points, offset = clouds([128, 96], torch.float32, 7)
    feats = torch.rand(224, 4, generator=torch.Generator().manual_seed(8))
    labels = (points[:, 0] > 0.5).long() + (points[:, 2] > 0.5).long()  # a per-point function of position
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(100):
        loss = nn.functional.cross_entropy(head(encoder(points, feats, offset)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] <= losses[0] / 2:
            break
    assert losses[-1] <= losses[0] / 2, losses[::10]


def test_no_feature_channels_small_and_single_point_clouds():
    torch.manual_seed(0)
    model = PointNet2(PointNet2Config(**{**TINY, "in_channels": 0}))
    points, offset = clouds([1, 16, 3], torch.float32, 9)
    out = model(points, torch.zeros(20, 0), offset)
    assert out.shape == (20, 16) and bool(torch.isfinite(out).all())
    model(points[1:17], torch.zeros(16, 0), torch.tensor([16]))  # one 16-point cloud alone, train mode
    model.eval()
    assert model(points[:1], torch.zeros(1, 0), torch.tensor([1])).shape == (1, 16)


# ------------------------------------------------------------------------------------- names and config

# yanx27/Pointnet_Pointnet2_pytorch models/pointnet2_sem_seg.py, get_model: (out, in) of every 1x1 conv.
# sa1 takes 9 + 3 (9 = the reference's l0_points channels = our in_channels, 3 = relative xyz); fpX
# takes skip + coarse (fp4 256 + 512, fp3 128 + 256, fp2 64 + 256, fp1 0 + 128).
YANX27_SEM_SEG = {
    "sa1": [(32, 12), (32, 32), (64, 32)],
    "sa2": [(64, 67), (64, 64), (128, 64)],
    "sa3": [(128, 131), (128, 128), (256, 128)],
    "sa4": [(256, 259), (256, 256), (512, 256)],
    "fp4": [(256, 768), (256, 256)],
    "fp3": [(256, 384), (256, 256)],
    "fp2": [(256, 320), (128, 256)],
    "fp1": [(128, 128), (128, 128), (128, 128)],
}


def expected_state_dict_shapes():
    out = []
    for module, convs in YANX27_SEM_SEG.items():  # registration order sa1..sa4, fp4..fp1, as the reference
        kernel = (1, 1) if module.startswith("sa") else (1,)
        for i, (o, c) in enumerate(convs):
            out += [(f"{module}.mlp_convs.{i}.weight", (o, c, *kernel)), (f"{module}.mlp_convs.{i}.bias", (o,))]
        for i, (o, _) in enumerate(convs):
            out += [(f"{module}.mlp_bns.{i}.{k}", (o,)) for k in ("weight", "bias", "running_mean", "running_var")]
            out.append((f"{module}.mlp_bns.{i}.num_batches_tracked", ()))
    return out


def test_ssg_state_dict_matches_reference_names_and_shapes():
    model = build_pointnet2("ssg")
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == expected_state_dict_shapes()
    sd = model.state_dict()
    assert tuple(sd["sa1.mlp_convs.0.weight"].shape) == (32, 3 + 9, 1, 1)
    assert tuple(sd["fp1.mlp_convs.2.weight"].shape) == (128, 128, 1)
    assert model.in_channels == 9 and model.out_channels == 128
    assert tuple(build_pointnet2("ssg", in_channels=3).state_dict()["sa1.mlp_convs.0.weight"].shape) == (32, 6, 1, 1)


def test_presets_and_config_validation():
    assert build_pointnet2("scene").out_channels == 128 and build_pointnet2("small").out_channels == 64
    assert set(PRESETS) == {"ssg", "scene", "small"}
    cfg = PointNet2Config(**{**TINY, "fp1_skip": True})
    assert PointNet2(cfg).fp1.in_channel == 4 + 32
    with pytest.raises(InputError, match="radii"):
        PointNet2Config(**{**TINY, "radii": (0.1,)})
    with pytest.raises(InputError, match="in_channels"):
        PointNet2Config(**{**TINY, "in_channels": -1})
    with pytest.raises(InputError, match="sa_mlps"):
        PointNet2Config(**{**TINY, "sa_mlps": ((8, 0), (4,))})
    with pytest.raises(InputError, match="preset"):
        build_pointnet2("huge")
    with pytest.raises(InputError, match="npoints"):
        PointNet2Config(preset=None, in_channels=3)
    with pytest.raises(TypeError, match="npoint"):
        build_pointnet2("small", npoint=3)


def test_encoder_rejects_bad_input():
    model = PointNet2(PointNet2Config(**TINY))
    points, offset = clouds([20, 10], torch.float32)
    feats = torch.rand(30, 4)
    with pytest.raises(InputError, match="offset"):
        model(points, feats, torch.tensor([20, 20, 30]))  # empty cloud
    with pytest.raises(InputError, match="offset"):
        model(points, feats, torch.tensor([20, 29]))  # does not cover the rows
    with pytest.raises(InputError, match="features"):
        model(points, feats[:, :3], offset)
    with pytest.raises(InputError, match="points"):
        model(points[:, :2], feats, offset)
    bad = points.clone()
    bad[3, 1] = math.nan
    with pytest.raises(InputError, match="non-finite"):
        model(bad, feats, offset)
