"""What every pretraining recipe is: a module that turns a batch into a loss and pictures.

A method owns its ``encoder`` (the product: exported alone, loaded by downstream tasks) and whatever
heads and renderers its pretext task needs. ``forward(batch, generator)`` draws every random choice
of the step (masks, sampled rays, views) from ``generator``, which the trainer seeds from (seed, step,
rank), so a step is a pure function of its inputs and a resumed run repeats exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class MethodOutput:
    loss: Tensor  # scalar, the quantity to minimise
    terms: dict[str, Tensor] = field(default_factory=dict)  # named scalar parts of the loss, for logging
    renders: dict[str, Tensor] = field(default_factory=dict)  # (B, 3, H, W) in [0, 1] for previews (detached)
    extras: dict = field(default_factory=dict)  # method-specific detached outputs (e.g. GMAE's Gaussians)


class Method(nn.Module):
    """Base class of the recipes."""

    encoder: nn.Module

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> MethodOutput:  # pragma: no cover
        raise NotImplementedError

    def encoder_config(self) -> dict:
        """JSON-serialisable description of the encoder, written beside exported weights."""
        raise NotImplementedError

    def preview_panels(self, batch: dict, output: MethodOutput) -> list[tuple[str, Tensor]]:
        """Named (3, H, W) pictures of the first sample for the training preview PNG."""
        return [(name, image[0]) for name, image in output.renders.items()]
