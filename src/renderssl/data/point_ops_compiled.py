"""The compiled twins of PointNet++ sampling and grouping (``csrc/point_ops.cpp``).

Three kernels, each equal to its torch twin index for index (tests/test_point_ops_compiled.py):

- :func:`fps_compiled` = :func:`renderssl.data.points.farthest_point_sampling`: per cloud a C++ loop over
  the picks, each one pass over the cloud's points (x, y, z planes, the running min squared distance and
  lane-wise maxima in one vectorised loop) plus a scan for the first index of the maximum. The torch twin
  runs ~9 small tensor ops per pick from Python; at the sizes of a tiny preset (a few thousand points,
  512 picks) that overhead, not the arithmetic, was its cost.
- :func:`ball_query_compiled` = pointnet2 ``ball_query``: per centre a scan of its cloud in index order
  that stops at ``nsample`` hits, instead of a full distance block, ``nonzero`` and ``bincount``.
- :func:`three_nn_compiled` = pointnet2 ``_three_nn``: per query a running best 3 over its cloud, instead
  of a ``topk`` over a full distance block. Only the search is compiled: the interpolation weights are
  recomputed with torch ops on the returned indices (so they stay differentiable, unchanged).

Definitions shared with the twins (our choices, stated in the twins' docstrings too):

- FPS starts at each cloud's first point (or the twin's random start when a generator is given: the
  start is drawn in Python exactly as the twin draws it and passed in); it picks the point of largest
  min squared distance to the picks so far, ties -> the lowest index; a picked point is never picked
  again, even if it coincides with an unpicked one.
- Ball query: the first ``nsample`` points of the centre's cloud in index order with ``d^2 < r^2``
  (strict; ``r^2`` computed in Python double and rounded to the points' dtype, as torch compares a tensor
  with a Python float); short rows repeat the first hit; no hit -> the cloud's first point.
- Three NN: the 3 smallest by ``(d^2, index)``, in that order; a cloud with fewer than 3 points fills
  with its first point and ``exists = False``.
- Squared distances are evaluated as the twins do, ``((dx*dx + dy*dy) + dz*dz)`` in the points' dtype;
  the build uses ``-ffp-contract=off`` so the compiler does not fuse them into FMAs (which would change
  roundings and so, on near ties, picks). Queries are cast to the points' dtype first, as the twins do.

Used for float32/float64 CPU tensors; anything else (CUDA, half precision), an unavailable compiler, or
the :func:`torch_twins` context runs the torch twins. Built on first use with
``torch.utils.cpp_extension`` as render/splat_compiled.py does (one build per ATen CPU capability, cached
by torch); when the build fails :func:`point_kernel` warns once and returns None. Our choice of place:
the module lives in ``data/`` next to ``farthest_point_sampling`` (which ``data/masking`` and the encoders
use), so ``data`` never imports from ``models``.

Threads: at::parallel_for over clouds (FPS) and over centres / queries (ball query, 3-NN), so
``torch.set_num_threads`` applies. FPS has one task per cloud: with B clouds at most B threads help.

Each kernel call runs inside a ``record_function`` range (``renderssl::fps_compiled`` etc.; ~1 us each
when no profiler runs), so ``renderssl bench step`` lists the kernels by name instead of folding their
time into the calling Python function.

``python -m renderssl.data.point_ops_compiled [--repeats N]`` prints the functions alone and the
``gs3_rgbd_tiny`` pretraining step, compiled vs torch twins, interleaved in one process.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch import Tensor
from torch.profiler import record_function
from ..compiled import load_extension

SOURCE = Path(__file__).parent / "csrc" / "point_ops.cpp"
_ENABLED = [True]  # switched off by torch_twins()


@functools.lru_cache(maxsize=1)
def point_kernel():
    """The compiled extension module, or None when it cannot be built here."""
    return load_extension("point_ops", SOURCE, "point sampling/grouping kernel", "the torch twins",
                          extra_cflags=("-ffp-contract=off",))


@contextlib.contextmanager
def torch_twins():
    """Within the block, sampling and grouping run the torch twins (for parity tests and benches)."""
    previous = _ENABLED[0]
    _ENABLED[0] = False
    try:
        yield
    finally:
        _ENABLED[0] = previous


def usable(*tensors: Tensor) -> bool:
    """True when the compiled kernels apply to these tensors: CPU, one float32/float64 dtype, built here."""
    return (_ENABLED[0] and all(t.device.type == "cpu" for t in tensors)
            and len({t.dtype for t in tensors}) == 1 and tensors[0].dtype in (torch.float32, torch.float64)
            and point_kernel() is not None)


def fps_compiled(points: Tensor, counts: Tensor, samples: Tensor, first: Tensor) -> Tensor:
    """(N, 3) points, (B,) counts, samples per cloud and local start index -> (sum S_b,) int64 flat picks,
    cloud by cloud in pick order (validated by the caller)."""
    def long(t):
        return t.to(device="cpu", dtype=torch.int64).contiguous()

    with record_function("renderssl::fps_compiled"):
        return point_kernel().fps(points.contiguous(), long(counts), long(samples), long(first))


def _query_clouds(query_batch: Tensor, data_counts: Tensor) -> tuple[Tensor, Tensor]:
    """(M,) first flat row and size of each query's data cloud."""
    starts = data_counts.cumsum(0) - data_counts  # (B,)
    return starts[query_batch].contiguous(), data_counts[query_batch].contiguous()  # (M,), (M,)


def ball_query_compiled(radius: float, nsample: int, points: Tensor, data_counts: Tensor, centres: Tensor,
                        centre_batch: Tensor) -> Tensor:
    """(M, nsample) int64 flat indices, as pointnet2 ``ball_query`` (validated by the caller)."""
    qstart, qcount = _query_clouds(centre_batch, data_counts)
    with record_function("renderssl::ball_query_compiled"):
        return point_kernel().ball_query(points.contiguous(), centres.to(points.dtype).contiguous(), qstart, qcount,
                                         float(radius) ** 2, int(nsample))


def three_nn_compiled(unknown: Tensor, unknown_batch: Tensor, known: Tensor, known_counts: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 3) int64 flat indices into ``known`` of the 3 nearest by (d^2, index) and a (N, 3) bool mask of
    which exist, as pointnet2 ``_three_nn`` (validated by the caller)."""
    qstart, qcount = _query_clouds(unknown_batch, known_counts)
    with record_function("renderssl::three_nn_compiled"):
        idx, exists = point_kernel().three_nn(known.contiguous(), unknown.to(known.dtype).contiguous(), qstart, qcount)
    return idx, exists  # (N, 3), (N, 3)


# ---------------------------------------------------------------------------------------------------
# bench: compiled vs torch twins, interleaved in one process (ratios; absolute figures need an idle machine)


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def bench(preset: str = "gs3_rgbd_tiny", repeats: int = 7, threads: int = 1, log=print) -> dict:
    """The sampling/grouping calls of one ``preset`` pretraining step replayed alone, and the whole step,
    compiled vs torch twins, alternating A/B ``repeats`` times; prints medians and median ratios."""
    import tempfile
    import time

    from ..bench.step import StepContext, build_method, build_optimizer, pretraining_batch
    from ..bench.step_memory import bench_config
    from ..models.encoders import pointnet2

    torch.set_num_threads(threads)
    log(f"point ops bench: {preset}, {torch.get_num_threads()} torch thread(s), kernel {point_kernel() is not None}")
    with tempfile.TemporaryDirectory() as scratch:
        cfg, _ = bench_config(preset, [], Path(scratch))
        torch.manual_seed(cfg.train.seed)
        method = build_method(cfg)
    step = max(1, cfg.train.steps // 2)
    batch, _ = pretraining_batch(cfg, step)
    optimizer = build_optimizer(method, cfg.optim, total_batch=cfg.train.batch_size, groups=method.param_groups())
    method.train()

    def one_step(i):
        out = method(batch, StepContext(torch.Generator().manual_seed(i), step, cfg.train.steps))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    calls = []  # (name, fn, args) of the step's searches, recorded once
    originals = {k: getattr(pointnet2, k) for k in ("farthest_point_sampling", "ball_query", "_three_nn")}

    def recorder(name, fn):
        def wrapped(*args, **kwargs):
            calls.append((name, fn, args, kwargs))
            return fn(*args, **kwargs)
        return wrapped

    try:
        for k, fn in originals.items():
            setattr(pointnet2, k, recorder(k, fn))
        one_step(0)
    finally:
        for k, fn in originals.items():
            setattr(pointnet2, k, fn)
    log(f"  the step issues {sum(c[0] == 'farthest_point_sampling' for c in calls)} FPS, "
        f"{sum(c[0] == 'ball_query' for c in calls)} ball query and {sum(c[0] == '_three_nn' for c in calls)} 3-NN calls")

    def replay(name):
        start = time.perf_counter()
        for n, fn, args, kwargs in calls:
            if n == name:
                fn(*args, **kwargs)
        return time.perf_counter() - start

    result = {}
    for name in originals:
        twin_s, comp_s = [], []
        for _ in range(repeats):
            with torch_twins():
                twin_s.append(replay(name))
            comp_s.append(replay(name))
        ratio = _median([a / b for a, b in zip(twin_s, comp_s)])
        result[name] = (_median(twin_s), _median(comp_s), ratio)
        log(f"  {name:24s} per step: torch twin {_median(twin_s) * 1e3:8.2f} ms, compiled {_median(comp_s) * 1e3:7.2f} ms, "
            f"twin / compiled {ratio:6.1f}x (median of {repeats} interleaved pairs)")
    for i in range(2):  # warm-up both paths
        with torch_twins():
            one_step(i)
        one_step(i)
    twin_s, comp_s = [], []
    for i in range(repeats):
        start = time.perf_counter()
        with torch_twins():
            one_step(i)
        twin_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        one_step(i)
        comp_s.append(time.perf_counter() - start)
    ratio = _median([a / b for a, b in zip(twin_s, comp_s)])
    result["step"] = (_median(twin_s), _median(comp_s), ratio)
    log(f"  whole {preset} step: torch twins {_median(twin_s) * 1e3:8.1f} ms, compiled {_median(comp_s) * 1e3:7.1f} ms, "
        f"twin / compiled {ratio:5.2f}x (median of {repeats} interleaved pairs)")
    share = [sum(result[k][i] for k in originals) / result["step"][i] for i in (0, 1)]
    log(f"  sampling + grouping (the replayed calls) over the step: torch twins {100 * share[0]:.1f}%, "
        f"compiled {100 * share[1]:.1f}%")
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=bench.__doc__)
    parser.add_argument("--preset", default="gs3_rgbd_tiny")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    a = parser.parse_args()
    from renderssl.data import point_ops_compiled  # the package's module (its switch), not this __main__ copy

    point_ops_compiled.bench(a.preset, a.repeats, a.threads)
