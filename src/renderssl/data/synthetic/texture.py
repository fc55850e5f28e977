"""Procedural textures: per-primitive appearance parameters and the albedo they give at a surface point.

Textures are multi-view consistent: the albedo is a function of the hit point in the primitive's local
frame and of per-primitive parameters only (base and second colour, pattern = stripes | checker |
value noise, frequency, phase offset, stripe axis, noise seed), times a fine value-noise detail.
Colours are HSV samples around a per-class hue (``ClassSpec``), so colour is a cue for the class but not
a key. The value noise hashes integer lattice coordinates by nested permutation polynomials mod 289
(exact integer arithmetic in float32; no tables, no global state).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .classes import CLASS_SPECS, QUAD
from .rng import uniform

if TYPE_CHECKING:
    from .layout import SceneLayout

STRIPES, CHECKER, NOISE = 0, 1, 2
DETAIL_FREQ = 6.0  # cycles per metre of the fine albedo detail noise
DETAIL_GAIN = 0.3  # albedo *= 1 - gain / 2 + gain * noise


# ---- parameters ----------------------------------------------------------------------------------
def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    """(..., 3) HSV in [0, 1] -> (..., 3) RGB in [0, 1]."""
    h, s, v = hsv.unbind(-1)
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0  # (..., 3)
    return v[..., None] - v[..., None] * s[..., None] * (torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))


def sample_appearance(g: torch.Generator, semantic: Tensor, ptype: Tensor) -> dict:
    """Per-primitive colours and texture parameters (P rows), colours around each class's hue."""
    P = semantic.shape[0]
    specs = [CLASS_SPECS[i] for i in semantic.tolist()]
    hue = torch.tensor([s.hue for s in specs]) + uniform(g, -0.06, 0.06, P)  # (P,)
    sat_lo, sat_hi = torch.tensor([s.sat for s in specs]).unbind(1)
    val_lo, val_hi = torch.tensor([s.val for s in specs]).unbind(1)
    sat = sat_lo + (sat_hi - sat_lo) * torch.rand(P, generator=g)
    val = val_lo + (val_hi - val_lo) * torch.rand(P, generator=g)
    color_a = _hsv_to_rgb(torch.stack([hue % 1.0, sat, val], dim=1))  # (P, 3)
    hue_b = hue + uniform(g, -0.12, 0.12, P)
    sat_b = (sat * uniform(g, 0.6, 1.3, P)).clamp(0, 1)
    val_b = val * uniform(g, 0.5, 0.8, P)
    color_b = _hsv_to_rgb(torch.stack([hue_b % 1.0, sat_b, val_b], dim=1))  # (P, 3)
    pattern = torch.randint(0, 3, (P,), generator=g)
    # quads: stripes run across the plane (local x or y), never along the normal (local z)
    axis = torch.where(ptype == QUAD, torch.randint(0, 2, (P,), generator=g), torch.randint(0, 3, (P,), generator=g))
    return dict(
        color_a=color_a, color_b=color_b, pattern=pattern,
        frequency=uniform(g, 1.5, 4.0, P),
        phase=uniform(g, 0.2, 0.8, P * 3).reshape(P, 3),  # keeps lattice boundaries off the faces
        stripe_axis=F.one_hot(axis, 3).float(),
        noise_seed=torch.randint(0, 1 << 20, (P,), generator=g),
    )


# ---- value noise ---------------------------------------------------------------------------------
def _permute289(x: Tensor) -> Tensor:
    """The permutation polynomial (34 x^2 + x) mod 289 on integer-valued floats (exact in float32)."""
    return torch.remainder((34.0 * x + 1.0) * x, 289.0)


def _corner_hashes(cell: Tensor, seed: Tensor) -> Tensor:
    """Hashes (N, 2, 2, 2) in [0, 1] of the 8 lattice corners above integer-valued cells (N, 3), seeds (N,).

    Nested permutations mod 289 (as in webgl-noise), built axis by axis so that each level only
    touches the corners it needs: float32 arithmetic on exact integers, cheaper than int64 hashing.
    """
    c = torch.remainder(cell[:, :, None] + torch.tensor([0.0, 1.0]), 289.0)  # (N, 3, 2)
    hx = _permute289(c[:, 0] + seed[:, None])  # (N, 2)
    hxy = _permute289(hx[:, :, None] + c[:, 1, None, :])  # (N, 2, 2)
    return _permute289(hxy[..., None] + c[:, 2, None, None, :]) / 288.0  # (N, 2, 2, 2)


def value_noise(q: Tensor, seed: Tensor) -> Tensor:
    """Smooth 3D value noise in [0, 1] at points q (N, 3) (lattice units) with per-point seeds (N,)."""
    base = q.floor()
    f = q - base
    u = f * f * (3.0 - 2.0 * f)  # (N, 3) smoothstep weights
    v = _corner_hashes(base, torch.remainder(seed, 289).to(q.dtype))  # (N, 2, 2, 2) indexed (x, y, z)
    v = torch.lerp(v[..., 0], v[..., 1], u[:, 2, None, None])  # (N, 2, 2) along z
    v = torch.lerp(v[..., 0], v[..., 1], u[:, 1, None])  # (N, 2) along y
    return torch.lerp(v[:, 0], v[:, 1], u[:, 0])  # (N,) along x


# ---- albedo --------------------------------------------------------------------------------------
def albedo(layout: SceneLayout, prim: Tensor, p: Tensor) -> Tensor:
    """Albedo (N, 3) at local points p (N, 3) of primitives prim (N,): pattern blend times detail noise."""
    q = p * layout.frequency[prim, None] + layout.phase[prim]  # (N, 3) lattice units
    seed = layout.noise_seed[prim]
    stripes = (0.5 + 2.0 * torch.sin(2 * math.pi * (q * layout.stripe_axis[prim]).sum(1))).clamp(0.0, 1.0)
    checker = (q.floor().sum(dim=1) % 2.0).abs()
    pattern = layout.pattern[prim]
    v = torch.where(pattern == STRIPES, stripes, checker)  # (N,)
    noisy = (pattern == NOISE).nonzero().squeeze(1)
    v[noisy] = (value_noise(q[noisy], seed[noisy]) * 1.6 - 0.3).clamp(0.0, 1.0)
    base = torch.lerp(layout.color_a[prim], layout.color_b[prim], v[:, None])  # (N, 3)
    detail = value_noise(p * DETAIL_FREQ + layout.phase[prim], seed + 7919)
    return base * (1.0 - DETAIL_GAIN / 2 + DETAIL_GAIN * detail[:, None])
