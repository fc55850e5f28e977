"""The compiled twin of the tiles backend's compositing step (``csrc/composite_tiles.cpp``).

Same inputs, outputs and thresholds as :class:`renderssl.render.splat._CompositeTiles`, computed by
a per-pixel C++ loop (gsplat's algorithm on the CPU: walk the tile's depth-sorted Gaussians until the
pixel terminates; backward walks back to front). It touches each (pixel, Gaussian) pair once in
registers instead of streaming ~35 tensor passes through memory. Built on first use with
``torch.utils.cpp_extension`` (a C++ compiler is needed; the build is cached by torch); if the build
fails, :func:`compiled_kernel` returns None once with a warning and callers use the torch path.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "composite_tiles.cpp"


@functools.lru_cache(maxsize=1)
def compiled_kernel():
    """The compiled extension module, or None when it cannot be built here."""
    try:
        from torch.utils.cpp_extension import load

        return load(name="renderssl_composite_tiles", sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                    extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # no compiler, headers or permissions: fall back, never fail a render
        warnings.warn(f"renderssl: compiled CPU splatting kernel unavailable ({type(err).__name__}: {err}); "
                      "using the torch 'tiles' backend", RuntimeWarning, stacklevel=2)
        return None


class CompositeTilesCompiled(torch.autograd.Function):
    """coef (M, 6), values (G, D), pair_gauss (M,), row_start (rows,), row_count (rows,)
    -> out (rows, P, D), transmittance (rows, P)."""

    @staticmethod
    def forward(ctx, coef, values, pair_gauss, row_start, row_count):
        kernel = compiled_kernel()
        coef, values = coef.contiguous(), values.contiguous()
        out, T, last = kernel.composite_forward(coef, pair_gauss.contiguous(), values, row_start.contiguous(), row_count.contiguous())
        ctx.save_for_backward(coef, values, pair_gauss, row_start, T, last)
        return out, T

    @staticmethod
    def backward(ctx, g_out, g_T):
        coef, values, pair_gauss, row_start, T, last = ctx.saved_tensors
        g_out = torch.zeros((*T.shape, values.shape[-1]), dtype=T.dtype) if g_out is None else g_out.contiguous()
        g_T = torch.zeros_like(T) if g_T is None else g_T.contiguous()
        g_coef, g_pair_values = compiled_kernel().composite_backward(coef, pair_gauss, values, row_start, T, last, g_out, g_T)
        g_values = torch.zeros_like(values).index_add_(0, pair_gauss, g_pair_values)
        return g_coef, g_values, None, None, None
