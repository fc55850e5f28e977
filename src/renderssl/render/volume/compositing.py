"""Weights -> composited features, depth and accumulation: the part NeRF and NeuS rendering share.

``depth`` = Σ w t (NOT normalised: rays that hit nothing pull towards 0); ``depth_normalized`` (on the
output types) = Σ w t / Σ w; ``accumulation`` = Σ w. A background (C,) is added as (1 - Σ w) · background.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
