"""What the 2D (:mod:`.downstream`) and 3D (:mod:`.segmentation3d`) downstream trainers share: the
encoder + head model base, the optimiser and its schedule, the batch order and the segmentation scores.

Design choices
--------------
Modes (:class:`TaskModel`)
  * ``linear``: the encoder is frozen (``requires_grad_(False)``, kept in eval mode even when the model
    is put in train mode, so BatchNorm statistics never move; the trainers compute its features under
    ``no_grad``); only the head trains.
  * ``finetune``: encoder and head train together.
Optimiser and schedule (:func:`build_optimization`)
  The engine's code (:mod:`renderssl.train.optim`, :mod:`renderssl.train.schedule`) through
  :func:`optim_config`: AdamW (betas 0.9, 0.999, eps 1e-8) with a per-step schedule, linear warm-up over
  ``warmup`` steps to ``lr``, then a half-cycle cosine to 0 (MAE's fine-tuning schedule, counted in
  steps, not epochs). The warm-up is ``lr (t + 1) / warmup`` (``warmup_from_zero: false``), so the first
  step already moves, unlike pretraining's MAE warm-up that starts at 0. Weight decay skips 1-D
  parameters (biases, norms) and tokens/position embeddings, by name (MAE's rule, passed as ``skip``),
  plus whatever the shared rule adds (names ending in ``.bias``, names a module lists in
  ``no_weight_decay()``).
Layer-wise lr decay (MAE/BEiT, :func:`layer_groups`)
  With L ViT blocks, the patch embedding, class token and position embedding are layer 0, block i is
  layer i + 1, everything after (final norm, head) is layer L + 1; layer l gets
  ``lr * layer_decay ** (L + 1 - l)``: parameter groups ``layer_0`` .. ``layer_L`` of the shared code,
  layer L + 1 its default group. Encoders without ``blocks`` (ResNet, the 3D encoders), and
  ``layer_decay`` 1, get scale 1 everywhere, i.e. the default group only.
Batches (:func:`batch_schedule`)
  ``(steps, batch_size)`` sample indices walking through successive random permutations drawn from the
  run's generator (seeded with ``cfg.seed``), so one cfg gives one batch order.
Scores (:class:`SegmentationScores`)
  :class:`~renderssl.eval.metrics.SegmentationMeter`'s mIoU, overall and mean class accuracy, and the
  per-class IoU as a list (JSON-ready), for pixels and points alike.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..methods.base import ParamGroup
from ..train.config import OptimConfig
from ..train.optim import build_optimizer
from ..train.optim import param_groups as shared_param_groups
from ..train.schedule import StepSchedule, build_scheduler, lr_at_step
from .metrics import SegmentationMeter
from .tasks import DownstreamConfig

NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed", "dist_token")
EMBEDDING_PREFIXES = ("cls_token", "mask_token", "pos_embed", "patch_embed")


class TaskModel(nn.Module):
    """Encoder + task head; the trainers' models subclass it with ``features``, ``forward``, ``predict``
    and ``forward_loss``. ``loss_history`` holds one float per training step."""

    def __init__(self, encoder: nn.Module, head: nn.Module, task: str, num_classes: int, frozen_encoder: bool):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.task = task
        self.num_classes = num_classes
        self.frozen_encoder = frozen_encoder
        self.loss_history: list[float] = []
        if frozen_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()  # a frozen encoder never updates BatchNorm statistics
        return self


class SegmentationScores(SegmentationMeter):
    """SegmentationMeter whose ``compute`` keeps the scalar scores and per-class IoU as a list."""

    def compute(self) -> dict:
        out = super().compute()
        return {"miou": out["miou"], "overall_acc": out["overall_acc"], "mean_class_acc": out["mean_class_acc"],
                "iou": out["iou"].tolist()}


# ==================================================================================================
# Optimisation
# ==================================================================================================
def encoder_layer_id(name: str, num_blocks: int) -> int:
    """MAE layer id of an encoder parameter: embeddings 0, ``blocks.i.*`` i + 1, the rest num_blocks + 1."""
    if name.startswith(EMBEDDING_PREFIXES):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_blocks + 1


def uses_weight_decay(name: str, param: Tensor) -> bool:
    """MAE's fine-tuning rule: decay only parameters with ndim > 1 that are not tokens / position embeddings."""
    return param.ndim > 1 and name.split(".")[-1] not in NO_DECAY_NAMES


def no_decay_names(model: nn.Module) -> list[str]:
    """Full names of ``model``'s parameters :func:`uses_weight_decay` exempts (the shared code's ``skip``)."""
    return [name for name, param in model.named_parameters() if not uses_weight_decay(name, param)]


def layer_groups(model: nn.Module, lr: float, layer_decay: float) -> list[ParamGroup]:
    """Layer-wise lr decay as parameter groups: ``layer_l`` (prefixes of :func:`encoder_layer_id`'s layer
    l = 0 .. L) at ``lr * layer_decay ** (L + 1 - l)``; layer L + 1 is left to the default group (``lr``).
    Empty when ``model.encoder`` has no ``blocks`` or ``layer_decay`` is 1 (every scale would be 1)."""
    blocks = getattr(model.encoder, "blocks", None)
    if blocks is None or layer_decay == 1:
        return []
    num_blocks = len(blocks)
    embeddings = tuple(f"encoder.{p}" for p in EMBEDDING_PREFIXES)
    groups = [ParamGroup("layer_0", embeddings, lr=lr * layer_decay ** (num_blocks + 1))]
    for i in range(num_blocks):
        groups.append(ParamGroup(f"layer_{i + 1}", (f"encoder.blocks.{i}.",), lr=lr * layer_decay ** (num_blocks - i)))
    return groups


def optim_config(cfg: DownstreamConfig) -> OptimConfig:
    """Fine-tuning's optimiser and schedule in the engine's terms (see the module docstring)."""
    return OptimConfig(name="adamw", lr=cfg.lr, min_lr=0.0, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8,
                       schedule="cosine", warmup_steps=cfg.warmup, warmup_from_zero=False)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """The torch param groups fine-tuning uses, for a peak lr of 1: non-empty groups of the shared code
    (``params``, ``names``, ``name``, ``decay``, ``weight_decay``) with ``lr_scale``, their lr / ``cfg.lr``."""
    groups = shared_param_groups(model, weight_decay, no_decay_names(model), lr=1.0,
                                 groups=layer_groups(model, 1.0, layer_decay))
    return [{**{k: v for k, v in g.items() if k != "lr"}, "lr_scale": g["lr"]} for g in groups if g["params"]]


def build_optimization(model: nn.Module, cfg: DownstreamConfig) -> tuple[torch.optim.Optimizer, StepSchedule]:
    """AdamW over ``model``'s trainable parameters and its schedule; step the schedule after every optimizer step."""
    ocfg = optim_config(cfg)
    groups = layer_groups(model, cfg.lr, cfg.layer_decay)
    optimizer = build_optimizer(model, ocfg, total_batch=cfg.batch_size, groups=groups, skip=no_decay_names(model))
    return optimizer, build_scheduler(optimizer, ocfg, cfg.steps)


def take_step(model: nn.Module, loss: Tensor, optimizer: torch.optim.Optimizer, lr_schedule: StepSchedule, step: int,
              what: str) -> None:
    """Backward, one optimizer and schedule step, and ``loss`` appended to ``model.loss_history``; a
    non-finite loss is an error naming ``what`` and the step (nothing is trained on it)."""
    value = float(loss.detach())  # one device sync for the check and the history
    if not math.isfinite(value):
        raise FloatingPointError(f"{what}: non-finite loss at step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    lr_schedule.step()
    model.loss_history.append(value)


def learning_rate(step: int, cfg: DownstreamConfig) -> float:
    """lr of step ``step`` (0-based) at layer scale 1: warm-up ``lr (step + 1) / warmup``, then cosine to 0."""
    return lr_at_step(step, cfg.lr, 0.0, cfg.warmup, cfg.steps, from_zero=False)


def batch_schedule(num_samples: int, cfg: DownstreamConfig, generator: torch.Generator) -> Tensor:
    """(steps, batch_size) sample indices walking through successive random permutations."""
    total = cfg.steps * cfg.batch_size
    epochs = -(-total // num_samples)
    order = torch.cat([torch.randperm(num_samples, generator=generator) for _ in range(epochs)])  # (epochs * N,)
    return order[:total].view(cfg.steps, cfg.batch_size)


__all__ = [
    "SegmentationScores", "TaskModel", "batch_schedule", "build_optimization", "encoder_layer_id", "layer_groups",
    "learning_rate", "no_decay_names", "optim_config", "param_groups", "take_step", "uses_weight_decay",
]
