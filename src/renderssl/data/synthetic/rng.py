"""Random draws of the scene generator. All of them come from one ``torch.Generator`` seeded with the
scene seed, in a fixed order, so a scene is a pure function of ``(seed, config)``; the global RNG is
never touched."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform(g: torch.Generator, low, high, n: int | None = None) -> Tensor | float:
    """One float in [low, high) (``n`` None) or an (n,) tensor of them."""
    if n is None:
        return float(low + (high - low) * torch.rand((), generator=g))
    return low + (high - low) * torch.rand(n, generator=g)


def randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=g))
