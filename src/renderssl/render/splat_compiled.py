"""The compiled twin of the tiles backend's compositing step (``csrc/composite_tiles.cpp``).

Same inputs, outputs and thresholds as :class:`renderssl.render.splat_tiles._CompositeTiles`, computed by
gsplat's per-pixel algorithm vectorised across the 256 pixels of a tile: per (Gaussian, tile) pair one
SIMD loop over the pixels evaluates alpha, the thresholds and the termination rule as lane masks, the
tile stops when all its pixels have terminated, and the backward walks the pairs back to front with the
same masks (see the C++ file's header for the mechanism, the exp, the row skipping and what the compiler
generated). It touches each (pixel, Gaussian) pair once in registers instead of streaming ~35 tensor
passes through memory.

Built on first use with ``torch.utils.cpp_extension`` (a C++ compiler is needed; the build is cached by
torch); if the build fails, :func:`compiled_kernel` returns None once with a warning and callers use
the torch path. Instruction set (our choice): one build per ATen CPU capability
(``torch.backends.cpu.get_cpu_capability()``, which also honours ``ATEN_CPU_CAPABILITY``), named after
it: ``-march=x86-64-v4 -mprefer-vector-width=512`` for AVX512, ``-march=x86-64-v3`` for AVX2 and the
compiler's default target otherwise. Not ``-march=native``: torch caches builds by name in a folder
that may be shared by machines with different CPUs (a home directory on a cluster), and a native build
loaded on an older CPU dies of an illegal instruction; keying the name on the capability keeps one
build per instruction set. No ``-ffast-math`` (it would let the compiler drop NaN and threshold
semantics); ``-fno-math-errno`` (no errno writes) and ``-fno-trapping-math`` (the compiler may evaluate
a comparison or an operation on a lane whose result a select then drops, as if FP exceptions could
never trap; torch never unmasks them, so every value, NaN and threshold decision is unchanged). Without
the latter, GCC 12 vectorised the lane loops only with AVX-512's masked instructions: the AVX2 build
kept the clamps in the exp as branches (5.6 ns/pair forward). Measured on an AVX-512 machine (surface
scene, 16k Gaussians, 320x240, one thread, all builds in one run), ns per visited pair forward /
backward: AVX-512 0.81 / 1.32 (the same with 256-bit vectors), AVX2 1.46 / 1.81, the compiler's default
x86-64 target (SSE2, lane loops not vectorised) 6.4 / 8.2, against 8-10 for the per-pixel loop it replaced.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..compiled import load_extension

SOURCE = Path(__file__).parent / "csrc" / "composite_tiles.cpp"

@functools.lru_cache(maxsize=1)
def compiled_kernel():
    """The compiled extension module, or None when it cannot be built here."""
    return load_extension("composite_tiles", SOURCE, "CPU splatting kernel", "the torch 'tiles' backend")


class CompositeTilesCompiled(torch.autograd.Function):
    """coef (M, 6), values (G, D), pair_gauss (M,), row_start (rows,), row_count (rows,)
    -> out (rows, P, D), transmittance (rows, P)."""

    @staticmethod
    def forward(ctx, coef, values, pair_gauss, row_start, row_count):
        kernel = compiled_kernel()
        coef, values = coef.contiguous(), values.contiguous()
        out, T, last, _ = kernel.composite_forward(coef, pair_gauss.contiguous(), values, row_start.contiguous(), row_count.contiguous())
        ctx.save_for_backward(coef, values, pair_gauss, row_start, T, last)
        return out, T

    @staticmethod
    def backward(ctx, g_out, g_T):
        coef, values, pair_gauss, row_start, T, last = ctx.saved_tensors
        g_out = torch.zeros((*T.shape, values.shape[-1]), dtype=T.dtype) if g_out is None else g_out.contiguous()
        g_T = torch.zeros_like(T) if g_T is None else g_T.contiguous()
        g_coef, g_pair_values = compiled_kernel().composite_backward(coef, pair_gauss, values, row_start.contiguous(), T, last, g_out, g_T)
        g_values = torch.zeros_like(values).index_add_(0, pair_gauss, g_pair_values)
        return g_coef, g_values, None, None, None
