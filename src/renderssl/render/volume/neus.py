"""NeuS SDF rendering of rays: hierarchical samples, sections, alpha, weights, composited outputs.

- ``render_neus`` *requires* unit directions (its cos term is d·∇f) and raises InputError otherwise;
  use ``Cameras.rays(normalize=True)``. Rendered depth is distance along the ray (``rays.py`` converts).
- ``variance`` is required: the ``SingleVariance`` module trained with the field (the same instance on
  every call, so its s learns), or a fixed positive s. There is no default: a fresh module per call
  would silently render with an untrained s that no optimizer sees.
- Sections follow NeuS's ``render_core``: the sorted ``z_vals`` are section *starts*, δ_i = z_{i+1} - z_i,
  the last section has length ``(far - near) / n_samples`` (NeuS uses 2 / n_samples for its unit
  sphere), and the field is evaluated at section *midpoints* z_i + δ_i / 2. PonderV2 (an sdfstudio
  port) evaluates at the starts instead; we keep NeuS. ``t``/``depth`` refer to the midpoints.
- Defaults follow PonderV2's indoor config: 96 coarse + 36 importance samples in 1 up-sampling step
  (NeuS's own default is 64 + 64 in 4 steps of 16); sampling is ``neus_upsample.py``, alpha and weights
  ``neus_field.py``.
- ``depth`` = Σ w t (the PonderV2 paper's formula, NOT normalised); ``depth_normalized`` = Σ w t / Σ w
  (PonderV2's code). ``gradients`` (R, S, 3) are ∇f at the midpoints for the eikonal loss
  (``eikonal_loss``: mean (|∇f| - 1)^2 over all samples; NeuS restricts it to its unit sphere).
Facts about NeuS's and PonderV2's code: docs/references.md (NeuS, PonderV2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ...errors import InputError, check_shape
from ._checks import check_count, check_rays, check_sorted, check_tensor, ray_bounds
from .compositing import composite, deltas_from_t
from .neus_field import FieldFn, as_field, neus_alpha, neus_weights, variance_to_inv_s
from .neus_upsample import neus_sample, sampling_sdf
from .rays import ray_points


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
    check_rays("render_neus_samples", rays_o, rays_d, unit=True)
    check_tensor("render_neus_samples: z_vals", z_vals, rays_o.shape[0], None)
    check_sorted("render_neus_samples: z_vals", z_vals)
    R, S = z_vals.shape
    if last_delta is None:
        last_delta = (z_vals[:, -1] - z_vals[:, 0]) / max(S - 1, 1)  # (R,)
    deltas = deltas_from_t(z_vals, last_delta)  # (R, S)
    t = z_vals + 0.5 * deltas  # (R, S) section midpoints
    points = ray_points(rays_o, rays_d, t)  # (R, S, 3)
    dirs = rays_d[:, None, :].expand(R, S, 3)  # (R, S, 3)
    field = as_field(field_fn(points, dirs), R, S)
    inv_s = variance_to_inv_s(variance)
    alphas = neus_alpha(field.sdf, field.gradients, dirs, deltas, inv_s, cos_anneal_ratio)  # (R, S)
    weights = neus_weights(alphas)  # (R, S)
    if background is not None:
        if field.features is None:
            raise InputError("render_neus: a background needs a field that returns features")
        check_tensor("render_neus: background", background, field.features.shape[-1])
    features, depth, accumulation = composite(weights, t, field.features, background)
    return NeuSOutput(weights, alphas, features, depth, accumulation, t, z_vals, deltas, points,
                      field.sdf, field.gradients, inv_s)


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
    ``field_fn.sdf``, else ``field_fn(...).sdf``, always on the same world points. ``variance`` (required)
    is the :class:`SingleVariance` trained with the field (learned s) or a fixed positive s; None is an
    :class:`InputError`.
    """
    check_rays("render_neus", rays_o, rays_d, unit=True)
    near, far = ray_bounds("render_neus", near, far)
    if near.shape[0] != rays_o.shape[0]:
        raise InputError(f"render_neus: {rays_o.shape[0]} rays but near/far for {near.shape[0]}")
    check_count("render_neus: n_samples", n_samples, 2)
    check_count("render_neus: n_importance", n_importance, 0)
    check_count("render_neus: up_sample_steps", up_sample_steps, 0)
    if n_importance and (up_sample_steps == 0 or n_importance % up_sample_steps):
        raise InputError(f"render_neus: n_importance ({n_importance}) must be a multiple of up_sample_steps ({up_sample_steps}) >= 1")
    if variance is None:
        raise InputError("render_neus: variance is required: pass the SingleVariance module trained with the field "
                         "(the same instance on every call) or a fixed positive s")
    z_vals = neus_sample(rays_o, rays_d, near, far, sampling_sdf(field_fn, sdf_fn), n_samples, n_importance,
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
