"""AdamW with MAE's parameter groups and learning-rate rule.

Choices (MAE's ``main_pretrain.py`` + timm's ``param_groups_weight_decay``):
- No weight decay for parameters with ``ndim <= 1`` (norm weights, biases, per-channel scales), names
  ending in ``.bias``, names a module lists in its optional ``no_weight_decay()`` (class and mask tokens,
  position embeddings, query tokens) and names in ``skip``. ``no_weight_decay()`` is asked of every
  submodule, its names prefixed with the submodule's path, so a method's encoder can declare its own.
- Frozen parameters (``requires_grad=False``) are left out of the optimizer.
- ``lr = cfg.lr`` when set, else ``cfg.blr * total_batch / 256`` with ``total_batch`` the batch summed
  over processes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .config import OptimConfig


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names that modules of ``model`` exempt from weight decay by ``no_weight_decay()``."""
    names = set()
    for prefix, module in model.named_modules():
        declare = getattr(module, "no_weight_decay", None)
        if callable(declare):
            names |= {f"{prefix}.{name}" if prefix else name for name in declare()}
    return names


def param_groups(model: nn.Module, weight_decay: float, skip: Iterable[str] = ()) -> list[dict]:
    """Two AdamW groups: ``[{params: decayed, weight_decay}, {params: rest, weight_decay: 0}]``.

    Each group also carries ``names`` (the parameter names, for inspection; the optimizer ignores them).
    """
    exempt = no_weight_decay_names(model) | set(skip)
    decay, no_decay = {"params": [], "names": []}, {"params": [], "names": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = no_decay if param.ndim <= 1 or name.endswith(".bias") or name in exempt else decay
        group["params"].append(param)
        group["names"].append(name)
    return [{**decay, "weight_decay": weight_decay}, {**no_decay, "weight_decay": 0.0}]


def learning_rate(cfg: OptimConfig, total_batch: int) -> float:
    """Absolute lr: ``cfg.lr`` or MAE's linear scaling rule ``blr * total_batch / 256``."""
    return cfg.lr if cfg.lr is not None else cfg.blr * total_batch / 256


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_batch: int) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters with ``cfg``'s betas and weight decay."""
    groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
    return torch.optim.AdamW(groups, lr=learning_rate(cfg, total_batch), betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
