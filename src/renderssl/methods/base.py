"""What every pretraining recipe is: a module that turns a batch into a loss and pictures.

A method owns its ``encoder`` (the product: exported alone, loaded by downstream tasks) and whatever
heads and renderers its pretext task needs. It declares, as class attributes and small methods:

- ``sample_type``: the sample it trains on (``"image"``, ``"rgbd"``, ``"multiview"``, ``"points"``);
  the experiment builds the matching Dataset and collate function from it;
- ``encoder_architecture``: the export architecture of ``encoder`` (``"vit"``, ``"resnet"``,
  ``"sparse_unet"``, ``"pointnet2"``), with :meth:`encoder_config` its config;
- :meth:`param_groups`: named groups of parameters (by name prefix) with their own learning rate and
  weight decay (e.g. GNT's transformer at 5e-4 and CNN at 1e-3); ``optim.groups`` overrides them;
- :meth:`validate`: metrics of a held-out batch (default: the loss and its terms, without gradients);
- ``config_class``: its config dataclass (the YAML section named after the recipe);
- :meth:`sample_options`: options of its Dataset (a multi-view recipe's view selection);
- ``evaluation_fields``: config fields that only set how ``renderssl evaluate`` runs (NPS's number of
  source views), which its overrides may change;
- ``stage_fields``: config fields naming an earlier run it starts from (Mask3D's Stage-I ``init_from``),
  which the experiment can run first (``pretrain:<preset>``) and clears when a run is reloaded.

``forward(batch, ctx)`` receives a :class:`StepContext`: the generator every random choice of the step
(masks, sampled rays, views) is drawn from, seeded by the trainer from (seed, step, rank) so a step is a
pure function of its inputs and a resumed run repeats exactly, and the step and total steps, so that
schedules inside a recipe (curricula, losses switched on late, annealing) are functions of the step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..typed_config import to_dict

SAMPLE_TYPES = ("image", "rgbd", "multiview", "points")


@dataclass(frozen=True)
class StepContext:
    """Where a forward pass stands: its random generator and its place in the schedule."""

    generator: torch.Generator | None = None
    step: int = 0  # the 1-based optimizer step being computed; 0 outside training
    total_steps: int = 1

    @property
    def progress(self) -> float:
        """step / total_steps in [0, 1]."""
        return min(max(self.step / max(self.total_steps, 1), 0.0), 1.0)


@dataclass(frozen=True)
class ParamGroup:
    """Parameters whose names start with one of ``prefixes`` ("" matches every name), with their own
    learning rate and weight decay (None = the optimiser's). A parameter joins the first group that
    matches it, in declaration order; parameters no group matches join the optimiser's defaults."""

    name: str
    prefixes: tuple[str, ...]
    lr: float | None = None
    weight_decay: float | None = None


@dataclass
class MethodOutput:
    loss: Tensor  # scalar, the quantity to minimise
    terms: dict[str, Tensor] = field(default_factory=dict)  # named scalar parts of the loss, for logging
    renders: dict[str, Tensor] = field(default_factory=dict)  # (B, 3, H, W) in [0, 1] for previews (detached)
    extras: dict = field(default_factory=dict)  # method-specific outputs (e.g. GMAE's Gaussians), detached
    rendered_pixels: int = 0  # pixels (rays) rendered and compared with observed ones this step; 0: none

    def __post_init__(self):
        self.terms = {k: v.detach() for k, v in self.terms.items()}
        self.renders = {k: v.detach() for k, v in self.renders.items()}
        self.extras = detach_tree(self.extras)


def detach_tree(value):
    """``value`` with every tensor detached, through dicts, lists, tuples and dataclasses."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: detach_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(detach_tree(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: detach_tree(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init})
    return value


class Method(nn.Module):
    """Base class of the recipes."""

    config_class: ClassVar[type]
    sample_type: ClassVar[str] = "image"
    encoder_architecture: ClassVar[str] = "vit"
    stage_fields: ClassVar[tuple[str, ...]] = ()
    num_context: ClassVar[int] = 0  # multi-view recipes: the context views render_targets reads (batch views 0..)
    evaluation_fields: ClassVar[tuple[str, ...]] = ()  # recipe fields that only set how `renderssl evaluate` runs
    encoder: nn.Module
    config: object  # the recipe's config dataclass; its ``encoder`` field configures ``encoder``

    def forward(self, batch: dict, ctx: StepContext) -> MethodOutput:  # pragma: no cover
        raise NotImplementedError

    def encoder_config(self) -> dict:
        """JSON-serialisable description of the encoder, written beside exported weights."""
        return to_dict(self.config.encoder)

    @classmethod
    def sample_options(cls, config) -> dict:
        """Keyword options of the recipe's Dataset (e.g. a multi-view recipe's ``views`` and
        ``num_targets`` for :class:`~renderssl.data.datasets.MultiViewDataset`); none by default."""
        return {}

    def param_groups(self) -> list[ParamGroup]:
        """Named parameter groups with their own lr / weight decay; none = one group for everything."""
        return []

    @torch.no_grad()
    def validate(self, batch: dict, ctx: StepContext) -> dict[str, float]:
        """Metrics of a held-out batch (default: the loss and its named terms)."""
        output = self(batch, ctx)
        return {"loss": float(output.loss), **{k: float(v) for k, v in output.terms.items()}}

    def render_targets(self, batch: dict) -> Tensor:
        """Feed-forward novel views (``renderssl evaluate``): from the batch's context views (its first
        ``num_context`` views) render every other view of the batch -> (B, T, 3, H, W), T = V - num_context.
        No masking, no augmentation, deterministic; callers wrap it in ``torch.no_grad``."""
        name = type(self).__name__.lower()
        raise InputError(f"{name} does not render novel views (render_targets); evaluate scores its encoder downstream")

    def preview_panels(self, batch: dict, output: MethodOutput) -> list[tuple[str, Tensor]]:
        """Named (3, H, W) pictures of the first sample for the training preview PNG."""
        return [(name, image[0]) for name, image in output.renders.items()]
