"""Volume rendering along rays: samplers, NeRF density compositing and NeuS SDF rendering.

Everything is batched over R rays and S samples per ray, with no Python loop over rays or samples
(the only loop is NeuS's handful of up-sampling steps). t values are (R, S) and sorted along S. Each
module states the choices it makes where the papers leave them open or the reference codes disagree:

  rays.py           o + t d, ray distance <-> z-depth
  samplers.py       uniform, stratified, inverse-depth, inverse-CDF (pdf) samples
  compositing.py    weights -> features, depth Σ w t, accumulation Σ w (shared by NeRF and NeuS)
  nerf.py           ``composite_density``: NeRF alpha from densities, transmittance, weights
  neus_field.py     ``SingleVariance``, the NeuS field contract, NeuS alpha and weights
  neus_upsample.py  NeuS's coarse + hierarchical (fixed-s) importance sampling
  neus.py           ``render_neus`` / ``render_neus_samples``, ``eikonal_loss``

Bad arguments raise ``InputError`` naming the function and argument (``_checks.py``).
"""

from .compositing import composite, deltas_from_t, exclusive_cumprod
from .nerf import CompositeOutput, composite_density, density_to_alpha
from .neus import NeuSOutput, eikonal_loss, render_neus, render_neus_samples
from .neus_field import AutogradSDFField, FieldFn, NeuSField, SingleVariance, neus_alpha, neus_weights
from .neus_upsample import NEUS_UPSAMPLE_BASE_INV_S, merge_samples, neus_sample, neus_up_sample, neus_up_sample_weights
from .rays import ray_distance_from_z_depth, ray_points, z_depth_from_ray_distance
from .samplers import bin_edges, sample_inverse_depth, sample_pdf, sample_stratified, sample_uniform

__all__ = [
    "NEUS_UPSAMPLE_BASE_INV_S", "AutogradSDFField", "CompositeOutput", "FieldFn", "NeuSField", "NeuSOutput",
    "SingleVariance", "bin_edges", "composite", "composite_density", "deltas_from_t", "density_to_alpha",
    "eikonal_loss", "exclusive_cumprod", "merge_samples", "neus_alpha", "neus_sample", "neus_up_sample",
    "neus_up_sample_weights", "neus_weights", "ray_distance_from_z_depth", "ray_points", "render_neus",
    "render_neus_samples", "sample_inverse_depth", "sample_pdf", "sample_stratified", "sample_uniform",
    "z_depth_from_ray_distance",
]
