"""Volume rendering along rays: samplers, NeRF density compositing and NeuS SDF rendering.

Everything is batched over R rays and S samples per ray, with no Python loop over rays or samples
(the only loop is NeuS's handful of up-sampling steps). t values are (R, S) and sorted along S.

Choices the papers leave open (or where the reference codes disagree), stated once here:

Rays and distances
- A ray is o + t d. ``t`` is used exactly as given: a distance along the ray only if d has unit
  length. ``composite_density`` takes optional ``direction_norms`` (R,) to turn Δt into metric
  distance for un-normalised directions (as NeRF's ``dists * |d|``). ``render_neus`` *requires* unit
  directions (its cos term is d·∇f) and raises InputError otherwise; use ``Cameras.rays(normalize=True)``.
  Rendered depth is therefore distance along the ray; ``z_depth_from_ray_distance`` converts it to the
  z-depth of DESIGN.md (and ``ray_distance_from_z_depth`` back, as PonderV2 does for its depth targets).

Samplers
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

NeRF compositing
- alpha_i = 1 - exp(-σ_i δ_i), δ_i = t_{i+1} - t_i, δ_last = ``last_delta`` (1e10 as NeRF: the last
  sample absorbs what is left). T_i = Π_{j<i}(1 - α_j) is computed as exp(-Σ_{j<i} σ_j δ_j), the same
  number in exact arithmetic but without cumprod's zero-division backward. σ must be >= 0 (apply the
  activation first). ``depth`` = Σ w t (NOT normalised: rays that hit nothing pull towards 0);
  ``depth_normalized`` = Σ w t / Σ w; ``accumulation`` = Σ w. A background (C,) is added as
  (1 - Σ w) · background.

NeuS
- ``SingleVariance(init=0.3)`` holds v with s = exp(10 v) (≈ 20 at init), clipped to [1e-6, 1e6] as NeuS
  (NeuS calls s ``inv_s``; it is the inverse of the logistic's standard deviation).
- Sections follow NeuS's ``render_core``: the sorted ``z_vals`` are section *starts*, δ_i = z_{i+1} - z_i,
  the last section has length ``(far - near) / n_samples`` (NeuS uses 2 / n_samples for its unit
  sphere), and the field is evaluated at section *midpoints* z_i + δ_i / 2. PonderV2 (an sdfstudio
  port) evaluates at the starts instead; we keep NeuS. ``t``/``depth`` refer to the midpoints.
- alpha from the midpoint SDF f and cos = d·∇f: iter_cos = -(relu(-cos/2 + 1/2)(1 - r) + relu(-cos) r)
  with r = ``cos_anneal_ratio`` (1.0 = PonderV2, which never anneals; NeuS anneals 0 -> 1 over 50k
  iterations), f_prev/next = f ∓ iter_cos δ / 2, α = clip((Φ_s(f_prev) - Φ_s(f_next) + 1e-5) /
  (Φ_s(f_prev) + 1e-5), 0, 1), w_i = α_i Π_{j<i}(1 - α_j + 1e-7). Both guards are kept as NeuS has
  them: Σ w may exceed 1 by up to ~S·1e-7, and every section has α >= ~1e-5, so a ray through empty
  space still accumulates ~S·1e-5 (1.3e-3 at 132 samples).
- Up-sampling (NeuS ``up_sample``): with the SDF at the current z_vals and a FIXED s = 64·2^i at step i,
  interval slopes (f_{i+1} - f_i) / (Δz + 1e-5), cos = min(slope, previous slope) (the first interval's
  previous slope is 0) clipped to [-1e3, 0], the interval-midpoint SDF ± cos Δz / 2 give α, the weights
  feed ``sample_pdf`` (deterministic) over the z_vals as bin edges, and the new samples are merged into
  the sorted list with their SDF (``cat_z_vals``). NeuS's ``inside_sphere`` mask (cos zeroed outside its
  unit sphere) is dropped: scene bounds are the caller's near/far. Sampling runs under ``no_grad``.
- Defaults follow PonderV2's indoor config: 96 coarse + 36 importance samples in 1 up-sampling step
  (NeuS's own default is 64 + 64 in 4 steps of 16). Coarse samples are deterministic bin midpoints
  unless ``stratified=True`` (use that in training).
- PonderV2 bug we avoid: its sampler's ``sdf_fn`` is fed un-normalised world points while the field's
  forward normalises them first, so up-sampling reads the volume at the wrong place. Here the sampler
  and the renderer call the same field on the same world points (``field.sdf`` if the field has one,
  else the field itself), so any normalisation lives in exactly one place: the field.
- ``depth`` = Σ w t (the PonderV2 paper's formula, NOT normalised); ``depth_normalized`` = Σ w t / Σ w
  (PonderV2's code). ``gradients`` (R, S, 3) are ∇f at the midpoints for the eikonal loss
  (``eikonal_loss``: mean (|∇f| - 1)^2 over all samples; NeuS restricts it to its unit sphere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, check_finite, check_shape

NEUS_UPSAMPLE_BASE_INV_S = 64.0  # NeuS/PonderV2: fixed s = 64 * 2**step while up-sampling


# ---- validation ---------------------------------------------------------------------------------
def _check_tensor(name: str, x, *shape) -> None:
    """Exact rank, trailing sizes (None = any) and finiteness of a tensor argument."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(shape):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"{name}: expected a {len(shape)}-d tensor {want}, got shape {tuple(x.shape)}")
    check_shape(name, x, *shape)
    check_finite(name, x)


def _check_count(name: str, n, minimum: int = 1) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise InputError(f"{name}: expected an int >= {minimum}, got {n!r}")


def _check_sorted(name: str, t: Tensor) -> None:
    if t.shape[-1] > 1 and not bool((t[..., 1:] >= t[..., :-1]).all()):
        raise InputError(f"{name}: t values must be sorted (non-decreasing) along each ray")


def _ray_bounds(fn: str, near: Tensor, far: Tensor) -> tuple[Tensor, Tensor]:
    """near, far (R,) or (R, 1) -> (R, 1), (R, 1), checked finite with far > near."""
    for name, v in (("near", near), ("far", far)):
        if not isinstance(v, Tensor):
            raise InputError(f"{fn}: {name} must be a tensor of shape (R,) or (R, 1), got {type(v).__name__}")
        if not (v.dim() == 1 or (v.dim() == 2 and v.shape[1] == 1)):
            raise InputError(f"{fn}: {name} must have shape (R,) or (R, 1), got {tuple(v.shape)}")
        check_finite(f"{fn}: {name}", v)
    near, far = near.reshape(-1, 1), far.reshape(-1, 1)
    if near.shape != far.shape:
        raise InputError(f"{fn}: near has {near.shape[0]} rays but far has {far.shape[0]}")
    if not near.dtype.is_floating_point or near.dtype != far.dtype:
        raise InputError(f"{fn}: near/far must share one float dtype, got {near.dtype} and {far.dtype}")
    bad = int((far <= near).sum())
    if bad:
        raise InputError(f"{fn}: far must exceed near on every ray ({bad} ray(s) have far <= near)")
    return near, far


def _check_rays(fn: str, rays_o: Tensor, rays_d: Tensor, unit: bool) -> None:
    _check_tensor(f"{fn}: rays_o", rays_o, None, 3)
    _check_tensor(f"{fn}: rays_d", rays_d, rays_o.shape[0], 3)
    if unit:
        err = float((rays_d.norm(dim=-1) - 1.0).abs().max()) if rays_d.shape[0] else 0.0
        if err > 1e-3:
            raise InputError(f"{fn}: rays_d must be unit vectors (|d| - 1 up to {err:.3g}); use Cameras.rays(normalize=True)")


# ---- samplers -----------------------------------------------------------------------------------
def bin_edges(near: Tensor, far: Tensor, n: int) -> Tensor:
    """Edges (R, n + 1) of n equal bins of [near, far] per ray (the bins of the samplers below)."""
    near, far = _ray_bounds("bin_edges", near, far)
    _check_count("bin_edges: n", n)
    u = torch.linspace(0.0, 1.0, n + 1, dtype=near.dtype, device=near.device)  # (n + 1,)
    return near + (far - near) * u  # (R, n + 1)


def _unit_offsets(R: int, n: int, stratified: bool, generator, like: Tensor) -> Tensor:
    """(R, n) positions in [0, 1): slice midpoints, or one uniform draw inside each of n slices."""
    i = torch.arange(n, dtype=like.dtype, device=like.device)  # (n,)
    if stratified:
        jitter = torch.rand((R, n), generator=generator, dtype=like.dtype, device=like.device)  # (R, n)
    else:
        jitter = torch.full((R, n), 0.5, dtype=like.dtype, device=like.device)
    return (i + jitter) / n  # (R, n)


def sample_uniform(near: Tensor, far: Tensor, n: int) -> Tensor:
    """Deterministic t (R, n): midpoints of n equal bins of [near, far] (near, far: (R,) or (R, 1))."""
    near, far = _ray_bounds("sample_uniform", near, far)
    _check_count("sample_uniform: n", n)
    return near + (far - near) * _unit_offsets(near.shape[0], n, False, None, near)  # (R, n)


def sample_stratified(near: Tensor, far: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Stratified t (R, n): one uniform sample inside each of n equal bins of [near, far]."""
    near, far = _ray_bounds("sample_stratified", near, far)
    _check_count("sample_stratified: n", n)
    return near + (far - near) * _unit_offsets(near.shape[0], n, True, generator, near)  # (R, n)


def sample_inverse_depth(
    near: Tensor, far: Tensor, n: int, stratified: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """t (R, n) uniform in disparity 1/t: n equal disparity bins, midpoints or one sample per bin."""
    near, far = _ray_bounds("sample_inverse_depth", near, far)
    _check_count("sample_inverse_depth: n", n)
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
    _check_tensor("sample_pdf: bins", bins, None, None)
    _check_tensor("sample_pdf: weights", weights, bins.shape[0], bins.shape[1] - 1)
    _check_count("sample_pdf: n", n)
    if bins.shape[1] < 2:
        raise InputError(f"sample_pdf: need at least 2 bin edges, got {bins.shape[1]}")
    _check_sorted("sample_pdf: bins", bins)
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


# ---- depth conventions --------------------------------------------------------------------------
def z_depth_from_ray_distance(t: Tensor, directions: Tensor, optical_axis: Tensor) -> Tensor:
    """Distance t (R,) along unit ``directions`` (R, 3) -> z-depth (R,) along ``optical_axis`` ((3,) or (R, 3)).

    The optical axis is column 2 of the camera-to-world rotation (``c2w[..., :3, 2]``, OpenCV +z).
    """
    _check_tensor("z_depth_from_ray_distance: t", t, None)
    _check_tensor("z_depth_from_ray_distance: directions", directions, t.shape[0], 3)
    check_shape("z_depth_from_ray_distance: optical_axis", optical_axis, 3)
    return t * (directions * optical_axis).sum(dim=-1)  # (R,)


def ray_distance_from_z_depth(z: Tensor, directions: Tensor, optical_axis: Tensor) -> Tensor:
    """z-depth (R,) -> distance (R,) along unit ``directions`` (R, 3) (PonderV2's depth-target conversion)."""
    _check_tensor("ray_distance_from_z_depth: z", z, None)
    _check_tensor("ray_distance_from_z_depth: directions", directions, z.shape[0], 3)
    check_shape("ray_distance_from_z_depth: optical_axis", optical_axis, 3)
    return z / (directions * optical_axis).sum(dim=-1)  # (R,)


# ---- compositing ---------------------------------------------------------------------------------
def exclusive_cumprod(x: Tensor) -> Tensor:
    """(R, S) -> (R, S) with out_i = Π_{j<i} x_j (out_0 = 1)."""
    return torch.cumprod(torch.cat([torch.ones_like(x[:, :1]), x[:, :-1]], dim=-1), dim=-1)


def deltas_from_t(t: Tensor, last_delta) -> Tensor:
    """Section lengths (R, S): t_{i+1} - t_i, and ``last_delta`` (float or (R,) / (R, 1)) for the last."""
    last = torch.as_tensor(last_delta, dtype=t.dtype, device=t.device).reshape(-1, 1).expand(t.shape[0], 1)
    return torch.cat([t[:, 1:] - t[:, :-1], last], dim=-1)  # (R, S)


def composite(weights: Tensor, t: Tensor, values: Tensor | None, background: Tensor | None):
    """Weights (R, S) -> (features (R, C) or None, depth Σ w t (R,), accumulation Σ w (R,))."""
    accumulation = weights.sum(dim=-1)  # (R,)
    depth = (weights * t).sum(dim=-1)  # (R,)
    features = None
    if values is not None:
        features = (weights[..., None] * values).sum(dim=-2)  # (R, C)
        if background is not None:
            features = features + (1.0 - accumulation)[:, None] * background  # (R, C)
    return features, depth, accumulation


@dataclass
class CompositeOutput:
    """NeRF compositing result; ``depth`` is Σ w t (not normalised)."""

    weights: Tensor  # (R, S)
    alphas: Tensor  # (R, S)
    transmittance: Tensor  # (R, S) exclusive: light reaching sample i
    features: Tensor  # (R, C) composited values (RGB when C = 3), background included
    depth: Tensor  # (R,) Σ w t
    accumulation: Tensor  # (R,) Σ w

    @property
    def depth_normalized(self) -> Tensor:
        """(R,) Σ w t / Σ w (0 where nothing is hit)."""
        return self.depth / self.accumulation.clamp_min(1e-10)


def density_to_alpha(sigmas: Tensor, deltas: Tensor) -> Tensor:
    """alpha (R, S) = 1 - exp(-σ δ)."""
    return -torch.expm1(-sigmas * deltas)


def composite_density(
    sigmas: Tensor,
    t: Tensor,
    values: Tensor,
    background: Tensor | None = None,
    last_delta: float = 1e10,
    direction_norms: Tensor | None = None,
) -> CompositeOutput:
    """NeRF volume rendering of densities ``sigmas`` (R, S) >= 0 at sorted ``t`` (R, S) with ``values`` (R, S, C)."""
    _check_tensor("composite_density: sigmas", sigmas, None, None)
    _check_tensor("composite_density: t", t, *sigmas.shape)
    _check_tensor("composite_density: values", values, *sigmas.shape, None)
    _check_sorted("composite_density: t", t)
    if bool((sigmas < 0).any()):
        raise InputError("composite_density: sigmas must be >= 0 (apply relu/softplus/exp first)")
    if not last_delta > 0:
        raise InputError(f"composite_density: last_delta must be > 0, got {last_delta}")
    if background is not None:
        _check_tensor("composite_density: background", background, values.shape[-1])
    deltas = deltas_from_t(t, last_delta)  # (R, S)
    if direction_norms is not None:
        _check_tensor("composite_density: direction_norms", direction_norms, sigmas.shape[0])
        deltas = deltas * direction_norms[:, None]  # (R, S) metric lengths
    optical = sigmas * deltas  # (R, S)
    alphas = -torch.expm1(-optical)  # (R, S)
    # exclusive optical depth: cumsum over the first S - 1 terms (never touches the huge last δ)
    tau = torch.cat([torch.zeros_like(optical[:, :1]), torch.cumsum(optical[:, :-1], dim=-1)], dim=-1)  # (R, S)
    transmittance = torch.exp(-tau)  # (R, S) exclusive
    weights = alphas * transmittance  # (R, S)
    features, depth, accumulation = composite(weights, t, values, background)
    return CompositeOutput(weights, alphas, transmittance, features, depth, accumulation)


# ---- NeuS -----------------------------------------------------------------------------------------
class SingleVariance(nn.Module):
    """NeuS's learnable sharpness: one scalar v, s = exp(10 v) clipped to [1e-6, 1e6] (init v = 0.3, s ≈ 20)."""

    def __init__(self, init: float = 0.3):
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> Tensor:
        """0-d tensor s (NeuS's ``inv_s``)."""
        return torch.exp(10.0 * self.variance).clamp(1e-6, 1e6)


class NeuSField(NamedTuple):
    """What a NeuS field returns at points (R, S, 3)."""

    sdf: Tensor  # (R, S)
    gradients: Tensor  # (R, S, 3) ∇sdf, differentiable (create_graph) when training
    features: Tensor | None  # (R, S, C) colour or any other features to composite


FieldFn = Callable[[Tensor, Tensor], "NeuSField | tuple"]


class AutogradSDFField:
    """A NeuS field from an SDF function, with ∇sdf by autograd (twice differentiable when grad is on).

    ``sdf_fn(points (..., 3))`` returns sdf (...) or (sdf (...), geometry features (..., G)).
    ``feature_fn(points, directions, gradients, geometry_features)`` (optional) returns (..., C).
    ``sdf(points)`` is what the NeuS sampler calls; it sees the same world points as ``__call__``.
    """

    def __init__(self, sdf_fn: Callable, feature_fn: Callable | None = None):
        self.sdf_fn = sdf_fn
        self.feature_fn = feature_fn

    @staticmethod
    def _split(out):
        sdf, geo = (out if isinstance(out, tuple) else (out, None))
        return sdf, geo

    def sdf(self, points: Tensor) -> Tensor:
        return self._split(self.sdf_fn(points))[0]

    def __call__(self, points: Tensor, directions: Tensor) -> NeuSField:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            p = points if points.requires_grad else points.detach().requires_grad_(True)
            sdf, geo = self._split(self.sdf_fn(p))
            (gradients,) = torch.autograd.grad(sdf, p, torch.ones_like(sdf), create_graph=create_graph)
        if not create_graph:
            sdf, geo = sdf.detach(), (None if geo is None else geo.detach())
        features = None if self.feature_fn is None else self.feature_fn(p, directions, gradients, geo)
        return NeuSField(sdf, gradients, features)


def _as_field(out, R: int, S: int) -> NeuSField:
    """Validate a field's output and bring sdf to (R, S)."""
    if not isinstance(out, tuple) or len(out) != 3:
        raise InputError("render_neus: field_fn must return (sdf, gradients, features) or a NeuSField")
    sdf, gradients, features = out
    if isinstance(sdf, Tensor) and sdf.dim() == 3 and sdf.shape[-1] == 1:
        sdf = sdf.squeeze(-1)
    _check_tensor("render_neus: field sdf", sdf, R, S)
    _check_tensor("render_neus: field gradients", gradients, R, S, 3)
    if features is not None:
        _check_tensor("render_neus: field features", features, R, S, None)
    return NeuSField(sdf, gradients, features)


def _inv_s(variance) -> Tensor:
    """s from a SingleVariance (learned) or a fixed positive float / 0-d tensor."""
    if isinstance(variance, nn.Module) or callable(variance):
        s = variance()
    else:
        s = torch.as_tensor(variance)
    if not isinstance(s, Tensor) or s.numel() != 1 or not bool(s.detach().reshape(()) > 0):
        raise InputError(f"NeuS: variance must be a SingleVariance or a positive scalar s, got {variance!r}")
    return s.reshape(())


def neus_alpha(
    sdf: Tensor,
    gradients: Tensor,
    directions: Tensor,
    deltas: Tensor,
    inv_s,
    cos_anneal_ratio: float = 1.0,
) -> Tensor:
    """NeuS alpha (R, S) from the midpoint SDF (R, S), ∇sdf (R, S, 3), unit directions ((R, 3) or (R, S, 3)),
    section lengths ``deltas`` (R, S) and sharpness s (float or 0-d tensor)."""
    _check_tensor("neus_alpha: sdf", sdf, None, None)
    _check_tensor("neus_alpha: gradients", gradients, *sdf.shape, 3)
    _check_tensor("neus_alpha: deltas", deltas, *sdf.shape)
    if directions.dim() == 2:
        _check_tensor("neus_alpha: directions", directions, sdf.shape[0], 3)
        directions = directions[:, None, :]  # (R, 1, 3)
    else:
        _check_tensor("neus_alpha: directions", directions, *sdf.shape, 3)
    if not 0.0 <= float(cos_anneal_ratio) <= 1.0:
        raise InputError(f"neus_alpha: cos_anneal_ratio must be in [0, 1], got {cos_anneal_ratio}")
    r = float(cos_anneal_ratio)
    true_cos = (directions * gradients).sum(dim=-1)  # (R, S)
    iter_cos = -(F.relu(-true_cos * 0.5 + 0.5) * (1.0 - r) + F.relu(-true_cos) * r)  # (R, S) <= 0
    prev_sdf = sdf - iter_cos * deltas * 0.5  # (R, S) estimated at the section start
    next_sdf = sdf + iter_cos * deltas * 0.5  # (R, S) estimated at the section end
    prev_cdf, next_cdf = torch.sigmoid(prev_sdf * inv_s), torch.sigmoid(next_sdf * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clip(0.0, 1.0)  # (R, S)


def neus_weights(alphas: Tensor) -> Tensor:
    """w (R, S) = α_i Π_{j<i}(1 - α_j + 1e-7) (NeuS)."""
    return alphas * exclusive_cumprod(1.0 - alphas + 1e-7)


def neus_up_sample_weights(z_vals: Tensor, sdf: Tensor, inv_s: float) -> Tensor:
    """Weights (R, S - 1) of the intervals between sorted ``z_vals`` (R, S) given their SDF (R, S), fixed s."""
    prev_sdf, next_sdf = sdf[:, :-1], sdf[:, 1:]  # (R, S - 1)
    dz = z_vals[:, 1:] - z_vals[:, :-1]  # (R, S - 1)
    mid_sdf = 0.5 * (prev_sdf + next_sdf)  # (R, S - 1)
    cos = (next_sdf - prev_sdf) / (dz + 1e-5)  # (R, S - 1) finite-difference slope
    prev_cos = torch.cat([torch.zeros_like(cos[:, :1]), cos[:, :-1]], dim=-1)  # (R, S - 1)
    cos = torch.minimum(cos, prev_cos).clip(-1e3, 0.0)  # (R, S - 1)
    prev_cdf = torch.sigmoid((mid_sdf - cos * dz * 0.5) * inv_s)  # (R, S - 1)
    next_cdf = torch.sigmoid((mid_sdf + cos * dz * 0.5) * inv_s)  # (R, S - 1)
    alphas = (prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)  # (R, S - 1) in [0, 1] since cos <= 0
    return neus_weights(alphas)


def neus_up_sample(z_vals: Tensor, sdf: Tensor, n: int, inv_s: float) -> Tensor:
    """NeuS up-sampling: n new t (R, n) by deterministic pdf sampling of the fixed-s interval weights."""
    _check_tensor("neus_up_sample: z_vals", z_vals, None, None)
    _check_tensor("neus_up_sample: sdf", sdf, *z_vals.shape)
    _check_count("neus_up_sample: n", n)
    weights = neus_up_sample_weights(z_vals, sdf, inv_s)  # (R, S - 1)
    return sample_pdf(z_vals, weights, n, deterministic=True)  # (R, n)


def merge_samples(z_vals: Tensor, sdf: Tensor | None, new_z: Tensor, new_sdf: Tensor | None):
    """Sorted union of (R, S) and (R, n) samples, carrying their SDF along -> (R, S + n), (R, S + n) or None."""
    z_all, order = torch.sort(torch.cat([z_vals, new_z], dim=-1), dim=-1)  # (R, S + n)
    if sdf is None or new_sdf is None:
        return z_all, None
    return z_all, torch.cat([sdf, new_sdf], dim=-1).gather(1, order)


def ray_points(rays_o: Tensor, rays_d: Tensor, t: Tensor) -> Tensor:
    """o + t d -> (R, S, 3)."""
    return rays_o[:, None, :] + rays_d[:, None, :] * t[..., None]


def _sampling_sdf(field_fn, sdf_fn) -> Callable[[Tensor, Tensor], Tensor]:
    """The (detached) SDF the up-sampler reads: sdf_fn, else field_fn.sdf, else the full field."""
    fn = sdf_fn if sdf_fn is not None else getattr(field_fn, "sdf", None)
    if fn is not None:
        return lambda points, dirs: fn(points)
    return lambda points, dirs: _as_field(field_fn(points, dirs), *points.shape[:2]).sdf


@dataclass
class NeuSOutput:
    """NeuS rendering result. ``depth`` is Σ w t over section midpoints (not normalised)."""

    weights: Tensor  # (R, S)
    alphas: Tensor  # (R, S)
    features: Tensor | None  # (R, C) composited field features (RGB, semantics, ...), background included
    depth: Tensor  # (R,) Σ w t, distance along the (unit) ray
    accumulation: Tensor  # (R,) Σ w
    t: Tensor  # (R, S) section midpoints where the field was evaluated
    z_vals: Tensor  # (R, S) sorted section starts (coarse + importance)
    deltas: Tensor  # (R, S) section lengths
    points: Tensor  # (R, S, 3) sample points o + t d
    sdf: Tensor  # (R, S)
    gradients: Tensor  # (R, S, 3) ∇sdf at ``points`` (for the eikonal loss; differentiable)
    inv_s: Tensor  # () sharpness s used for alpha

    @property
    def depth_normalized(self) -> Tensor:
        """(R,) Σ w t / Σ w (PonderV2's code), 0 where nothing is hit."""
        return self.depth / self.accumulation.clamp_min(1e-10)


def render_neus_samples(
    rays_o: Tensor,
    rays_d: Tensor,
    z_vals: Tensor,
    field_fn: FieldFn,
    variance,
    cos_anneal_ratio: float = 1.0,
    last_delta=None,
    background: Tensor | None = None,
) -> NeuSOutput:
    """NeuS ``render_core``: sections from sorted starts ``z_vals`` (R, S), field at their midpoints.

    ``last_delta``: length of the last section (float or (R,)); default the mean section length.
    """
    _check_rays("render_neus_samples", rays_o, rays_d, unit=True)
    _check_tensor("render_neus_samples: z_vals", z_vals, rays_o.shape[0], None)
    _check_sorted("render_neus_samples: z_vals", z_vals)
    R, S = z_vals.shape
    if last_delta is None:
        last_delta = (z_vals[:, -1] - z_vals[:, 0]) / max(S - 1, 1)  # (R,)
    deltas = deltas_from_t(z_vals, last_delta)  # (R, S)
    t = z_vals + 0.5 * deltas  # (R, S) section midpoints
    points = ray_points(rays_o, rays_d, t)  # (R, S, 3)
    dirs = rays_d[:, None, :].expand(R, S, 3)  # (R, S, 3)
    field = _as_field(field_fn(points, dirs), R, S)
    inv_s = _inv_s(variance)
    alphas = neus_alpha(field.sdf, field.gradients, dirs, deltas, inv_s, cos_anneal_ratio)  # (R, S)
    weights = neus_weights(alphas)  # (R, S)
    if background is not None:
        if field.features is None:
            raise InputError("render_neus: a background needs a field that returns features")
        _check_tensor("render_neus: background", background, field.features.shape[-1])
    features, depth, accumulation = composite(weights, t, field.features, background)
    return NeuSOutput(weights, alphas, features, depth, accumulation, t, z_vals, deltas, points,
                      field.sdf, field.gradients, inv_s)


def neus_sample(
    rays_o: Tensor,
    rays_d: Tensor,
    near: Tensor,
    far: Tensor,
    sdf_at: Callable[[Tensor, Tensor], Tensor],
    n_samples: int = 96,
    n_importance: int = 36,
    up_sample_steps: int = 1,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    base_inv_s: float = NEUS_UPSAMPLE_BASE_INV_S,
) -> Tensor:
    """Coarse + hierarchical NeuS samples: sorted section starts (R, n_samples + n_importance), no grad."""
    coarse = sample_stratified(near, far, n_samples, generator) if stratified else sample_uniform(near, far, n_samples)
    if n_importance == 0 or up_sample_steps == 0:
        return coarse
    per_step = n_importance // up_sample_steps
    R = coarse.shape[0]
    with torch.no_grad():
        z_vals = coarse  # (R, n_samples)
        dirs = rays_d[:, None, :]
        sdf = sdf_at(ray_points(rays_o, rays_d, z_vals), dirs.expand(R, z_vals.shape[1], 3)).reshape(R, -1)  # (R, S)
        for step in range(up_sample_steps):
            new_z = neus_up_sample(z_vals, sdf, per_step, base_inv_s * 2**step)  # (R, per_step)
            last = step == up_sample_steps - 1
            new_sdf = None if last else sdf_at(ray_points(rays_o, rays_d, new_z), dirs.expand(R, per_step, 3)).reshape(R, -1)
            z_vals, sdf = merge_samples(z_vals, sdf, new_z, new_sdf)  # (R, S + per_step)
    return z_vals.detach()


def render_neus(
    rays_o: Tensor,
    rays_d: Tensor,
    near: Tensor,
    far: Tensor,
    field_fn: FieldFn,
    n_samples: int = 96,
    n_importance: int = 36,
    up_sample_steps: int = 1,
    variance=None,
    cos_anneal_ratio: float = 1.0,
    generator: torch.Generator | None = None,
    stratified: bool = False,
    sdf_fn: Callable[[Tensor], Tensor] | None = None,
    background: Tensor | None = None,
) -> NeuSOutput:
    """NeuS rendering of unit rays ``rays_o``/``rays_d`` (R, 3) between ``near``/``far`` ((R,) or (R, 1)).

    ``field_fn(points (R, S, 3), directions (R, S, 3))`` returns (sdf (R, S), ∇sdf (R, S, 3), features
    (R, S, C) or None), e.g. an :class:`AutogradSDFField`. The up-sampler reads ``sdf_fn(points)``, else
    ``field_fn.sdf``, else ``field_fn(...).sdf``, always on the same world points. ``variance`` is a
    :class:`SingleVariance` (learned s) or a fixed positive s; None means a fresh SingleVariance(0.3).
    """
    _check_rays("render_neus", rays_o, rays_d, unit=True)
    near, far = _ray_bounds("render_neus", near, far)
    if near.shape[0] != rays_o.shape[0]:
        raise InputError(f"render_neus: {rays_o.shape[0]} rays but near/far for {near.shape[0]}")
    _check_count("render_neus: n_samples", n_samples, 2)
    _check_count("render_neus: n_importance", n_importance, 0)
    _check_count("render_neus: up_sample_steps", up_sample_steps, 0)
    if n_importance and (up_sample_steps == 0 or n_importance % up_sample_steps):
        raise InputError(f"render_neus: n_importance ({n_importance}) must be a multiple of up_sample_steps ({up_sample_steps}) >= 1")
    if variance is None:
        variance = SingleVariance().to(device=rays_o.device, dtype=rays_o.dtype)
    z_vals = neus_sample(rays_o, rays_d, near, far, _sampling_sdf(field_fn, sdf_fn), n_samples, n_importance,
                         up_sample_steps, stratified, generator)  # (R, n_samples + n_importance)
    sample_dist = ((far - near) / n_samples).squeeze(-1)  # (R,) NeuS: last section length
    return render_neus_samples(rays_o, rays_d, z_vals, field_fn, variance, cos_anneal_ratio, sample_dist, background)


def eikonal_loss(gradients: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean (|∇f| - 1)^2 over samples (R, S, 3) (optionally over ``mask`` (R, S) only)."""
    check_shape("eikonal_loss: gradients", gradients, 3)
    err = (gradients.norm(dim=-1) - 1.0) ** 2  # (R, S)
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)
