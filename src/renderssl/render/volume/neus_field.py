"""NeuS's SDF -> opacity: the learnable sharpness, the field contract, alpha and weights.

- ``SingleVariance(init=0.3)`` holds v with s = exp(10 v) (≈ 20 at init), clipped to [1e-6, 1e6] as NeuS
  (NeuS calls s ``inv_s``; it is the inverse of the logistic's standard deviation). The module must be
  trained with the field (pass the same instance on every call); a fixed positive s is the alternative.
- A field maps world points (R, S, 3) and directions to (sdf (R, S), ∇sdf (R, S, 3), features (R, S, C)
  or None): ``NeuSField``. ``AutogradSDFField`` builds one from an SDF function with ∇sdf by autograd
  (twice differentiable when grad is on, for the eikonal loss).
- alpha from the midpoint SDF f and cos = d·∇f: iter_cos = -(relu(-cos/2 + 1/2)(1 - r) + relu(-cos) r)
  with r = ``cos_anneal_ratio`` (1.0 = PonderV2, which never anneals; NeuS anneals 0 -> 1 over 50k
  iterations), f_prev/next = f ∓ iter_cos δ / 2, α = clip((Φ_s(f_prev) - Φ_s(f_next) + 1e-5) /
  (Φ_s(f_prev) + 1e-5), 0, 1), w_i = α_i Π_{j<i}(1 - α_j + 1e-7). Both guards are kept as NeuS has
  them: Σ w may exceed 1 by up to ~S·1e-7, and every section has α >= ~1e-5, so a ray through empty
  space still accumulates ~S·1e-5 (1.3e-3 at 132 samples).
Facts about NeuS's and PonderV2's code: docs/references.md (NeuS, PonderV2).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from ._checks import check_tensor
from .compositing import exclusive_cumprod


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


def as_field(out, R: int, S: int) -> NeuSField:
    """Validate a field's output and bring sdf to (R, S)."""
    if not isinstance(out, tuple) or len(out) != 3:
        raise InputError("render_neus: field_fn must return (sdf, gradients, features) or a NeuSField")
    sdf, gradients, features = out
    if isinstance(sdf, Tensor) and sdf.dim() == 3 and sdf.shape[-1] == 1:
        sdf = sdf.squeeze(-1)
    check_tensor("render_neus: field sdf", sdf, R, S)
    check_tensor("render_neus: field gradients", gradients, R, S, 3)
    if features is not None:
        check_tensor("render_neus: field features", features, R, S, None)
    return NeuSField(sdf, gradients, features)


def variance_to_inv_s(variance) -> Tensor:
    """s from a SingleVariance (learned) or a fixed positive float / 0-d tensor."""
    if variance is None:
        raise InputError("NeuS: variance is required: a SingleVariance trained with the field, or a fixed positive s")
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
    check_tensor("neus_alpha: sdf", sdf, None, None)
    check_tensor("neus_alpha: gradients", gradients, *sdf.shape, 3)
    check_tensor("neus_alpha: deltas", deltas, *sdf.shape)
    if directions.dim() == 2:
        check_tensor("neus_alpha: directions", directions, sdf.shape[0], 3)
        directions = directions[:, None, :]  # (R, 1, 3)
    else:
        check_tensor("neus_alpha: directions", directions, *sdf.shape, 3)
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
