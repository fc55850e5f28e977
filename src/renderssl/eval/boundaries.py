"""BSDS500 boundary benchmark (Arbelaez et al. 2011) for any folder of soft edge maps.

Everything is numpy/scipy on the CPU. The protocol, stated precisely:

Ground truth
    One ``<stem>.mat`` per image holding ``groundTruth``, a 1 x k cell array (one cell per human
    annotator) of structs with fields ``Segmentation`` (uint16 labels from 1) and ``Boundaries``
    (logical). Only ``Boundaries`` is used for scoring; when a struct has no ``Boundaries`` it is
    derived from ``Segmentation`` with :func:`segmentation_boundaries`. :func:`write_bsds_ground_truth`
    writes the same layout (``Boundaries`` as uint8 0/1: scipy's ``savemat`` has no logical class;
    the benchmark converts it with ``double`` anyway).

Thresholds
    ``thresholds=n`` gives the benchmark's n levels ``linspace(1/(n+1), 1 - 1/(n+1), n)`` (n = 99);
    a pixel is on at level t when ``pred >= t``. Each binary map is thinned to one-pixel-wide lines
    with :func:`thin_edges` (the benchmark's default, ``bwmorph(.., 'thin', inf)``) before matching.

Matching (:func:`match_boundaries`)
    A predicted and a ground-truth pixel may correspond when their Euclidean distance is <= max_dist
    times the image diagonal (max_dist = 0.0075). Correspondences are one-to-one. The benchmark solves
    a min-cost assignment (cost = distance, a large outlier cost for unmatched pixels); because the
    outlier cost dominates, its optimum has the largest possible number of matched pairs, which is
    what a maximum-cardinality bipartite matching on the sparse graph of pairs within tolerance
    returns. Counts are therefore those of an exact optimum; which pixels pair up may differ, and the
    benchmark's own solver approximates the optimum on a sparsified graph, so its counts can differ
    from an exact optimum by a few pixels.

    Two solvers (``method``) that return the SAME matching, pixel for pixel: ``"scipy"`` is the slow
    readable twin (:func:`match_boundaries_scipy`: the pair graph built with numpy, one
    ``scipy.sparse.csgraph.maximum_bipartite_matching`` call); ``"compiled"`` is
    ``csrc/boundary_match.cpp`` (built on first use with ``torch.utils.cpp_extension``, cached by torch).
    The same matching, not only the same size, is needed because precision pools the annotators'
    matched predicted pixels (``cntP`` below): two maximum matchings of equal size can pool to
    different unions (an independent Hopcroft-Karp changed cntP by one pixel on 2 of 99 levels of a
    stand-in image). So the compiled matcher is scipy's own algorithm (its ``_hopcroft_karp``: empty
    start, BFS layers, a stack search from each free row in index order, children popped last-pushed
    first) on the same graph in the same vertex and edge order, with two changes that provably keep
    its result and remove its slow cases: a vertex whose search failed is not searched again in that
    phase (scipy re-searches it once per path reaching it: exponential in the depth on dense layered
    graphs; one scipy call on a 321 x 481 pair of random half-full masks ran > 5 minutes), and the
    graph's connected components are solved one after another (the proofs are in the C++ source). The
    tests compare both matchings pixel for pixel on random and adversarial graphs, the counts against
    an independent min-cost assignment, and the scores of both paths. ``"auto"`` (the default) is
    ``"compiled"`` when it builds, else ``"scipy"`` with a warning once. Each level's matchings against
    all annotators are one C++ call (:func:`image_counts`).

Counts per image and level
    Each annotator is matched separately against the same thinned prediction.
    ``cntP`` = predicted pixels matched to at least one annotator (the union of the matches),
    ``sumP`` = predicted pixels; ``cntR`` = sum over annotators of their matched pixels,
    ``sumR`` = sum over annotators of their boundary pixels. P = cntP / sumP and R = cntR / sumR,
    with 0 when the denominator is 0; F = 2PR / (P + R), 0 when P + R = 0.

Scores
    ODS: counts summed over all images per level give the dataset PR curve; ODS F is its best F,
    searched like the benchmark on the piecewise-linear curve (100 points between consecutive
    levels; ``ods_f_at_level`` is the best F at one of the levels themselves).
    OIS: per image the level of best F (the highest such level on ties); the counts at those levels
    are summed over images and give one P, R and F.
    AP: as the benchmark: keep one point per distinct recall, interpolate precision linearly at
    recall 0, 0.01, ..., 1 inside the recall range reached (0 outside), and sum times 0.01. A map that
    reaches a single recall (e.g. a binary map) gets AP 0, as in the benchmark.

Thinning and suppression
    :func:`thin_edges` is parallel morphological thinning after Guo & Hall (the two-subiteration
    algorithm in Lam, Lee & Suen 1992 that ``bwmorph('thin')`` cites), written as two 256-entry
    lookup tables over the 8-neighbourhood code and applied to the whole image until nothing changes;
    it keeps 8-connectivity and line ends, and pixel-identity with MATLAB is not claimed. The compiled
    module holds a twin (same tables, same parallel update, each map iterated until it stops changing:
    a map that one whole iteration leaves unchanged stays unchanged, so this equals the batched numpy
    loop's stop on the total) that re-evaluates only the on-neighbours of deleted pixels (a kept
    pixel's decision depends on its 8-neighbour code alone); ``method`` as for matching.
    :func:`suppress_non_maxima` is an optional step for thick soft maps (off by default; the
    benchmark does not apply it): keep a pixel when it is >= both bilinear samples one pixel away
    across the ridge, the across direction being the Hessian eigenvector of largest-magnitude eigenvalue
    of the Gaussian-smoothed map (sigma 1).

Parallelism
    Images are independent: ``workers`` processes (``concurrent.futures.ProcessPoolExecutor``, one image
    per task; spawned, as a child forked after OpenMP threads ran can hang) count them. ``workers=None``
    is the usable cores (affinity, cgroup quota; :mod:`renderssl.threads`), at most one per image: the
    default of :func:`evaluate_folder` (a test set) and ``renderssl bench boundaries``;
    :func:`evaluate_boundaries` defaults to 1 (a few frames do not pay for spawning). Results are
    identical for any ``workers``.

Files (:func:`evaluate_folder`)
    Predictions are PNGs (8-bit divided by 255, 16-bit by 65535; colour converted to luminance),
    white = edge, paired with ground truth by file stem.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from scipy import ndimage
from scipy.io import loadmat, savemat
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from ..errors import InputError
from ..compiled import load_extension

MAX_DIST = 0.0075  # tolerance as a fraction of the image diagonal
NUM_THRESHOLDS = 99
METHODS = ("auto", "compiled", "scipy")
SOURCE = Path(__file__).parent / "csrc" / "boundary_match.cpp"


@functools.lru_cache(maxsize=1)
def compiled_module():
    """The compiled matcher / thinning module, or None (with a warning, once) when it cannot be built."""
    return load_extension("boundary_match", SOURCE, "boundary matcher",
                          "scipy's maximum_bipartite_matching (slow on dense maps)", isa=False)


def _use_compiled(method: str, what: str) -> bool:
    if method not in METHODS:
        raise InputError(f"{what}: method must be one of {METHODS}, got {method!r}")
    if method == "scipy":
        return False
    if compiled_module() is None:
        if method == "compiled":
            raise InputError(f"{what}: method='compiled' but the compiled module could not be built (see the warning)")
        return False
    return True


def usable_cores() -> int:
    """Whole cores this process may use (affinity, capped by a cgroup CPU quota), at least 1."""
    from ..threads import usable_cores as cores

    return max(1, math.floor(cores()))


# ---------------------------------------------------------------------------------------------------
# Ground-truth files
# ---------------------------------------------------------------------------------------------------


def segmentation_boundaries(segmentation: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W) bool: label differs from the right, lower or lower-right neighbour."""
    s = np.asarray(segmentation)
    b = np.zeros(s.shape, dtype=bool)
    b[:, :-1] |= s[:, :-1] != s[:, 1:]
    b[:-1, :] |= s[:-1, :] != s[1:, :]
    b[:-1, :-1] |= s[:-1, :-1] != s[1:, 1:]
    return b


def _unwrap(x):
    """Strip the size-1 object arrays that MATLAB cells and structs become in scipy."""
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.reshape(-1)[0]
    return x


def _annotator_records(gt, path: Path) -> list:
    """The per-annotator struct records of a ``groundTruth`` cell (or struct) array."""
    arr = np.asarray(gt)
    if arr.dtype.names is not None:  # a struct array instead of a cell array
        return list(arr.reshape(-1))
    if arr.dtype != object or arr.size == 0:
        raise InputError(f"{path}: 'groundTruth' must be a non-empty cell array of structs, got dtype {arr.dtype}, shape {arr.shape}")
    records = []
    for cell in arr.reshape(-1):
        rec = np.asarray(_unwrap(cell))
        if rec.dtype.names is None or rec.size != 1:
            raise InputError(f"{path}: every 'groundTruth' cell must hold one struct with a 'Boundaries' field")
        records.append(rec.reshape(-1)[0])
    return records


def _record_boundaries(rec, path: Path, i: int) -> np.ndarray:
    names = rec.dtype.names
    if "Boundaries" in names:
        b = np.asarray(_unwrap(rec["Boundaries"]))
    elif "Segmentation" in names:
        b = segmentation_boundaries(np.asarray(_unwrap(rec["Segmentation"])))
    else:
        raise InputError(f"{path}: annotator {i + 1} has neither 'Boundaries' nor 'Segmentation' (fields: {names})")
    if b.ndim != 2 or b.size == 0:
        raise InputError(f"{path}: annotator {i + 1} boundaries must be a 2-D array, got shape {b.shape}")
    return b.astype(bool)


def read_bsds_ground_truth(mat_path) -> list[np.ndarray]:
    """A BSDS500 ``groundTruth`` .mat file -> one (H, W) bool boundary map per annotator."""
    path = Path(mat_path)
    if not path.is_file():
        raise InputError(f"{path}: ground-truth file not found")
    try:
        data = loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5)
        raise InputError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with -v7 ({e})") from e
    except Exception as e:  # scipy raises several types on corrupt files
        raise InputError(f"{path}: not a readable MATLAB .mat file ({type(e).__name__}: {e})") from e
    if "groundTruth" not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise InputError(f"{path}: no 'groundTruth' variable (found {keys})")
    maps = [_record_boundaries(r, path, i) for i, r in enumerate(_annotator_records(data["groundTruth"], path))]
    if len({m.shape for m in maps}) != 1:
        raise InputError(f"{path}: annotators disagree on the image size: {[m.shape for m in maps]}")
    return maps


def _labels_from_boundaries(boundaries: np.ndarray) -> np.ndarray:
    """Segmentation whose regions are the 4-connected non-boundary components (labels from 1);
    boundary pixels take the label of the nearest region pixel."""
    labels, n = ndimage.label(~boundaries)
    if n == 0:
        return np.ones(boundaries.shape, dtype=np.uint16)
    _, (ii, jj) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    return labels[ii, jj].astype(np.uint16)


def write_bsds_ground_truth(path, boundaries_list: Sequence | None = None, segmentations: Sequence | None = None) -> Path:
    """Write a BSDS500-format ``groundTruth`` .mat (one cell per annotator).

    Give boundaries (H, W) bool, segmentations (H, W) int labels, or both. Missing boundaries are
    derived with :func:`segmentation_boundaries` (e.g. from synthetic instance maps); missing
    segmentations are the connected regions between boundaries.
    """
    if boundaries_list is None and segmentations is None:
        raise InputError(f"write_bsds_ground_truth({path}): give boundaries_list or segmentations")
    if boundaries_list is not None and segmentations is not None and len(boundaries_list) != len(segmentations):
        raise InputError(f"write_bsds_ground_truth({path}): {len(boundaries_list)} boundary maps but {len(segmentations)} segmentations")
    n = len(boundaries_list if boundaries_list is not None else segmentations)
    if n == 0:
        raise InputError(f"write_bsds_ground_truth({path}): need at least one annotator")
    cell = np.empty((1, n), dtype=object)
    for i in range(n):
        seg = None if segmentations is None else np.asarray(segmentations[i])
        bnd = segmentation_boundaries(seg) if boundaries_list is None else np.asarray(boundaries_list[i]).astype(bool)
        if bnd.ndim != 2 or (seg is not None and seg.shape != bnd.shape):
            raise InputError(f"write_bsds_ground_truth({path}): annotator {i + 1} needs 2-D maps of one size")
        seg = _labels_from_boundaries(bnd) if seg is None else seg.astype(np.uint16)
        cell[0, i] = {"Segmentation": seg, "Boundaries": bnd}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"groundTruth": cell}, do_compression=True)
    return path


# ---------------------------------------------------------------------------------------------------
# Thinning and non-maximum suppression
# ---------------------------------------------------------------------------------------------------


def _thinning_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables over the 8-neighbour code sum_k x_k 2^(k-1), x1 = E, then counter-clockwise
    (x2 = NE, x3 = N, x4 = NW, x5 = W, x6 = SW, x7 = S, x8 = SE)."""
    code = np.arange(256)
    x = [None] + [((code >> (k - 1)) & 1).astype(bool) for k in range(1, 9)] + [None]
    x[9] = x[1]  # cyclic
    crossings = sum((~x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1]) for i in range(1, 5))  # X_H
    n1 = sum((x[2 * k - 1] | x[2 * k]).astype(int) for k in range(1, 5))
    n2 = sum((x[2 * k] | x[2 * k + 1]).astype(int) for k in range(1, 5))
    g12 = (crossings == 1) & (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    g3 = ~((x[2] | x[3] | ~x[8]) & x[1])  # first subiteration: (x2 | x3 | ~x8) & x1 == 0
    g3p = ~((x[6] | x[7] | ~x[4]) & x[5])  # second subiteration: (x6 | x7 | ~x4) & x5 == 0
    return g12 & g3, g12 & g3p


_LUT_FIRST, _LUT_SECOND = _thinning_luts()
_LUT_FIRST_U8, _LUT_SECOND_U8 = _LUT_FIRST.astype(np.uint8), _LUT_SECOND.astype(np.uint8)  # for the C++ twin


def _neighbour_code(mask: np.ndarray) -> np.ndarray:
    """(..., H, W) bool -> (..., H, W) uint8 neighbour code (outside the image = 0)."""
    p = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
    H, W = mask.shape[-2:]

    def at(di: int, dj: int) -> np.ndarray:  # neighbour at row offset di, column offset dj
        return p[..., 1 + di : 1 + di + H, 1 + dj : 1 + dj + W].astype(np.uint8)

    offsets = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]  # E NE N NW W SW S SE
    code = np.zeros(mask.shape, dtype=np.uint8)
    for k, (di, dj) in enumerate(offsets):
        code |= at(di, dj) << k
    return code


def thin_edges(mask, max_iter: int | None = None, method: str = "auto") -> np.ndarray:
    """Morphological thinning of (..., H, W) boolean edge maps to one-pixel-wide lines.

    ``method``: "compiled" (C++ twin, only without ``max_iter``), "scipy" (this numpy loop), "auto"."""
    m = np.asarray(mask).astype(bool)
    if m.ndim < 2:
        raise InputError(f"thin_edges: mask must be (..., H, W), got shape {m.shape}")
    if max_iter is None and _use_compiled(method, "thin_edges"):
        import torch

        flat = torch.from_numpy(np.ascontiguousarray(m.reshape(-1, *m.shape[-2:]), dtype=np.uint8))  # (N, H, W)
        out = compiled_module().thin(flat, torch.from_numpy(_LUT_FIRST_U8), torch.from_numpy(_LUT_SECOND_U8))
        return out.numpy().astype(bool).reshape(m.shape)
    return thin_edges_numpy(m, max_iter)


def thin_edges_numpy(mask, max_iter: int | None = None) -> np.ndarray:
    """The readable twin of the compiled thinning: numpy over the whole (..., H, W) stack per subiteration."""
    out = np.asarray(mask).astype(bool).copy()
    it = 0
    while max_iter is None or it < max_iter:
        before = int(out.sum())
        for lut in (_LUT_FIRST, _LUT_SECOND):
            out &= ~lut[_neighbour_code(out)]
        it += 1
        if int(out.sum()) == before:
            break
    return out


def suppress_non_maxima(edge_map, sigma: float = 1.0) -> np.ndarray:
    """Zero the pixels of a soft (H, W) edge map that are not ridge maxima across the ridge."""
    e = np.asarray(edge_map, dtype=np.float64)
    hxx = ndimage.gaussian_filter(e, sigma, order=(0, 2))  # d2/dx2 (columns)
    hyy = ndimage.gaussian_filter(e, sigma, order=(2, 0))
    hxy = ndimage.gaussian_filter(e, sigma, order=(1, 1))
    # Curvature along angle t is c(t) = m + a cos 2t + b sin 2t with m = (hxx + hyy)/2,
    # a = (hxx - hyy)/2, b = hxy: extremes m +- rho (rho = |(a, b)|) at t0 = atan2(b, a)/2 and t0 + pi/2.
    # Across a ridge the curvature has the larger magnitude (also on its convex flanks).
    m, rho = 0.5 * (hxx + hyy), np.hypot(0.5 * (hxx - hyy), hxy)
    theta = 0.5 * np.arctan2(hxy, 0.5 * (hxx - hyy))
    theta = np.where(np.abs(m + rho) >= np.abs(m - rho), theta, theta + 0.5 * np.pi)
    dx, dy = np.cos(theta), np.sin(theta)
    ii, jj = np.indices(e.shape, dtype=np.float64)
    fwd = ndimage.map_coordinates(e, [ii + dy, jj + dx], order=1, mode="nearest")
    bwd = ndimage.map_coordinates(e, [ii - dy, jj - dx], order=1, mode="nearest")
    return np.where((e >= fwd) & (e >= bwd), e, 0.0)


# ---------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------


class BoundaryMatch(NamedTuple):
    pred_matched: np.ndarray  # (H, W) bool: predicted pixels with a ground-truth partner
    gt_matched: np.ndarray  # (H, W) bool: ground-truth pixels with a predicted partner

    @property
    def count(self) -> int:
        """Number of matched pairs."""
        return int(self.pred_matched.sum())


def tolerance_pixels(shape, max_dist: float = MAX_DIST) -> float:
    """The matching radius in pixels: max_dist times the diagonal of an (H, W) image."""
    H, W = shape[-2:]
    return max_dist * math.hypot(H, W)


def _disc_offsets(radius: float) -> np.ndarray:
    """(K, 2) integer offsets (di, dj) with di^2 + dj^2 <= radius^2."""
    r = int(math.floor(radius))
    di, dj = np.mgrid[-r : r + 1, -r : r + 1]
    keep = di**2 + dj**2 <= radius**2 + 1e-9
    return np.stack([di[keep], dj[keep]], axis=-1)


def match_boundaries(pred, gt, max_dist: float = MAX_DIST, method: str = "auto") -> BoundaryMatch:
    """One-to-one correspondence of boundary pixels within ``max_dist`` x the diagonal (see module doc).

    pred, gt: (H, W) bool. Returns the matched pixels of each side of a maximum matching; ``.count``
    pairs. ``method``: "compiled" (scipy's algorithm in C++, the same matching), "scipy" (the readable twin), "auto".
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise InputError(f"match_boundaries: prediction {pred.shape} and ground truth {gt.shape} must be (H, W) of one size")
    if not _use_compiled(method, "match_boundaries"):
        return match_boundaries_scipy(pred, gt, max_dist)
    import torch

    offsets = torch.from_numpy(_disc_offsets(tolerance_pixels(gt.shape, max_dist)).astype(np.int64))  # (K, 2)
    pm, gm = compiled_module().match_pixels(
        torch.from_numpy(np.ascontiguousarray(pred, dtype=np.uint8)), torch.from_numpy(np.ascontiguousarray(gt, dtype=np.uint8)), offsets
    )  # (H, W) uint8 each
    return BoundaryMatch(pm.numpy().view(bool), gm.numpy().view(bool))


def match_boundaries_scipy(pred, gt, max_dist: float = MAX_DIST) -> BoundaryMatch:
    """The slow readable twin of the compiled matcher: the pair graph built with numpy, one
    ``scipy.sparse.csgraph.maximum_bipartite_matching`` call. Same arguments and result."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise InputError(f"match_boundaries: prediction {pred.shape} and ground truth {gt.shape} must be (H, W) of one size")
    H, W = gt.shape
    gt_index = np.full(gt.shape, -1, dtype=np.int64)
    gt_index[gt] = np.arange(int(gt.sum()))
    pi, pj = np.nonzero(pred)  # (n_p,)
    rows, cols = [], []
    for di, dj in _disc_offsets(tolerance_pixels(gt.shape, max_dist)):
        qi, qj = pi + di, pj + dj
        inside = (qi >= 0) & (qi < H) & (qj >= 0) & (qj < W)
        idx = np.full(pi.shape, -1, dtype=np.int64)
        idx[inside] = gt_index[qi[inside], qj[inside]]
        hit = idx >= 0
        rows.append(np.nonzero(hit)[0])
        cols.append(idx[hit])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    n_p, n_g = pi.size, int(gt.sum())
    pred_matched, gt_matched = np.zeros_like(pred), np.zeros_like(gt)
    if rows.size == 0:
        return BoundaryMatch(pred_matched, gt_matched)
    graph = csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n_p, n_g))
    partner = maximum_bipartite_matching(graph, perm_type="column")  # (n_p,) gt index or -1
    ok = partner >= 0
    pred_matched[pi[ok], pj[ok]] = True
    gi, gj = np.nonzero(gt)
    gt_matched[gi[partner[ok]], gj[partner[ok]]] = True
    return BoundaryMatch(pred_matched, gt_matched)


# ---------------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------------


def threshold_levels(thresholds: int | Sequence[float] = NUM_THRESHOLDS) -> np.ndarray:
    """The benchmark's levels: an int n gives linspace(1/(n+1), 1 - 1/(n+1), n)."""
    if isinstance(thresholds, (int, np.integer)):
        n = int(thresholds)
        if n < 1:
            raise InputError(f"evaluate_boundaries: thresholds must be >= 1, got {n}")
        return np.linspace(1.0 / (n + 1), 1.0 - 1.0 / (n + 1), n)
    levels = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if levels.size == 0 or np.any(np.diff(levels) <= 0):
        raise InputError("evaluate_boundaries: explicit thresholds must be a non-empty increasing sequence")
    return levels


def image_counts(pred, gts: Sequence, levels: np.ndarray, max_dist: float = MAX_DIST, thin: bool = True,
                 method: str = "auto") -> np.ndarray:
    """(T, 4) counts [cntR, sumR, cntP, sumP] of one image at each level (see module doc).

    Levels that switch on the same set of pixels share one evaluation. ``method`` picks the matcher and
    the thinning ("compiled", "scipy" = the readable twins, "auto").
    """
    sorted_vals = np.sort(pred.reshape(-1))
    n_on = sorted_vals.size - np.searchsorted(sorted_vals, levels, side="left")  # pixels >= level
    sum_r = float(sum(int(g.sum()) for g in gts))
    cache: dict[int, np.ndarray] = {}
    out = np.zeros((len(levels), 4))
    if _use_compiled(method, "image_counts"):  # the same steps, each level's thinning and matchings in C++
        import torch

        mod = compiled_module()
        gts_u8 = torch.from_numpy(np.ascontiguousarray(np.stack([np.asarray(g, dtype=bool) for g in gts]), dtype=np.uint8))  # (A, H, W)
        offsets = torch.from_numpy(_disc_offsets(tolerance_pixels(pred.shape, max_dist)).astype(np.int64))  # (K, 2)
        luts = torch.from_numpy(_LUT_FIRST_U8), torch.from_numpy(_LUT_SECOND_U8)
        for t, level in enumerate(levels):
            key = int(n_on[t])
            if key not in cache:
                bmap = torch.from_numpy(np.ascontiguousarray(pred >= level, dtype=np.uint8))  # (H, W)
                if thin:
                    bmap = mod.thin(bmap[None], *luts)[0]
                cnt_r, cnt_p, sum_p = mod.level_counts(bmap, gts_u8, offsets)
                cache[key] = np.array([cnt_r, sum_r, cnt_p, sum_p], dtype=np.float64)
            out[t] = cache[key]
        return out
    for t, level in enumerate(levels):
        key = int(n_on[t])
        if key not in cache:
            bmap = pred >= level
            if thin:
                bmap = thin_edges(bmap, method=method)
            union = np.zeros_like(bmap)
            cnt_r = 0
            for g in gts:
                m = match_boundaries(bmap, g, max_dist, method=method)
                union |= m.pred_matched
                cnt_r += int(m.gt_matched.sum())
            cache[key] = np.array([cnt_r, sum_r, int(union.sum()), int(bmap.sum())], dtype=np.float64)
        out[t] = cache[key]
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num / np.where(den == 0, 1.0, den)


def _f_measure(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    s = p + r
    return 2 * p * r / np.where(s == 0, 1.0, s)


def _pr(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., 4) counts -> precision, recall, F (...)."""
    r = _ratio(counts[..., 0], counts[..., 1])
    p = _ratio(counts[..., 2], counts[..., 3])
    return p, r, _f_measure(p, r)


def _best_interpolated(levels: np.ndarray, p: np.ndarray, r: np.ndarray) -> tuple[float, float, float, float]:
    """Best F on the piecewise-linear (threshold, P, R) curve, 100 points per segment:
    (threshold, precision, recall, F)."""
    if levels.size == 1:
        f = _f_measure(p, r)
        return float(levels[0]), float(p[0]), float(r[0]), float(f[0])
    d = np.linspace(0.0, 1.0, 100)[None]  # (1, 100)
    seg = lambda v: v[:-1, None] * (1 - d) + v[1:, None] * d  # (T-1, 100)
    tt, pp, rr = seg(levels), seg(p), seg(r)
    ff = _f_measure(pp, rr)
    k = np.unravel_index(np.argmax(ff), ff.shape)
    return float(tt[k]), float(pp[k]), float(rr[k]), float(ff[k])


def _average_precision(p: np.ndarray, r: np.ndarray) -> float:
    """The benchmark's AP: precision at recall 0:0.01:1 by linear interpolation, 0 outside."""
    r_unique, first = np.unique(r, return_index=True)
    if r_unique.size < 2:
        return 0.0
    grid = np.linspace(0.0, 1.0, 101)
    inside = (grid >= r_unique[0]) & (grid <= r_unique[-1])
    return float(np.interp(grid[inside], r_unique, p[first]).sum() * 0.01)


def _as_map(x, what: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    a = a.reshape(a.shape[-2:]) if a.ndim == 3 and a.shape[0] == 1 else a
    if a.ndim != 2:
        raise InputError(f"{what}: expected an (H, W) edge map, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or a.min(initial=0) < 0 or a.max(initial=0) > 1:
        raise InputError(f"{what}: edge strengths must be finite and in [0, 1]")
    return a


def evaluate_boundaries(
    pred_maps: Sequence,
    gt_lists: Sequence[Sequence],
    thresholds: int | Sequence[float] = NUM_THRESHOLDS,
    max_dist: float = MAX_DIST,
    thin: bool = True,
    names: Sequence[str] | None = None,
    workers: int | None = 1,
    method: str = "auto",
) -> dict:
    """BSDS boundary scores of soft edge maps (H, W) in [0, 1] against per-image annotator lists.

    Returns ``ods``, ``ois``, ``ap`` (F, F, AP), the ODS/OIS precision, recall and threshold, the
    dataset PR curve (``thresholds``, ``precision``, ``recall``, ``f``), ``ods_f_at_level``, the
    per-image ``counts`` (I, T, 4) = [cntR, sumR, cntP, sumP] and ``workers`` (the processes used).
    ``workers`` processes count images (None = the usable cores; results are identical for any
    count); ``method`` picks the matcher and thinning ("auto", "compiled", "scipy").
    """
    if method not in METHODS:
        raise InputError(f"evaluate_boundaries: method must be one of {METHODS}, got {method!r}")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise InputError(f"evaluate_boundaries: workers must be an int >= 1 or None, got {workers!r}")
    if len(pred_maps) != len(gt_lists) or len(pred_maps) == 0:
        raise InputError(f"evaluate_boundaries: need one ground-truth list per prediction, got {len(pred_maps)} and {len(gt_lists)}")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(pred_maps))]
    levels = threshold_levels(thresholds)
    maps, gt_maps = [], []
    for pred, gts, name in zip(pred_maps, gt_lists, names):
        pred = _as_map(pred, name)
        gts = [np.asarray(g, dtype=bool) for g in gts]
        if not gts or any(g.shape != pred.shape for g in gts):
            raise InputError(f"{name}: prediction {pred.shape} needs >= 1 ground-truth map of the same size, got {[g.shape for g in gts]}")
        maps.append(pred)
        gt_maps.append(gts)
    n = len(maps)
    workers = min(usable_cores() if workers is None else int(workers), n)
    if method == "auto":  # decide (and build) once here, not in every worker
        method = "compiled" if _use_compiled("auto", "evaluate_boundaries") else "scipy"
    args = (maps, gt_maps, [levels] * n, [max_dist] * n, [thin] * n, [method] * n)
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawned, not forked: a child forked from a process whose OpenMP threads have run can hang for good
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            counts = list(pool.map(image_counts, *args))
    else:
        counts = list(map(image_counts, *args))
    counts = np.stack(counts)  # (I, T, 4)
    result = _scores(counts, levels)
    result["workers"] = workers
    return result


def _scores(counts: np.ndarray, levels: np.ndarray) -> dict:
    """ODS / OIS / AP from per-image counts (I, T, 4)."""
    p, r, f = _pr(counts.sum(axis=0))  # dataset curve (T,)
    ods_t, ods_p, ods_r, ods_f = _best_interpolated(levels, p, r)
    _, _, f_img = _pr(counts)  # (I, T)
    best = f_img.shape[1] - 1 - np.argmax(f_img[:, ::-1], axis=1)  # highest level among ties
    ois_counts = counts[np.arange(counts.shape[0]), best].sum(axis=0)  # (4,)
    ois_p, ois_r, ois_f = _pr(ois_counts)
    return {
        "ods": ods_f, "ods_precision": ods_p, "ods_recall": ods_r, "ods_threshold": ods_t,
        "ods_f_at_level": float(f.max()),
        "ois": float(ois_f), "ois_precision": float(ois_p), "ois_recall": float(ois_r),
        "ap": _average_precision(p, r),
        "thresholds": levels, "precision": p, "recall": r, "f": f, "counts": counts,
    }


# ---------------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------------


def read_edge_png(path) -> np.ndarray:
    """A PNG edge map -> (H, W) float64 in [0, 1] (white = edge)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64) / 65535.0
            else:
                a = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except Exception as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return np.clip(a, 0.0, 1.0)


def _by_stem(folder: Path, suffix: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() == suffix}


def evaluate_folder(
    pred_dir,
    gt_dir,
    thresholds: int | Sequence[float] = NUM_THRESHOLDS,
    max_dist: float = MAX_DIST,
    thin: bool = True,
    workers: int | None = None,
    method: str = "auto",
    limit: int | None = None,
) -> dict:
    """Evaluate ``pred_dir/<stem>.png`` against ``gt_dir/<stem>.mat`` for every stem (see module doc).

    ``workers`` and ``method`` as in :func:`evaluate_boundaries`; ``limit`` evaluates the first
    ``limit`` stems (sorted) only.

    Every prediction needs a ground truth and vice versa; the result adds ``names`` (stems, in order).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds, gts = _by_stem(pred_dir, ".png"), _by_stem(gt_dir, ".mat")
    only_pred, only_gt = sorted(set(preds) - set(gts)), sorted(set(gts) - set(preds))
    if only_pred or only_gt:
        raise InputError(
            f"evaluate_folder: unpaired files: {len(only_pred)} prediction(s) in {pred_dir} without a .mat "
            f"in {gt_dir} {only_pred[:5]}, {len(only_gt)} ground truth(s) without a .png {only_gt[:5]}"
        )
    if not preds:
        raise InputError(f"evaluate_folder: no .png predictions in {pred_dir}")
    stems = sorted(preds)
    if limit is not None:
        if limit < 1:
            raise InputError(f"evaluate_folder: limit must be >= 1, got {limit}")
        stems = stems[:limit]
    pred_maps = [read_edge_png(preds[s]) for s in stems]
    gt_lists = [read_bsds_ground_truth(gts[s]) for s in stems]
    for s, pm, gl in zip(stems, pred_maps, gt_lists):
        if pm.shape != gl[0].shape:
            raise InputError(f"{preds[s]}: size {pm.shape} differs from its ground truth {gts[s]} {gl[0].shape}")
    result = evaluate_boundaries(
        pred_maps, gt_lists, thresholds, max_dist, thin, names=[str(preds[s]) for s in stems], workers=workers,
        method=method,
    )
    result["names"] = stems
    return result
