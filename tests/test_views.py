"""View selection (renderssl.data.views) against brute force and analytic cases."""

import math

import numpy as np
import pytest
import torch

from renderssl.data import views
from renderssl.data.synthetic import SyntheticConfig, generate_scene
from renderssl.errors import InputError
from renderssl.geometry import intrinsics_matrix


@pytest.fixture(scope="module")
def scenes():
    """A room and an object scene, 16x12, 5 views, in float64."""
    out = []
    for seed, kind in ((3, "room"), (4, "object")):
        s = generate_scene(seed, SyntheticConfig(kind=kind, width=16, height=12, num_views=5))
        out.append((s.K.double(), s.c2w.double(), s.depth[:, 0].double()))
    return out


def brute_overlap(K, c2w, depth, a, b, stride=1, rel_tol=0.05):
    """Per-pixel Python loop: (consistent count, valid count) of view a's sampled pixels in view b."""
    H, W = depth.shape[-2:]
    Ka, Kb = K[a].tolist(), K[b].tolist()
    Ma, Mb = c2w[a].tolist(), c2w[b].tolist()
    da, db = depth[a].tolist(), depth[b].tolist()
    good = valid = 0
    for i in range(0, H, stride):
        for j in range(0, W, stride):
            d = da[i][j]
            if not (d > 0 and math.isfinite(d)):
                continue
            valid += 1
            x = (j + 0.5 - Ka[0][2]) / Ka[0][0] * d
            y = (i + 0.5 - Ka[1][2]) / Ka[1][1] * d
            p = [Ma[r][0] * x + Ma[r][1] * y + Ma[r][2] * d + Ma[r][3] for r in range(3)]  # world
            q = [p[r] - Mb[r][3] for r in range(3)]
            cb = [sum(Mb[r][c] * q[r] for r in range(3)) for c in range(3)]  # R_b^T (p - t_b)
            if cb[2] <= 0:
                continue
            u = Kb[0][0] * cb[0] / cb[2] + Kb[0][2]
            v = Kb[1][1] * cb[1] / cb[2] + Kb[1][2]
            if not (0 <= u < W and 0 <= v < H):
                continue
            zb = db[int(math.floor(v))][int(math.floor(u))]
            if zb > 0 and abs(cb[2] - zb) / zb < rel_tol:
                good += 1
    return good, valid


def brute_fraction(*args, **kw):
    good, valid = brute_overlap(*args, **kw)
    return good / valid if valid else 0.0


# ---- overlap ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 3])
def test_overlap_matches_per_pixel_loop(scenes, stride):
    for K, c2w, depth in scenes:
        V = K.shape[0]
        M = views.overlap_matrix(K, c2w, depth, stride=stride)  # (V, V)
        assert M.shape == (V, V)
        for a in range(V):
            for b in range(V):
                good, valid = brute_overlap(K, c2w, depth, a, b, stride=stride)
                assert valid > 0
                assert round(float(M[a, b]) * valid) == good, (a, b)
                assert float(M[a, b]) == pytest.approx(good / valid, abs=1e-12)
        # chunking the reference views (one per chunk) changes nothing
        assert torch.equal(views.overlap_matrix(K, c2w, depth[:, None], stride=stride, max_elements=1), M)
        # the pairwise function gives the same numbers as the matrix
        one = views.overlap(K[0], c2w[0], depth[0], K[2], c2w[2], depth[2, None], stride=stride)
        assert one.shape == () and float(one) == pytest.approx(float(M[0, 2]), abs=1e-12)


def test_overlap_scene_has_partial_overlaps(scenes):
    """The brute-force check is not vacuous: the scenes have overlaps strictly between 0 and 1."""
    M = views.overlap_matrix(*scenes[1], stride=1)
    off = M[~torch.eye(M.shape[0], dtype=torch.bool)]
    assert ((off > 0.05) & (off < 0.95)).any() and (off < 0.5).any()
    assert torch.allclose(M.diagonal(), torch.ones(M.shape[0], dtype=M.dtype))


def plane_pair(shift_x=2.0, depth_b=2.0):
    """Two cameras looking down +z at a fronto-parallel plane z = 2 (W=16, H=8, f=8): a's footprint is
    4 wide; b is moved by ``shift_x`` along x."""
    K = intrinsics_matrix(8.0, 8.0, 8.0, 4.0, dtype=torch.float64)
    c2w_a = torch.eye(4, dtype=torch.float64)
    c2w_b = c2w_a.clone()
    c2w_b[0, 3] = shift_x
    da = torch.full((8, 16), 2.0, dtype=torch.float64)
    db = torch.full((8, 16), depth_b, dtype=torch.float64)
    return K, c2w_a, da, K, c2w_b, db


def test_overlap_analytic_plane():
    # b moved by half the footprint: exactly the right half of a's columns (j >= 8) land inside b
    assert float(views.overlap(*plane_pair(2.0), stride=1)) == 0.5
    assert float(views.overlap(*plane_pair(1.0), stride=1)) == 0.75
    assert float(views.overlap(*plane_pair(0.0), stride=1)) == 1.0
    assert float(views.overlap(*plane_pair(4.0), stride=1)) == 0.0
    # b sees a different surface (z = 3 vs 2: 33% > rel_tol): nothing is consistent ...
    assert float(views.overlap(*plane_pair(0.0, depth_b=3.0), stride=1)) == 0.0
    # ... unless the tolerance allows it
    assert float(views.overlap(*plane_pair(0.0, depth_b=3.0), stride=1, rel_tol=0.4)) == 1.0
    # invalid pixels of a leave the denominator; invalid pixels of b are not consistent
    K, ca, da, _, cb, db = plane_pair(0.0)
    da[:, :4] = 0.0
    db[:, 12:] = 0.0
    assert float(views.overlap(K, ca, da, K, cb, db, stride=1)) == pytest.approx(8 / 12)
    da[:] = 0.0
    assert float(views.overlap(K, ca, da, K, cb, db, stride=1)) == 0.0  # no valid pixel: 0


def test_overlap_batched_broadcast_and_channel_dim():
    K, ca, da, _, cb, db = plane_pair(2.0)
    cbs = torch.stack([cb, ca])  # (2, 4, 4): shifted and identical
    out = views.overlap(K, ca, da[None], K, cbs, db[None, None].expand(2, 1, 8, 16), stride=1)  # (2,)
    assert out.tolist() == [0.5, 1.0]


def test_overlap_errors_name_the_argument():
    K, ca, da, _, cb, db = plane_pair()
    with pytest.raises(InputError, match="depth_b"):
        views.overlap(K, ca, da, K, cb, db[:, :8])
    with pytest.raises(InputError, match="c2w_b"):
        views.overlap(K, ca, da, K, cb[:3], db)
    with pytest.raises(InputError, match="stride"):
        views.overlap(K, ca, da, K, cb, db, stride=0)
    with pytest.raises(InputError, match="rel_tol"):
        views.overlap(K, ca, da, K, cb, db, rel_tol=0.0)
    with pytest.raises(InputError, match="broadcast"):
        views.overlap(K.expand(3, 3, 3), ca, da, K, cb.expand(2, 4, 4), db)
    with pytest.raises(InputError, match="depth"):
        views.overlap_matrix(K[None], ca[None], da)


# ---- overlapping pairs ------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_overlapping_pairs_are_exactly_those_above_threshold(scenes, threshold):
    for K, c2w, depth in scenes:
        V = K.shape[0]
        pairs, scores = views.overlapping_pairs(K, c2w, depth, min_overlap=threshold, stride=1)
        expected = {}
        for a in range(V):
            for b in range(a + 1, V):
                s = min(brute_fraction(K, c2w, depth, a, b), brute_fraction(K, c2w, depth, b, a))
                if s >= threshold:
                    expected[(a, b)] = s
        got = {tuple(p): float(s) for p, s in zip(pairs.tolist(), scores)}
        assert set(got) == set(expected)
        for key, s in got.items():
            assert s == pytest.approx(expected[key], abs=1e-12) and s >= threshold
        assert pairs.dtype == torch.int64 and (pairs[:, 0] < pairs[:, 1]).all()


def test_overlapping_pair_draws_only_qualifying_pairs(scenes):
    K, c2w, depth = scenes[1]
    allowed = {tuple(p) for p in views.overlapping_pairs(K, c2w, depth, min_overlap=0.4, stride=1)[0].tolist()}
    assert allowed, "the fixture needs at least one qualifying pair"
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        pair = views.overlapping_pair(K, c2w, depth, g, min_overlap=0.4, stride=1)
        assert pair.shape == (2,) and pair.dtype == torch.int64
        seen.add(tuple(pair.tolist()))
    assert seen <= allowed and len(seen) > 1
    # same seed, same pair
    p1 = views.overlapping_pair(K, c2w, depth, torch.Generator().manual_seed(5), min_overlap=0.4, stride=1)
    p2 = views.overlapping_pair(K, c2w, depth, torch.Generator().manual_seed(5), min_overlap=0.4, stride=1)
    assert p1.tolist() == p2.tolist()


def test_overlapping_pair_fallback_and_strict(scenes):
    K, c2w, depth = scenes[1]
    V = K.shape[0]
    best, best_s = None, -1.0
    for a in range(V):
        for b in range(a + 1, V):
            s = min(brute_fraction(K, c2w, depth, a, b), brute_fraction(K, c2w, depth, b, a))
            if s > best_s:
                best, best_s = (a, b), s
    assert best_s < 0.99
    g = torch.Generator().manual_seed(0)
    assert tuple(views.overlapping_pair(K, c2w, depth, g, min_overlap=0.99, stride=1).tolist()) == best
    with pytest.raises(InputError, match="min_overlap"):
        views.overlapping_pair(K, c2w, depth, g, min_overlap=0.99, stride=1, strict=True)
    with pytest.raises(InputError, match="generator"):
        views.overlapping_pair(K, c2w, depth, None)
    with pytest.raises(InputError, match="max_overlap"):
        views.overlapping_pairs(K, c2w, depth, min_overlap=0.8, max_overlap=0.5)


def test_max_overlap_drops_near_duplicates(scenes):
    K, c2w, depth = scenes[0]
    K2, c2w2, depth2 = torch.cat([K, K[:1]]), torch.cat([c2w, c2w[:1]]), torch.cat([depth, depth[:1]])  # view 5 = view 0
    V = K2.shape[0]
    pairs, scores = views.overlapping_pairs(K2, c2w2, depth2, min_overlap=0.0, stride=1)
    assert (0, V - 1) in {tuple(p) for p in pairs.tolist()}
    pairs, scores = views.overlapping_pairs(K2, c2w2, depth2, min_overlap=0.0, max_overlap=0.99, stride=1)
    assert (0, V - 1) not in {tuple(p) for p in pairs.tolist()} and (scores <= 0.99).all()


# ---- sequences and random selectors -----------------------------------------------------------------
def test_frame_interval_pair():
    g = torch.Generator().manual_seed(0)
    refs = set()
    for _ in range(200):
        a, b = views.frame_interval_pair(12, 5, g).tolist()
        assert b - a == 5 and 0 <= a and b < 12
        refs.add(a)
    assert refs == set(range(7))  # every valid reference is drawn
    assert views.frame_interval_pair(6, 5, g).tolist() == [0, 5]
    # short sequence: first and last frame; strict refuses
    assert views.frame_interval_pair(4, 5, g).tolist() == [0, 3]
    assert views.frame_interval_pair(2, 5, g).tolist() == [0, 1]
    with pytest.raises(InputError, match="num_frames"):
        views.frame_interval_pair(4, 5, g, strict=True)
    with pytest.raises(InputError, match="num_frames"):
        views.frame_interval_pair(1, 5, g)
    with pytest.raises(InputError, match="interval"):
        views.frame_interval_pair(10, 0, g)
    with pytest.raises(InputError, match="generator"):
        views.frame_interval_pair(10, 5, None)
    assert views.frame_interval_pair(np.int64(6), torch.tensor(5), g).tolist() == [0, 5]  # any integer type
    with pytest.raises(InputError, match="interval"):
        views.frame_interval_pair(10, 2.5, g)
    r1 = views.frame_interval_pair(100, 5, torch.Generator().manual_seed(7))
    r2 = views.frame_interval_pair(100, 5, torch.Generator().manual_seed(7))
    assert r1.tolist() == r2.tolist()


def test_random_views():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(100):
        idx = views.random_views(9, 5, g)
        assert idx.shape == (5,) and idx.dtype == torch.int64
        assert len(set(idx.tolist())) == 5 and idx.min() >= 0 and idx.max() < 9
        seen |= set(idx.tolist())
    assert seen == set(range(9))
    assert sorted(views.random_views(5, 5, g).tolist()) == list(range(5))
    with pytest.raises(InputError, match="k"):
        views.random_views(4, 5, g)
    with pytest.raises(InputError, match="generator"):
        views.random_views(4, 2, 0)


def line_cameras(xs):
    c2w = torch.eye(4).repeat(len(xs), 1, 1)  # (V, 4, 4)
    c2w[:, 0, 3] = torch.tensor(xs, dtype=torch.float32)
    return c2w


def test_nearest_views_against_sorted_distances():
    xs = [0.0, 1.0, 2.5, 2.9, 3.2, 7.0, -1.5, 4.0]
    c2w = line_cameras(xs)
    g = torch.Generator().manual_seed(0)
    for target in range(len(xs)):
        others = sorted((abs(xs[i] - xs[target]), i) for i in range(len(xs)) if i != target)
        nearest3 = {i for _, i in others[:3]}
        seen = set()
        for _ in range(40):
            idx = views.nearest_views(c2w, target, 3, 2, g)
            got = idx.tolist()
            assert len(got) == 2 and len(set(got)) == 2 and target not in got
            assert set(got) <= nearest3
            seen |= set(got)
        assert seen == nearest3
        # selecting all candidates gives exactly the nearest set
        assert set(views.nearest_views(c2w, target, 3, 3, g).tolist()) == nearest3
    # candidates clamp to the V - 1 other views
    assert set(views.nearest_views(c2w, 0, 50, 7, g).tolist()) == set(range(1, 8))
    with pytest.raises(InputError, match="num_select"):
        views.nearest_views(c2w, 0, 3, 4, g)
    with pytest.raises(InputError, match="num_select"):
        views.nearest_views(c2w, 0, 50, 8, g)
    with pytest.raises(InputError, match="target"):
        views.nearest_views(c2w, 8, 3, 2, g)
    with pytest.raises(InputError, match="target"):
        views.nearest_views(c2w, -1, 3, 2, g)
    with pytest.raises(InputError, match="c2w_all"):
        views.nearest_views(c2w[:, :3], 0, 3, 2, g)
    with pytest.raises(InputError, match="generator"):
        views.nearest_views(c2w, 0, 3, 2, None)


# ---- config dispatch --------------------------------------------------------------------------------
def test_select_context_config(scenes):
    K, c2w, depth = scenes[0]
    g = torch.Generator().manual_seed(0)
    a, b = views.select_context(views.ViewSelectionConfig(), 20, g).tolist()
    assert b - a == views.DEFAULT_INTERVAL
    cfg = views.ViewSelectionConfig(mode="overlap", stride=1, min_overlap=0.3)
    pair = tuple(views.select_context(cfg, K.shape[0], g, K=K, c2w=c2w, depth=depth).tolist())
    assert pair in {tuple(p) for p in views.overlapping_pairs(K, c2w, depth, min_overlap=0.3, stride=1)[0].tolist()}
    with pytest.raises(InputError, match="depth"):
        views.select_context(cfg, 5, g)
    with pytest.raises(InputError, match="mode"):
        views.ViewSelectionConfig(mode="nearest")
    with pytest.raises(InputError, match="ViewSelectionConfig.targets"):
        views.ViewSelectionConfig(targets="near")
    with pytest.raises(InputError, match="min_overlap"):
        views.ViewSelectionConfig(min_overlap=1.5)


def test_random_context_draws_count_distinct_frames_and_targets_avoid_them():
    cfg = views.ViewSelectionConfig(mode="random", count=5)
    assert cfg.num_context == 5 and views.ViewSelectionConfig().num_context == 2
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        context = views.select_context(cfg, 12, g)
        targets = views.select_targets(cfg, 12, context, 3, g)
        ids = context.tolist() + targets.tolist()
        assert len(context) == 5 and len(set(ids)) == 8 and all(0 <= i < 12 for i in ids)
    with pytest.raises(InputError, match="count"):
        views.select_context(cfg, 4, g)
    with pytest.raises(InputError, match="count"):
        views.ViewSelectionConfig(mode="random", count=0)


def test_select_targets_between_and_random():
    g = torch.Generator().manual_seed(0)
    between = views.ViewSelectionConfig(targets="between")
    pair = torch.tensor([3, 8])
    for _ in range(20):
        t = views.select_targets(between, 20, pair, 2, g)
        assert len(set(t.tolist())) == 2 and all(3 < x < 8 for x in t.tolist())
    wide = views.select_targets(between, 20, pair, 5, g)  # more than the 4 frames between: any other frames
    assert len(set(wide.tolist())) == 5 and not set(wide.tolist()) & {3, 8}
    overlap = views.ViewSelectionConfig(mode="overlap", targets="between")
    assert any(not 3 < int(views.select_targets(overlap, 20, pair, 1, g)) < 8 for _ in range(20))
    assert views.select_targets(between, 20, pair, 0, g).shape == (0,)
    with pytest.raises(InputError, match="num_targets"):
        views.select_targets(views.ViewSelectionConfig(), 4, torch.tensor([0, 3]), 3, g)
