"""Learning-rate (and momentum) schedules per optimizer step, as pure functions of the step.

``t`` is the number of optimizer steps taken before the current one (0-based). The scheduler that
:func:`build_scheduler` returns sets every parameter group's lr (and, for OneCycle with
``cycle_momentum``, its momentum or beta1) to the value of step ``t`` and is stepped once per
optimizer step, skipped steps included, so the schedule never depends on what happened before:
``state_dict()`` is the step number and resuming from it repeats the uninterrupted run exactly.

Schedules (``OptimConfig.schedule``), for a group with peak lr ``p`` and ``W = warmup_steps``, ``T =
total_steps``; the warm-up is ``w(t) = t / W`` (``warmup_from_zero``, MAE: the first step runs at lr 0)
or ``(t + 1) / W`` (the downstream fine-tuning rule: the first step already moves), for ``t < W``:

- ``cosine`` (default; MAE's ``util/lr_sched.adjust_learning_rate`` per iteration instead of per
  fractional epoch): ``p w(t)`` for ``t < W``, then ``m + (p - m) (1 + cos(pi (t - W) / (T - W))) / 2``,
  progress clamped at 1, so ``lr(T) = m``. ``m`` is ``min_lr`` scaled by the group's ``p / lr`` (``lr``
  the optimiser's lr), so every group follows the same shape; the optimiser's own groups get
  ``min_lr`` exactly.
- ``step`` (torch ``StepLR`` in closed form; GNT: x0.5 every 50k steps, Mask3D: x0.99 every 1000):
  ``p gamma ** (t // step_size)``, times ``w(t)`` during the warm-up. The decay counts optimizer steps
  from 0, not from the end of the warm-up, so "every 1000 steps" falls on the same steps with and
  without a warm-up. ``min_lr`` is not used.
- ``constant``: ``p``, times ``w(t)`` during the warm-up.
- ``onecycle`` (torch ``OneCycleLR``, same arithmetic in the same order, so the values agree to the last
  bit; PonderV2/Pointcept's indoor recipe): from ``p / div_factor`` up to ``p`` over the first
  ``pct_start T`` steps, then down to ``p / div_factor / final_div_factor`` at ``t = T - 1`` (``cos``
  or ``linear`` annealing; ``three_phase`` goes back to the start lr by ``2 pct_start T`` first). With
  ``cycle_momentum`` the momentum (SGD) or beta1 (Adam/AdamW) goes the other way, ``max_momentum`` ->
  ``base_momentum`` -> ``max_momentum``. ``warmup_steps`` and ``min_lr`` are not used (its first phase
  is the warm-up; its floor is set by the factors). Steps past ``T - 1`` keep the last value (torch
  raises past ``T``), and a phase of zero length (``pct_start T = 1``) counts as finished, where torch
  divides by zero.

Per-group lrs: each group's peak is its lr when the scheduler is made (the optimiser lr or the group's
own, see :mod:`renderssl.train.optim`), recorded as ``initial_lr`` as torch's schedulers do, and every
schedule is applied to it, so e.g. a layer-wise decayed group follows the same shape at its own scale.
The scheduler is our own small class rather than a torch ``LRScheduler`` so that the values are the
readable formulas below (torch's StepLR, for one, multiplies recursively); it has ``step()``,
``get_last_lr()``, ``state_dict()`` and ``load_state_dict()``, and reads torch ``LambdaLR`` state
(``last_epoch``) from checkpoints written before it existed.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer

from ..errors import InputError
from .config import OptimConfig


def warmup_factor(t: int, warmup_steps: int, from_zero: bool = True) -> float:
    """Linear warm-up factor of step ``t``: ``t / W`` (or ``(t + 1) / W``) below ``W``, else 1."""
    if t < warmup_steps:
        return (t + (0 if from_zero else 1)) / warmup_steps
    return 1.0


def lr_at_step(t: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int,
               from_zero: bool = True) -> float:
    """``cosine``: linear warm-up to ``base_lr``, then half-cycle cosine to ``min_lr`` at ``total_steps``."""
    if t < warmup_steps:
        return base_lr * (t + (0 if from_zero else 1)) / warmup_steps
    progress = min((t - warmup_steps) / max(1, total_steps - warmup_steps), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_lr_at_step(t: int, base_lr: float, step_size: int, gamma: float, warmup_steps: int = 0,
                    from_zero: bool = True) -> float:
    """``step``: ``base_lr * gamma ** (t // step_size)``, times the warm-up factor below ``warmup_steps``."""
    lr = base_lr * gamma ** (t // step_size)
    if t < warmup_steps:
        return lr * (t + (0 if from_zero else 1)) / warmup_steps
    return lr


def constant_lr_at_step(t: int, base_lr: float, warmup_steps: int = 0, from_zero: bool = True) -> float:
    """``constant``: ``base_lr`` after a linear warm-up."""
    if t < warmup_steps:
        return base_lr * (t + (0 if from_zero else 1)) / warmup_steps
    return base_lr


def _anneal(start: float, end: float, pct: float, strategy: str) -> float:
    if strategy == "cos":  # torch's _annealing_cos, same operation order
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def onecycle_at_step(t: int, max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                     final_div_factor: float = 1e4, anneal_strategy: str = "cos", three_phase: bool = False,
                     base_momentum: float = 0.85, max_momentum: float = 0.95) -> tuple[float, float]:
    """``onecycle``: (lr, momentum) of step ``t``, torch ``OneCycleLR``'s phases and formulas."""
    initial_lr = max_lr / div_factor
    min_lr = initial_lr / final_div_factor
    # (end step, start lr, end lr, start momentum, end momentum) per phase, as in torch
    if three_phase:
        phases = [
            (float(pct_start * total_steps) - 1, initial_lr, max_lr, max_momentum, base_momentum),
            (float(2 * pct_start * total_steps) - 2, max_lr, initial_lr, base_momentum, max_momentum),
            (total_steps - 1, initial_lr, min_lr, max_momentum, max_momentum),
        ]
    else:
        phases = [
            (float(pct_start * total_steps) - 1, initial_lr, max_lr, max_momentum, base_momentum),
            (total_steps - 1, max_lr, min_lr, base_momentum, max_momentum),
        ]
    t = min(t, total_steps - 1)
    start_step = 0.0
    for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
        if t <= end_step or i == len(phases) - 1:
            pct = (t - start_step) / (end_step - start_step) if end_step != start_step else 1.0
            return _anneal(lr0, lr1, pct, anneal_strategy), _anneal(m0, m1, pct, anneal_strategy)
        start_step = end_step
    raise AssertionError("unreachable")  # pragma: no cover


class StepSchedule:
    """Sets every parameter group's lr (and momentum) to the schedule's value at the current step."""

    def __init__(self, optimizer: Optimizer, cfg: OptimConfig, total_steps: int):
        if total_steps < 1:
            raise InputError(f"train.steps: the schedule needs at least one step, got {total_steps}")
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = int(total_steps)
        self.reference_lr = float(optimizer.defaults["lr"])  # the optimiser lr: min_lr's scale
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]  # each group's peak
        for group, peak in zip(optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = peak
        self.last_step = 0
        self._last_lr: list[float] = []
        self._apply()

    def values(self, t: int) -> list[tuple[float, float | None]]:
        """(lr, momentum or None) of every parameter group at step ``t``."""
        return [self._value(t, peak) for peak in self.base_lrs]

    def _value(self, t: int, peak: float) -> tuple[float, float | None]:
        c = self.cfg
        if c.schedule == "cosine":
            ratio = peak / self.reference_lr if self.reference_lr > 0 else 1.0
            return lr_at_step(t, peak, c.min_lr * ratio, c.warmup_steps, self.total_steps, c.warmup_from_zero), None
        if c.schedule == "step":
            return step_lr_at_step(t, peak, c.step_size, c.gamma, c.warmup_steps, c.warmup_from_zero), None
        if c.schedule == "constant":
            return constant_lr_at_step(t, peak, c.warmup_steps, c.warmup_from_zero), None
        lr, momentum = onecycle_at_step(t, peak, self.total_steps, c.pct_start, c.div_factor, c.final_div_factor,
                                        c.anneal_strategy, c.three_phase, c.base_momentum, c.max_momentum)
        return lr, (momentum if c.cycle_momentum else None)

    def _apply(self) -> None:
        self._last_lr = []
        for group, (lr, momentum) in zip(self.optimizer.param_groups, self.values(self.last_step)):
            group["lr"] = lr
            if momentum is not None:
                if "betas" in group:  # Adam / AdamW: beta1
                    group["betas"] = (momentum, *group["betas"][1:])
                else:  # SGD
                    group["momentum"] = momentum
            self._last_lr.append(lr)

    def step(self) -> None:
        """Advance one optimizer step (call after every optimizer step, skipped ones included)."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """The step number; the rest is written for inspection (the schedule is a function of the config)."""
        return {"step": self.last_step, "schedule": self.cfg.schedule, "total_steps": self.total_steps,
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved step (also a torch LambdaLR's ``last_epoch``); sets the lrs of that step."""
        step = state.get("step", state.get("last_epoch"))
        if not isinstance(step, int) or step < 0:
            raise InputError(f"scheduler state: expected a step number >= 0, got {state!r}")
        self.last_step = step
        self._apply()


def build_scheduler(optimizer: Optimizer, cfg: OptimConfig, total_steps: int) -> StepSchedule:
    """``cfg.schedule`` over ``total_steps`` optimizer steps for ``optimizer`` (made by ``build_optimizer``)."""
    if cfg.schedule == "onecycle" and cfg.cycle_momentum:
        if not all("betas" in g or "momentum" in g for g in optimizer.param_groups):
            raise InputError("optim.cycle_momentum: the optimizer has no momentum or betas to cycle")
    return StepSchedule(optimizer, cfg, total_steps)
