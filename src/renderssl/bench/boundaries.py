"""``renderssl bench boundaries``: wall time of the BSDS500 boundary benchmark, and its exactness check.

What it does, in order:

1. Data. ``--gt DIR --pred DIR`` evaluate a real copy (``<stem>.mat`` ground truth, ``<stem>.png``
   edge maps). Without them a seeded stand-in of the BSDS500 test set is written once to a folder
   (default ``$TMPDIR/renderssl_bench_bsds``) by :func:`make_stand_in`: 200 images of 481 x 321 (the
   landscape BSDS size), each with

   - one underlying segmentation: ~12-30 regions, a Voronoi diagram of random sites whose distance is
     warped by a smooth random displacement field (curved boundaries, junctions of three);
   - 5 annotators, each the underlying segmentation warped again by its own small smooth displacement
     (up to ~1.5 px: humans trace the same contour a little differently), with some region pairs merged
     (annotators differ in granularity: 0-35% of the internal boundaries dropped), boundaries by
     :func:`renderssl.eval.boundaries.segmentation_boundaries`;
   - a soft edge map resembling a learned detector's: the underlying boundaries blurred (exp(-d^2 /
     2 sigma^2), sigma 1.5-2.5 px) with a strength per region pair (some edges weak or missing), plus
     extra edges (random smooth curves, not in any annotation), plus texture noise (smoothed noise
     whose magnitude varies over the image, so some regions are "textured"), clipped to [0, 1] and
     stored as an 8-bit PNG.

   Our choice: every random draw comes from ``numpy.random.default_rng([seed, image])``, so the
   folder is a pure function of the seed and the image count.

2. Timing. ``evaluate_folder`` over all images with the fast matcher and ``workers`` processes
   (default: the usable cores), wall time including reading the files.

3. Check. ``--check N`` images (the first N stems) are evaluated with the slow readable twin
   (scipy's ``maximum_bipartite_matching`` on the whole pair graph, one process) and with the fast
   path; both ODS/OIS/AP are printed and the per-image counts must be identical (else the bench fails).
   The twin's wall time on those N images, extrapolated linearly to the whole set, is printed as the
   "before" figure (stated as extrapolated), in the same run as the new figure.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

IMAGES = 200
SIZE = (321, 481)  # (H, W) landscape BSDS500
ANNOTATORS = 5


def _smooth_field(rng: np.random.Generator, shape, sigma: float, amplitude: float) -> np.ndarray:
    """(H, W) smooth random field with max |value| = amplitude."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)  # (H, W)
    return f * (amplitude / max(float(np.abs(f).max()), 1e-12))


def _warp(labels: np.ndarray, rng: np.random.Generator, amplitude: float, sigma: float) -> np.ndarray:
    """Labels resampled (nearest) through a smooth random displacement of up to ``amplitude`` px."""
    H, W = labels.shape
    ii, jj = np.indices((H, W), dtype=np.float64)
    di, dj = _smooth_field(rng, (H, W), sigma, amplitude), _smooth_field(rng, (H, W), sigma, amplitude)
    qi = np.clip(np.rint(ii + di), 0, H - 1).astype(np.int64)
    qj = np.clip(np.rint(jj + dj), 0, W - 1).astype(np.int64)
    return labels[qi, qj]  # (H, W)


def stand_in_image(seed: int, index: int, size=SIZE, annotators: int = ANNOTATORS):
    """One stand-in image: (edge map (H, W) float in [0, 1], list of (H, W) bool annotator boundaries)."""
    from ..eval.boundaries import segmentation_boundaries

    rng = np.random.default_rng([seed, index])
    H, W = size
    n_regions = int(rng.integers(12, 31))
    sites = rng.uniform([0, 0], [H, W], (n_regions, 2))  # (R, 2)
    ii, jj = np.indices((H, W), dtype=np.float64)
    wi, wj = ii + _smooth_field(rng, (H, W), 25, 18), jj + _smooth_field(rng, (H, W), 25, 18)  # warped coordinates
    d2 = (wi[None] - sites[:, 0, None, None]) ** 2 + (wj[None] - sites[:, 1, None, None]) ** 2  # (R, H, W)
    base = np.argmin(d2, axis=0).astype(np.int64) + 1  # (H, W) labels 1..R

    gts = []
    for _ in range(annotators):
        seg = _warp(base, rng, rng.uniform(0.6, 1.5), 12)
        merge = rng.uniform(0.0, 0.35)  # share of regions merged into a random other one
        lut = np.arange(n_regions + 1)
        for r in rng.permutation(np.arange(1, n_regions + 1))[: int(merge * n_regions)]:
            lut[r] = lut[int(rng.integers(1, n_regions + 1))]
        gts.append(segmentation_boundaries(lut[seg]))

    # The detector: blurred true boundaries with per-region-pair strength, extra curves, texture noise.
    boundary = segmentation_boundaries(base)
    dist, (ni, nj) = ndimage.distance_transform_edt(~boundary, return_indices=True)
    strength_of = rng.uniform(0.15, 1.0, n_regions + 1)
    strength_of[rng.random(n_regions + 1) < 0.15] = 0.05  # some edges nearly missing
    strength = ndimage.gaussian_filter(strength_of[base[ni, nj]], 2.0)  # (H, W) strength of the nearest boundary (smoothed: its two sides' regions alternate)
    sigma = rng.uniform(1.5, 2.5)
    edge = strength * np.exp(-(dist**2) / (2 * sigma**2))  # (H, W)
    for _ in range(int(rng.integers(2, 7))):  # extra edges: smooth random curves
        t = np.linspace(0, 1, 400)
        p0, v = rng.uniform([0, 0], [H, W]), rng.normal(0, 1, 2)
        ci = p0[0] + 150 * v[0] * t + 20 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6))
        cj = p0[1] + 150 * v[1] * t + 20 * np.cos(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6))
        ok = (ci >= 0) & (ci < H) & (cj >= 0) & (cj < W)
        curve = np.zeros((H, W), dtype=bool)
        curve[ci[ok].astype(int), cj[ok].astype(int)] = True
        edge = np.maximum(edge, rng.uniform(0.2, 0.7) * np.exp(-ndimage.distance_transform_edt(~curve) ** 2 / (2 * sigma**2)))
    texture = np.abs(ndimage.gaussian_filter(rng.standard_normal((H, W)), 1.0))  # (H, W) fine texture
    texture *= np.clip(_smooth_field(rng, (H, W), 40, 1.0) + 0.3, 0, None)  # textured and smooth areas
    edge = edge + 0.35 * texture / max(float(texture.max()), 1e-12)
    edge = np.clip(edge + rng.normal(0, 0.01, (H, W)), 0.0, 1.0)
    return edge, gts


def make_stand_in(folder, images: int = IMAGES, seed: int = 0, size=SIZE, annotators: int = ANNOTATORS):
    """Write (once) ``folder/gt/<stem>.mat`` and ``folder/pred/<stem>.png``; return (gt_dir, pred_dir).

    A folder already holding ``images`` pairs written with the same seed and size is reused."""
    from PIL import Image

    from ..eval.boundaries import write_bsds_ground_truth

    folder = Path(folder)
    gt_dir, pred_dir = folder / "gt", folder / "pred"
    stamp = folder / "stand_in.txt"
    tag = f"images={images} seed={seed} size={size[0]}x{size[1]} annotators={annotators}"
    if stamp.is_file() and stamp.read_text().strip() == tag:
        return gt_dir, pred_dir
    for d in (gt_dir, pred_dir):
        d.mkdir(parents=True, exist_ok=True)
        for p in d.iterdir():
            p.unlink()
    for i in range(images):
        edge, gts = stand_in_image(seed, i, size, annotators)
        stem = f"{100000 + i}"
        write_bsds_ground_truth(gt_dir / f"{stem}.mat", gts)
        Image.fromarray(np.rint(edge * 255).astype(np.uint8)).save(pred_dir / f"{stem}.png")
    stamp.write_text(tag + "\n")
    return gt_dir, pred_dir


def _scores(result: dict) -> tuple[float, float, float]:
    return float(result["ods"]), float(result["ois"]), float(result["ap"])


def bench_boundaries(gt_dir=None, pred_dir=None, folder=None, images: int = IMAGES, seed: int = 0,
                     workers: int | None = None, check: int = 20, thresholds: int = 99) -> dict:
    """Time the benchmark over a folder pair (a stand-in one when ``gt_dir``/``pred_dir`` are None) and
    check the fast path against the readable twin on the first ``check`` images (see module doc).

    Returns a dict of the figures :func:`format_boundaries_bench` prints. Raises AssertionError when the
    two paths' counts differ on the checked images."""
    from ..errors import InputError
    from ..eval.boundaries import compiled_module, evaluate_folder, usable_cores

    if (gt_dir is None) != (pred_dir is None):
        raise InputError("bench boundaries: give both --gt and --pred, or neither (a stand-in is made)")
    if check < 0 or images < 1:
        raise InputError(f"bench boundaries: --check must be >= 0 and --images >= 1, got {check} and {images}")
    out: dict = {"stand_in": gt_dir is None}
    if gt_dir is None:
        folder = Path(folder) if folder else Path(tempfile.gettempdir()) / "renderssl_bench_bsds"
        t0 = time.perf_counter()
        gt_dir, pred_dir = make_stand_in(folder, images=images, seed=seed)
        out["make_s"] = time.perf_counter() - t0
    out["gt_dir"], out["pred_dir"] = str(gt_dir), str(pred_dir)
    t0 = time.perf_counter()
    compiled = compiled_module() is not None  # build (or load the cached build) outside the timings
    out["compiled"], out["build_s"] = compiled, time.perf_counter() - t0
    method = "compiled" if compiled else "scipy"
    n_total = len([p for p in Path(pred_dir).iterdir() if p.suffix.lower() == ".png"])
    out["images"], out["usable_cores"] = n_total, usable_cores()

    if check:
        n = min(check, n_total)
        t0 = time.perf_counter()
        slow = evaluate_folder(pred_dir, gt_dir, thresholds=thresholds, workers=1, method="scipy", limit=n)
        t_slow = time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = evaluate_folder(pred_dir, gt_dir, thresholds=thresholds, workers=1, method=method, limit=n)
        t_fast = time.perf_counter() - t0
        identical = bool(np.array_equal(slow["counts"], fast["counts"])) and _scores(slow) == _scores(fast)
        out["check"] = {"images": n, "twin_s": t_slow, "fast_s": t_fast, "twin": _scores(slow), "fast": _scores(fast),
                        "identical": identical, "twin_extrapolated_s": t_slow * n_total / n}
    t0 = time.perf_counter()
    full = evaluate_folder(pred_dir, gt_dir, thresholds=thresholds, workers=workers, method=method)
    out["full"] = {"wall_s": time.perf_counter() - t0, "workers": full["workers"], "scores": _scores(full)}
    if check and not out["check"]["identical"]:
        raise AssertionError(f"bench boundaries: the fast path's counts differ from the twin's on {out['check']['images']} images: "
                             f"twin ODS/OIS/AP {out['check']['twin']}, fast {out['check']['fast']}")
    return out


def format_boundaries_bench(r: dict) -> str:
    """The figures of :func:`bench_boundaries`, one per line."""
    lines = []
    if r["stand_in"]:
        lines.append(f"data: stand-in BSDS500 test set ({r['images']} images, {SIZE[1]}x{SIZE[0]}, {ANNOTATORS} annotators) "
                     f"in {Path(r['gt_dir']).parent} (made/checked in {r['make_s']:.1f} s)")
    else:
        lines.append(f"data: {r['images']} images, ground truth {r['gt_dir']}, edge maps {r['pred_dir']}")
    lines.append(f"matcher: {'compiled (C++, scipy-identical Hopcroft-Karp)' if r['compiled'] else 'scipy fallback (no compiler)'}"
                 f"; module ready in {r['build_s']:.1f} s (not timed below); usable cores {r['usable_cores']}")
    c = r.get("check")
    if c:
        fmt = lambda s: f"ODS {s[0]:.6f}  OIS {s[1]:.6f}  AP {s[2]:.6f}"
        lines.append(f"check on {c['images']} images (1 process each):")
        lines.append(f"  twin (scipy matching, numpy thinning): {fmt(c['twin'])}  {c['twin_s']:.1f} s")
        lines.append(f"  fast (compiled):                       {fmt(c['fast'])}  {c['fast_s']:.1f} s  "
                     f"({c['twin_s'] / max(c['fast_s'], 1e-9):.1f}x faster, same process)")
        lines.append(f"  identical counts and scores: {'yes' if c['identical'] else 'NO'}")
    f = r["full"]
    s = f["scores"]
    lines.append(f"all {r['images']} images, fast path, {f['workers']} worker process(es): wall {f['wall_s']:.1f} s "
                 f"(ODS {s[0]:.4f}  OIS {s[1]:.4f}  AP {s[2]:.4f})")
    if c:
        lines.append(f"old path (twin, 1 process, today's default), EXTRAPOLATED from {c['images']} images to {r['images']}: "
                     f"{c['twin_extrapolated_s']:.0f} s -> new {f['wall_s']:.1f} s measured "
                     f"({c['twin_extrapolated_s'] / max(f['wall_s'], 1e-9):.1f}x)")
    return "\n".join(lines)
