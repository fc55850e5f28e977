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

``python -m renderssl.bench.point_ops [--repeats N]`` prints the functions alone and the
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
