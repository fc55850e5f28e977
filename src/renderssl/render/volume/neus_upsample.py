"""NeuS's hierarchical sampling: coarse samples, then importance samples near the surface.

- Up-sampling (NeuS ``up_sample``): with the SDF at the current z_vals and a FIXED s = 64·2^i at step i,
  interval slopes (f_{i+1} - f_i) / (Δz + 1e-5), cos = min(slope, previous slope) (the first interval's
  previous slope is 0) clipped to [-1e3, 0], the interval-midpoint SDF ± cos Δz / 2 give α, the weights
  feed ``sample_pdf`` (deterministic) over the z_vals as bin edges, and the new samples are merged into
  the sorted list with their SDF (``cat_z_vals``). NeuS's ``inside_sphere`` mask (cos zeroed outside its
  unit sphere) is dropped: scene bounds are the caller's near/far. Sampling runs under ``no_grad``.
- Coarse samples are deterministic bin midpoints unless ``stratified=True`` (use that in training).
- PonderV2 bug we avoid: its sampler's ``sdf_fn`` is fed un-normalised world points while the field's
  forward normalises them first, so up-sampling reads the volume at the wrong place. Here the sampler
  and the renderer call the same field on the same world points (``field.sdf`` if the field has one,
  else the field itself), so any normalisation lives in exactly one place: the field.
Facts about NeuS's and PonderV2's code: docs/references.md (NeuS; PonderV2, known bugs).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._checks import check_count, check_tensor
from .neus_field import as_field, neus_weights
from .rays import ray_points
from .samplers import sample_pdf, sample_stratified, sample_uniform

NEUS_UPSAMPLE_BASE_INV_S = 64.0  # NeuS/PonderV2: fixed s = 64 * 2**step while up-sampling


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
    check_tensor("neus_up_sample: z_vals", z_vals, None, None)
    check_tensor("neus_up_sample: sdf", sdf, *z_vals.shape)
    check_count("neus_up_sample: n", n)
    weights = neus_up_sample_weights(z_vals, sdf, inv_s)  # (R, S - 1)
    return sample_pdf(z_vals, weights, n, deterministic=True)  # (R, n)


def merge_samples(z_vals: Tensor, sdf: Tensor | None, new_z: Tensor, new_sdf: Tensor | None):
    """Sorted union of (R, S) and (R, n) samples, carrying their SDF along -> (R, S + n), (R, S + n) or None."""
    z_all, order = torch.sort(torch.cat([z_vals, new_z], dim=-1), dim=-1)  # (R, S + n)
    if sdf is None or new_sdf is None:
        return z_all, None
    return z_all, torch.cat([sdf, new_sdf], dim=-1).gather(1, order)


def sampling_sdf(field_fn, sdf_fn) -> Callable[[Tensor, Tensor], Tensor]:
    """The (detached) SDF the up-sampler reads: sdf_fn, else field_fn.sdf, else the full field."""
    fn = sdf_fn if sdf_fn is not None else getattr(field_fn, "sdf", None)
    if fn is not None:
        return lambda points, dirs: fn(points)
    return lambda points, dirs: as_field(field_fn(points, dirs), *points.shape[:2]).sdf


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
