"""Sample positions t (R, n) along rays: uniform, stratified, inverse-depth and inverse-CDF (pdf).

Choices (the papers leave them open, or the reference codes disagree):
- ``sample_uniform`` returns the midpoints of n equal bins of [near, far]; ``sample_stratified`` draws
  one uniform sample inside each of the same bins (NeRF's per-bin jitter, as nerfstudio's stratified
  sampler used by PonderV2). NeRF/NeuS instead use ``linspace(near, far, n)`` including both ends, and
  NeuS jitters all samples of a ray by one shared offset; bin midpoints keep every sample inside
  [near, far] and make the uniform sampler the mean of the stratified one.
- ``sample_inverse_depth`` uses n equal bins in disparity s = 1/t between 1/near and 1/far (midpoints,
  or one uniform-in-disparity sample per bin). GNT's ``inv_uniform`` is ``linspace(1/near, 1/far, n)``
  with both ends and jitters linearly in t between neighbouring midpoints; ours is exactly uniform in
  disparity in distribution, which is what the name promises.
- ``sample_pdf`` is NeRF/NeuS inverse-CDF sampling of a piecewise-constant pdf over bins: weights are
  detached and padded by 1e-5 (NeuS; nerfstudio's ``histogram_padding``), u is the slice midpoints
  ``(i + 0.5) / n`` when deterministic (NeuS), else one uniform u per 1/n slice of the CDF (nerfstudio's
  stratified u; already sorted, so samples come out sorted). Zero-mass bins (CDF step < 1e-5) use a
  unit denominator as NeRF. The returned samples are detached (no gradient through the sampler).
Facts about the reference codes: docs/references.md (NeuS, PonderV2, GNT).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import InputError
from ._checks import check_count, check_sorted, check_tensor, ray_bounds


def bin_edges(near: Tensor, far: Tensor, n: int) -> Tensor:
    """Edges (R, n + 1) of n equal bins of [near, far] per ray (the bins of the samplers below)."""
    near, far = ray_bounds("bin_edges", near, far)
    check_count("bin_edges: n", n)
    u = torch.linspace(0.0, 1.0, n + 1, dtype=near.dtype, device=near.device)  # (n + 1,)
    return near + (far - near) * u  # (R, n + 1)


def _unit_offsets(R: int, n: int, stratified: bool, generator, like: Tensor) -> Tensor:
    """(R, n) positions in [0, 1): slice midpoints, or one uniform draw inside each of n slices."""
    i = torch.arange(n, dtype=like.dtype, device=like.device)  # (n,)
    if stratified:
        where = generator.device if generator is not None else like.device  # a CPU generator serves CUDA rays
        jitter = torch.rand((R, n), generator=generator, dtype=like.dtype, device=where).to(like.device)  # (R, n)
    else:
        jitter = torch.full((R, n), 0.5, dtype=like.dtype, device=like.device)
    return (i + jitter) / n  # (R, n)


def sample_uniform(near: Tensor, far: Tensor, n: int) -> Tensor:
    """Deterministic t (R, n): midpoints of n equal bins of [near, far] (near, far: (R,) or (R, 1))."""
    near, far = ray_bounds("sample_uniform", near, far)
    check_count("sample_uniform: n", n)
    return near + (far - near) * _unit_offsets(near.shape[0], n, False, None, near)  # (R, n)


def sample_stratified(near: Tensor, far: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Stratified t (R, n): one uniform sample inside each of n equal bins of [near, far]."""
    near, far = ray_bounds("sample_stratified", near, far)
    check_count("sample_stratified: n", n)
    return near + (far - near) * _unit_offsets(near.shape[0], n, True, generator, near)  # (R, n)


def sample_inverse_depth(
    near: Tensor, far: Tensor, n: int, stratified: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """t (R, n) uniform in disparity 1/t: n equal disparity bins, midpoints or one sample per bin."""
    near, far = ray_bounds("sample_inverse_depth", near, far)
    check_count("sample_inverse_depth: n", n)
    if not bool((near > 0).all()):
        raise InputError("sample_inverse_depth: near must be > 0 on every ray (disparity 1/near)")
    u = _unit_offsets(near.shape[0], n, stratified, generator, near)  # (R, n)
    disparity = 1.0 / near + (1.0 / far - 1.0 / near) * u  # (R, n), decreasing
    return 1.0 / disparity  # (R, n), increasing


def sample_pdf(
    bins: Tensor,
    weights: Tensor,
    n: int,
    deterministic: bool = True,
    generator: torch.Generator | None = None,
    padding: float = 1e-5,
) -> Tensor:
    """Inverse-CDF samples t (R, n) from the piecewise-constant pdf ``weights`` (R, B) over ``bins`` (R, B + 1).

    Weights are detached and padded by ``padding``; the result is sorted and detached.
    """
    check_tensor("sample_pdf: bins", bins, None, None)
    check_tensor("sample_pdf: weights", weights, bins.shape[0], bins.shape[1] - 1)
    check_count("sample_pdf: n", n)
    if bins.shape[1] < 2:
        raise InputError(f"sample_pdf: need at least 2 bin edges, got {bins.shape[1]}")
    check_sorted("sample_pdf: bins", bins)
    if bool((weights < 0).any()):
        raise InputError("sample_pdf: weights must be >= 0")
    R, B = weights.shape
    bins = bins.detach()
    w = weights.detach() + padding  # (R, B)
    cdf = torch.cumsum(w, dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf / cdf[:, -1:]], dim=-1)  # (R, B + 1), 0 .. 1
    u = _unit_offsets(R, n, not deterministic, generator, w).contiguous()  # (R, n), sorted
    above = torch.searchsorted(cdf, u, right=True)  # (R, n) in [1, B + 1]
    below = (above - 1).clamp(0, B)
    above = above.clamp(max=B)
    cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)  # (R, n)
    t_lo, t_hi = bins.gather(1, below), bins.gather(1, above)  # (R, n)
    denom = cdf_hi - cdf_lo
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    frac = (u - cdf_lo) / denom  # (R, n) in [0, 1]
    return t_lo + frac * (t_hi - t_lo)  # (R, n)
