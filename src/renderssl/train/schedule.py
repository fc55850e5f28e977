"""Learning rate per iteration: linear warm-up from 0, then half-cycle cosine to ``min_lr``.

This is MAE's ``util/lr_sched.adjust_learning_rate`` with the fractional epoch replaced by the
iteration index ``t`` (the number of optimizer steps taken before this one):

    t <  warmup:  lr(t) = base_lr * t / warmup
    t >= warmup:  lr(t) = min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * (t - warmup) / (total - warmup)))

As in MAE the first step of a warm-up runs at lr 0 and ``lr(total) = min_lr``. It is a
``torch.optim.lr_scheduler.LambdaLR`` (``last_epoch`` = ``t``), so ``state_dict`` goes into checkpoints
and ``scheduler.step()`` once per iteration (skipped iterations included) keeps the schedule a pure
function of the step number. Each parameter group's lr is its own initial lr scaled by the same factor,
so ``min_lr`` is reached by groups whose base lr is the optimizer's.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .config import OptimConfig


def lr_at_step(t: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of iteration ``t`` (0-based)."""
    if t < warmup_steps:
        return base_lr * t / warmup_steps
    progress = min((t - warmup_steps) / max(1, total_steps - warmup_steps), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _factor(t: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    if base_lr == 0:
        return 0.0
    return lr_at_step(t, base_lr, min_lr, warmup_steps, total_steps) / base_lr


def build_scheduler(optimizer: Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """Warm-up + cosine over ``total_steps`` iterations for ``optimizer`` (built by ``build_optimizer``)."""
    base_lr = optimizer.defaults["lr"]
    factor = partial(_factor, base_lr=base_lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, total_steps=total_steps)
    return LambdaLR(optimizer, factor)
