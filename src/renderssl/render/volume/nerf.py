"""NeRF density compositing.

- alpha_i = 1 - exp(-σ_i δ_i), δ_i = t_{i+1} - t_i, δ_last = ``last_delta`` (1e10 as NeRF: the last
  sample absorbs what is left). T_i = Π_{j<i}(1 - α_j) is computed as exp(-Σ_{j<i} σ_j δ_j), the same
  number in exact arithmetic but without cumprod's zero-division backward. σ must be >= 0 (apply the
  activation first).
- ``direction_norms`` (R,) turn Δt into metric distance for un-normalised directions (as NeRF's
  ``dists * |d|``); without them t is used exactly as given (``rays.py``).
- ``depth`` = Σ w t (not normalised), ``depth_normalized`` = Σ w t / Σ w, ``accumulation`` = Σ w; a
  background (C,) is added as (1 - Σ w) · background (``compositing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import InputError
from ._checks import check_sorted, check_tensor
from .compositing import composite, deltas_from_t


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
    check_tensor("composite_density: sigmas", sigmas, None, None)
    check_tensor("composite_density: t", t, *sigmas.shape)
    check_tensor("composite_density: values", values, *sigmas.shape, None)
    check_sorted("composite_density: t", t)
    if bool((sigmas < 0).any()):
        raise InputError("composite_density: sigmas must be >= 0 (apply relu/softplus/exp first)")
    if not last_delta > 0:
        raise InputError(f"composite_density: last_delta must be > 0, got {last_delta}")
    if background is not None:
        check_tensor("composite_density: background", background, values.shape[-1])
    deltas = deltas_from_t(t, last_delta)  # (R, S)
    if direction_norms is not None:
        check_tensor("composite_density: direction_norms", direction_norms, sigmas.shape[0])
        deltas = deltas * direction_norms[:, None]  # (R, S) metric lengths
    optical = sigmas * deltas  # (R, S)
    alphas = -torch.expm1(-optical)  # (R, S)
    # exclusive optical depth: cumsum over the first S - 1 terms (never touches the huge last δ)
    tau = torch.cat([torch.zeros_like(optical[:, :1]), torch.cumsum(optical[:, :-1], dim=-1)], dim=-1)  # (R, S)
    transmittance = torch.exp(-tau)  # (R, S) exclusive
    weights = alphas * transmittance  # (R, S)
    features, depth, accumulation = composite(weights, t, values, background)
    return CompositeOutput(weights, alphas, transmittance, features, depth, accumulation)
