"""eval.boundaries: BSDS .mat I/O, thinning, one-to-one matching, ODS/OIS/AP, folder evaluation."""

import math

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat, savemat
from scipy.optimize import linear_sum_assignment

from renderssl.errors import InputError
from renderssl.eval.boundaries import (
    evaluate_boundaries,
    evaluate_folder,
    match_boundaries,
    read_bsds_ground_truth,
    segmentation_boundaries,
    suppress_non_maxima,
    thin_edges,
    threshold_levels,
    tolerance_pixels,
    write_bsds_ground_truth,
)

H, W = 60, 80  # diagonal 100 px: tolerance 0.75 px, so only exact positions match by default
TOL_1PX = 1.5 / 100  # 1.5 px: 4- and 8-neighbours match


def lines(*specs) -> np.ndarray:
    """(H, W) bool with ('h', row, c0, c1) horizontal / ('v', col, r0, r1) vertical / ('d', r0, c0, n) diagonal lines."""
    m = np.zeros((H, W), dtype=bool)
    for kind, a, b, c in specs:
        if kind == "h":
            m[a, b:c] = True
        elif kind == "v":
            m[b:c, a] = True
        else:
            m[a + np.arange(c), b + np.arange(c)] = True
    return m


A, B_, C = ("v", 10, 5, 50), ("h", 30, 25, 70), ("d", 5, 40, 20)  # far apart (> 3 px)


# ----------------------------------------------------------------------------- ground-truth files


def test_mat_round_trip_in_bsds_structure(tmp_path):
    rng = np.random.default_rng(0)
    bnds = [rng.random((H, W)) > 0.8 for _ in range(3)]
    segs = [rng.integers(1, 5, (H, W)) for _ in range(3)]
    path = write_bsds_ground_truth(tmp_path / "img.mat", bnds, segs)
    read = read_bsds_ground_truth(path)
    assert len(read) == 3 and all(r.dtype == bool and np.array_equal(r, b) for r, b in zip(read, bnds))
    # The layout BSDS500 uses: groundTruth is a 1 x k cell of structs {Segmentation, Boundaries}.
    raw = loadmat(str(path))["groundTruth"]
    assert raw.shape == (1, 3) and raw.dtype == object
    rec = raw[0, 1]
    assert set(rec.dtype.names) == {"Segmentation", "Boundaries"}
    assert np.array_equal(rec["Segmentation"][0, 0], segs[1]) and rec["Segmentation"][0, 0].dtype == np.uint16
    # One annotator (a 1 x 1 cell, which squeezing would collapse) and squeeze_me-style files read too.
    one = read_bsds_ground_truth(write_bsds_ground_truth(tmp_path / "one.mat", bnds[:1]))
    assert len(one) == 1 and np.array_equal(one[0], bnds[0])
    savemat(str(tmp_path / "structarr.mat"), {"groundTruth": np.array([(segs[0], bnds[0]), (segs[1], bnds[1])],
                                                                      dtype=[("Segmentation", object), ("Boundaries", object)])[None]})
    assert all(np.array_equal(r, b) for r, b in zip(read_bsds_ground_truth(tmp_path / "structarr.mat"), bnds[:2]))


def test_ground_truth_from_segmentations(tmp_path):
    seg = np.ones((H, W), dtype=int)
    seg[:, 40:] = 2
    seg[20:30, 10:20] = 3
    expected = segmentation_boundaries(seg)
    assert expected[:, 39].all() and not expected[:, 40].any()  # left of each label change
    assert expected[19, 10:20].all() and expected[29, 10:20].all() and expected[20:29, 9].all()
    read = read_bsds_ground_truth(write_bsds_ground_truth(tmp_path / "seg.mat", segmentations=[seg, np.flipud(seg)]))
    assert np.array_equal(read[0], expected) and np.array_equal(read[1], segmentation_boundaries(np.flipud(seg)))
    # Boundaries only: a segmentation is made of the regions between boundaries.
    raw = loadmat(str(write_bsds_ground_truth(tmp_path / "b.mat", [lines(("v", 10, 0, H))])))["groundTruth"][0, 0]
    labels = raw["Segmentation"][0, 0]
    assert labels.min() >= 1 and len(np.unique(labels)) == 2


def test_ground_truth_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.mat.*not found"):
        read_bsds_ground_truth(tmp_path / "missing.mat")
    bad = tmp_path / "corrupt.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file garbage" + bytes(range(256)) * 3)
    with pytest.raises(InputError, match="corrupt.mat"):
        read_bsds_ground_truth(bad)
    savemat(str(tmp_path / "novar.mat"), {"other": np.zeros(3)})
    with pytest.raises(InputError, match="novar.mat.*no 'groundTruth'.*other"):
        read_bsds_ground_truth(tmp_path / "novar.mat")
    savemat(str(tmp_path / "numeric.mat"), {"groundTruth": np.zeros((2, 2))})
    with pytest.raises(InputError, match="numeric.mat.*cell array"):
        read_bsds_ground_truth(tmp_path / "numeric.mat")
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = {"Foo": np.zeros((3, 3))}
    savemat(str(tmp_path / "nofield.mat"), {"groundTruth": cell})
    with pytest.raises(InputError, match="nofield.mat.*neither 'Boundaries' nor 'Segmentation'"):
        read_bsds_ground_truth(tmp_path / "nofield.mat")
    with pytest.raises(InputError, match="give boundaries_list or segmentations"):
        write_bsds_ground_truth(tmp_path / "x.mat")


# ----------------------------------------------------------------------------- thinning and NMS


def test_thinning_makes_one_pixel_lines_and_keeps_thin_ones():
    bar = np.zeros((20, 30), dtype=bool)
    bar[5:10, 3:25] = True  # 5 px thick
    t = thin_edges(bar)
    assert t.sum(axis=0)[6:22].tolist() == [1] * 16 and t[7, 6:22].all()  # the middle row
    yy, xx = np.mgrid[:40, :40]
    ring = (np.hypot(yy - 20, xx - 20) >= 9) & (np.hypot(yy - 20, xx - 20) < 12)
    tr = thin_edges(ring)
    assert tr.sum() < ring.sum() / 2 and (tr <= ring).all()
    from scipy import ndimage
    assert ndimage.label(tr, np.ones((3, 3)))[1] == 1 and ndimage.label(~tr)[1] == 2  # still a closed ring
    thin = lines(A, B_, C)
    assert np.array_equal(thin_edges(thin), thin)  # already thin: unchanged
    assert np.array_equal(thin_edges(np.stack([bar, bar])), np.stack([t, t]))  # batched


def test_non_maximum_suppression_keeps_ridge_centre():
    yy, xx = np.mgrid[:41, :41] - 20.0
    for angle in (0.0, 45.0, 90.0):
        d = xx * math.cos(math.radians(angle)) + yy * math.sin(math.radians(angle))
        kept = suppress_non_maxima(np.exp(-(d**2) / 8.0))[8:-8, 8:-8] > 0
        assert kept.sum() == 25 and np.abs(d[8:-8, 8:-8][kept]).max() < 1e-6


# ----------------------------------------------------------------------------- matching


def brute_force_count(pred, gt, radius):
    """Maximum number of one-to-one pairs within radius, via a min-cost assignment."""
    p, g = np.argwhere(pred), np.argwhere(gt)
    if len(p) == 0 or len(g) == 0:
        return 0
    d = np.hypot(*(p[:, None] - g[None]).transpose(2, 0, 1))
    cost = np.where(d <= radius + 1e-9, d, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return int((cost[rows, cols] < 1e6).sum())


def test_matching_is_one_to_one_and_maximal():
    gt = np.zeros((10, 10), dtype=bool)
    gt[5, 5] = True
    pred = np.zeros_like(gt)
    pred[5, 4] = pred[5, 6] = True  # two predictions 1 px from one ground-truth pixel
    m = match_boundaries(pred, gt, 1.0 / math.hypot(10, 10))  # 1 px
    assert m.count == 1 and m.pred_matched.sum() == 1 and m.gt_matched.sum() == 1
    rng = np.random.default_rng(1)
    for trial in range(30):
        pred, gt = rng.random((8, 9)) > 0.75, rng.random((8, 9)) > 0.75
        max_dist = rng.choice([0.5, 1.0, 1.5, 2.3]) / math.hypot(8, 9)
        m = match_boundaries(pred, gt, max_dist)
        assert m.count == brute_force_count(pred, gt, tolerance_pixels((8, 9), max_dist)), trial
        assert m.gt_matched.sum() == m.count and (m.pred_matched <= pred).all() and (m.gt_matched <= gt).all()


def test_tolerance_is_fraction_of_diagonal():
    assert tolerance_pixels((321, 481)) == pytest.approx(0.0075 * math.hypot(321, 481))
    gt = lines(("v", 40, 10, 50))
    shifted = lines(("v", 42, 10, 50))  # 2 px away
    assert match_boundaries(shifted, gt, 2.0 / 100).count == 40
    assert match_boundaries(shifted, gt, 1.9 / 100).count == 0
    with pytest.raises(InputError, match="same size|one size"):
        match_boundaries(gt[:, :10], gt)


# ----------------------------------------------------------------------------- benchmark


def test_levels_follow_the_benchmark():
    levels = threshold_levels(99)
    assert levels.size == 99 and levels[0] == pytest.approx(0.01) and levels[-1] == pytest.approx(0.99)


def test_perfect_prediction_scores_one_with_several_annotators():
    gts = [lines(A, B_), lines(A, C)]  # two annotators; the prediction marks all they marked
    pred = (gts[0] | gts[1]).astype(float)
    r = evaluate_boundaries([pred, lines(B_).astype(float)], [gts, [lines(B_)]])
    assert r["ods"] == pytest.approx(1.0) and r["ois"] == pytest.approx(1.0)
    assert r["ods_precision"] == pytest.approx(1.0) and r["ods_recall"] == pytest.approx(1.0)
    assert r["precision"].shape == r["recall"].shape == (99,)
    assert r["ap"] == 0.0  # a binary map reaches one recall only: the benchmark's AP is 0
    # Graded strengths on exactly the boundary: precision 1 at every recall -> AP ~ 1.
    rng = np.random.default_rng(0)
    graded = np.where(pred > 0, rng.uniform(0.005, 1.0, pred.shape), 0.0)
    r = evaluate_boundaries([graded], [gts])
    assert np.allclose(r["precision"][r["recall"] > 0], 1.0) and r["ap"] > 0.95 and r["ods"] == pytest.approx(1.0)


def test_precision_counts_union_and_recall_sums_annotators():
    pred = lines(A, B_, C).astype(float)
    nA, nB, nC = lines(A).sum(), lines(B_).sum(), lines(C).sum()
    r = evaluate_boundaries([pred], [[lines(A, B_)]])
    assert r["ods_precision"] == pytest.approx((nA + nB) / (nA + nB + nC)) and r["ods_recall"] == pytest.approx(1.0)
    # Annotators A+B and C: every predicted pixel is matched by one of them; recall pools both.
    r = evaluate_boundaries([lines(A, B_).astype(float)], [[lines(A, B_), lines(A, C)]])
    assert r["ods_precision"] == pytest.approx(1.0)
    assert r["ods_recall"] == pytest.approx((nA + nB + nA) / (nA + nB + nA + nC))
    c = r["counts"][0, 0]  # [cntR, sumR, cntP, sumP]
    assert c.tolist() == [2 * nA + nB, 2 * nA + nB + nC, nA + nB, nA + nB]


def test_one_pixel_shift_within_tolerance_and_beyond():
    gt = lines(("v", 20, 5, 55), ("v", 50, 5, 55), ("d", 10, 25, 20))
    shifted = np.roll(gt, 1, axis=1)  # every pixel moves 1 px right
    tol = TOL_1PX
    assert evaluate_boundaries([shifted.astype(float)], [[gt]], max_dist=tol)["ods"] > 0.99
    far = np.roll(gt, 3, axis=1)  # 3 px: beyond 1.5 px
    r = evaluate_boundaries([far.astype(float)], [[gt]], max_dist=tol)
    assert r["ods_recall"] < 0.1 and r["ods"] < 0.1
    # At the default tolerance (0.75 px here) even the 1 px shift no longer matches.
    assert evaluate_boundaries([shifted.astype(float)], [[gt]])["ods"] < 0.1


def test_empty_prediction_has_zero_recall():
    r = evaluate_boundaries([np.zeros((H, W))], [[lines(A)]])
    assert r["ods"] == 0 and r["ois"] == 0 and r["ap"] == 0
    assert (r["recall"] == 0).all() and (r["precision"] == 0).all()


def test_ois_picks_best_threshold_per_image():
    gt = lines(A)
    # Image 1 is right above 0.7 only, image 2 right below 0.3 only: no single threshold suits both.
    p1 = np.where(gt, 0.8, 0.0) + np.where(lines(C), 0.5, 0.0)
    p2 = np.where(gt, 0.2, 0.0)
    r = evaluate_boundaries([p1, p2], [[gt], [gt]])
    assert r["ois"] == pytest.approx(1.0)
    # Best single level (<= 0.2): image 1 adds the 20 pixels of C, so P = 90 / 110, R = 1.
    assert r["ods"] == pytest.approx(2 * (90 / 110) / (1 + 90 / 110)) and r["ods_threshold"] <= 0.2
    with pytest.raises(InputError, match="image 0.*edge strengths"):
        evaluate_boundaries([p1 * 2], [[gt]])
    with pytest.raises(InputError, match="one ground-truth list"):
        evaluate_boundaries([p1], [[gt], [gt]])


def test_evaluate_folder_pairs_by_stem(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gts = {"a": [lines(A), lines(A, B_)], "b": [lines(C)]}
    preds = {"a": lines(A, B_).astype(float) * 0.6, "b": np.roll(lines(C), 1, axis=0).astype(float)}
    for stem in gts:
        write_bsds_ground_truth(gt_dir / f"{stem}.mat", gts[stem])
        Image.fromarray((preds[stem] * 255).round().astype(np.uint8)).save(pred_dir / f"{stem}.png")
    r = evaluate_folder(pred_dir, gt_dir, thresholds=9, workers=2)
    expected = evaluate_boundaries([np.round(preds[s] * 255) / 255 for s in "ab"], [gts[s] for s in "ab"], thresholds=9)
    assert r["names"] == ["a", "b"] and r["ods"] == pytest.approx(expected["ods"]) and r["ap"] == pytest.approx(expected["ap"])
    assert np.array_equal(r["counts"], expected["counts"])
    Image.fromarray(np.zeros((H, W), np.uint8)).save(pred_dir / "extra.png")
    write_bsds_ground_truth(gt_dir / "lonely.mat", [lines(A)])
    with pytest.raises(InputError, match=r"unpaired.*\['extra'\].*\['lonely'\]"):
        evaluate_folder(pred_dir, gt_dir)
    (pred_dir / "extra.png").unlink()
    (gt_dir / "lonely.mat").unlink()
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(pred_dir / "a.png")
    with pytest.raises(InputError, match="a.png.*size"):
        evaluate_folder(pred_dir, gt_dir)


# ----------------------------------------------------------------------------- compiled twins


def _compiled_or_skip():
    from renderssl.eval.boundaries import compiled_module

    if compiled_module() is None:
        pytest.skip("no C++ compiler: the compiled matcher is unavailable (scipy fallback in use)")


def _same_match(pred, gt, max_dist):
    from renderssl.eval.boundaries import match_boundaries_scipy

    fast, slow = match_boundaries(pred, gt, max_dist, method="compiled"), match_boundaries_scipy(pred, gt, max_dist)
    return fast.count == slow.count and np.array_equal(fast.pred_matched, slow.pred_matched) and np.array_equal(fast.gt_matched, slow.gt_matched)


def test_compiled_matcher_is_scipys_matching_pixel_for_pixel():
    # Precision pools the annotators' matched predicted pixels, so the matching itself (not only its
    # size) must be the twin's for the scores to be identical.
    _compiled_or_skip()
    rng = np.random.default_rng(7)
    for trial in range(150):
        h, w = rng.integers(1, 36, 2)
        pred, gt = rng.random((h, w)) < rng.random(), rng.random((h, w)) < rng.random()
        max_dist = rng.choice([0.5, 1.0, 1.5, 2.3, 4.4, 6.0]) / math.hypot(h, w)
        assert _same_match(pred, gt, max_dist), trial
        if trial < 40:  # and a maximum one, against an independent min-cost assignment
            assert match_boundaries(pred, gt, max_dist).count == brute_force_count(pred, gt, tolerance_pixels((h, w), max_dist)), trial
    n, tol = 120, 4.4 / math.hypot(120, 120)
    blob = np.zeros((n, n), bool)
    blob[20:90, 10:100] = True
    every3, every4, every4_shift = (np.zeros((n, n), bool) for _ in range(3))
    every3[::3], every4[::4], every4_shift[2::4] = True, True, True
    empty, one = np.zeros((n, n), bool), np.zeros((n, n), bool)
    one[50, 50] = True
    cases = {
        "dense blob vs lines": (blob, every3), "lines vs dense blob": (every3, blob),
        "parallel lines within tolerance": (every4, every4_shift), "blob vs shifted blob": (blob, np.roll(blob, 3, 1)),
        "empty prediction": (empty, every3), "empty ground truth": (blob, empty), "both empty": (empty, empty),
        "one pixel vs blob": (one, blob), "blob vs one pixel": (blob, one),
        "dense noise": (rng.random((n, n)) < 0.5, rng.random((n, n)) < 0.3),
    }
    for name, (p, g) in cases.items():
        assert _same_match(p, g, tol), name
    assert match_boundaries(every4, every4_shift, tol).count == every4_shift.sum()
    assert match_boundaries(one, blob, tol).count == 1 and match_boundaries(empty, every3, tol).count == 0


def test_compiled_thinning_equals_numpy():
    from renderssl.eval.boundaries import thin_edges_numpy

    _compiled_or_skip()
    rng = np.random.default_rng(3)
    from scipy import ndimage

    for trial in range(20):
        h, w = rng.integers(1, 60, 2)
        m = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0, 3)) > rng.uniform(0.3, 0.7)
        assert np.array_equal(thin_edges(m, method="compiled"), thin_edges_numpy(m)), trial
    stack = rng.random((3, 2, 40, 50)) < 0.6  # batched: each map thinned on its own
    assert np.array_equal(thin_edges(stack, method="compiled"), thin_edges_numpy(stack))
    assert np.array_equal(thin_edges(stack, max_iter=1), thin_edges_numpy(stack, max_iter=1))


def test_fast_path_scores_identical_to_twin_and_workers():
    from renderssl.bench.boundaries import stand_in_image
    from renderssl.eval.boundaries import usable_cores

    _compiled_or_skip()
    images = [stand_in_image(0, i, size=(64, 96), annotators=3) for i in range(3)]
    maps, gts = [e for e, _ in images], [g for _, g in images]
    slow = evaluate_boundaries(maps, gts, thresholds=25, method="scipy", workers=1)
    fast = evaluate_boundaries(maps, gts, thresholds=25, method="compiled", workers=2)
    assert np.array_equal(slow["counts"], fast["counts"]) and slow["counts"][..., 2].sum() > 0
    assert (slow["ods"], slow["ois"], slow["ap"]) == (fast["ods"], fast["ois"], fast["ap"])
    assert fast["workers"] == 2 and slow["workers"] == 1
    assert evaluate_boundaries(maps[:1], gts[:1], thresholds=5)["workers"] == 1  # never more than the images
    assert evaluate_boundaries(maps, gts, thresholds=5)["workers"] == 1  # default: one process
    assert evaluate_boundaries(maps, gts, thresholds=5, workers=None)["workers"] == min(usable_cores(), 3)  # the usable cores
    with pytest.raises(InputError, match="method"):
        evaluate_boundaries(maps, gts, method="fast")
    with pytest.raises(InputError, match="workers"):
        evaluate_boundaries(maps, gts, workers=0)
    with pytest.raises(InputError, match="match_boundaries: method"):
        match_boundaries(maps[0] > 0.5, gts[0][0], method="hungarian")


def test_bench_boundaries_stand_in_and_check(tmp_path):
    from renderssl.bench.boundaries import bench_boundaries, format_boundaries_bench, stand_in_image
    from renderssl.cli import parse_args

    _compiled_or_skip()
    e1, g1 = stand_in_image(3, 1)
    e2, g2 = stand_in_image(3, 1)  # seeded: a pure function of (seed, image)
    assert e1.shape == (321, 481) and len(g1) == 5 and np.array_equal(e1, e2) and all(np.array_equal(a, b) for a, b in zip(g1, g2))
    assert 0 <= e1.min() and e1.max() <= 1 and not np.array_equal(g1[0], g1[1])  # annotators differ
    r = bench_boundaries(folder=tmp_path / "bsds", images=2, check=1, thresholds=5, workers=1)
    assert r["images"] == 2 and r["check"]["identical"] and r["check"]["twin"] == r["check"]["fast"]
    text = format_boundaries_bench(r)
    assert "identical counts and scores: yes" in text and "EXTRAPOLATED from 1 images to 2" in text
    again = bench_boundaries(folder=tmp_path / "bsds", images=2, check=0, thresholds=5, workers=1)  # folder reused
    assert again["full"]["scores"] == r["full"]["scores"] and "check" not in again
    args = parse_args(["bench", "boundaries", "--gt", str(tmp_path), "--check", "3"])
    assert args.check == 3 and args.pred is None
    with pytest.raises(InputError, match="both --gt and --pred"):
        bench_boundaries(gt_dir=tmp_path, pred_dir=None)
