"""The training loop every recipe runs: data, DDP, AdamW + warm-up/cosine, checkpoints, logs, previews.

Choices:
- Reproducibility: step ``s`` (1-based) calls ``method(batch, StepContext(generator, s, steps))`` with a CPU generator seeded
  by ``derive_seed(seed, s, rank)`` and the data order is a pure function of ``(seed, epoch)``
  (``ResumableDistributedSampler``), so a run resumed from a checkpoint repeats the uninterrupted run
  exactly. Global RNGs are seeded from ``(seed, rank)`` and their states saved per rank in checkpoints,
  for code that still draws from them (dropout).
- A 2-process run with per-process batch ``b`` sees, step by step, the samples of a 1-process run with
  ``2b``; DDP averages gradients and the lr uses the summed batch, so both follow the same trajectory.
- Non-finite loss: a flag all-reduced with the loss (one collective per step) makes every rank skip
  backward and the optimizer step together; the scheduler still steps (the lr is a function of the step)
  and the data position advances. ``MAX_CONSECUTIVE_NONFINITE`` skips in a row abort the run. With
  ``grad_clip`` a non-finite gradient norm is skipped the same way.
- Files in ``out_dir``: ``config.yaml``, ``metrics.jsonl``, ``tb/``, ``previews/step_NNNNNN.png``,
  ``checkpoints/{last.pt, step_NNNNNN.pt}``. A fresh ``fit()`` deletes the checkpoints and logs of an
  earlier run in ``out_dir`` (with a warning); ``fit(resume=True)`` continues from ``checkpoints/last.pt``.
- The method may set ``ddp_find_unused_parameters = True`` when some parameters get no gradient in a
  step (DDP's ``find_unused_parameters``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError
from ..viz import save_grid
from .checkpoint import LAST, clear_run_checkpoints, load_checkpoint, remove_temp_files, rng_state, save_run_checkpoint, set_rng_state
from .config import OptimConfig, TrainConfig, to_dict
from .distributed import DistContext, all_gather_objects, all_reduce_sum, barrier, cleanup, init_distributed
from .logger import METRICS, TrainLogger
from .optim import build_optimizer
from .sampler import ResumableDistributedSampler, derive_seed
from .schedule import build_scheduler

from ..methods.base import StepContext

if TYPE_CHECKING:
    from ..methods.base import Method, MethodOutput

MAX_CONSECUTIVE_NONFINITE = 20
CHECKPOINT_VERSION = 1

log = logging.getLogger("renderssl.train")


class NonFiniteLossError(RuntimeError):
    """The loss stayed non-finite for ``MAX_CONSECUTIVE_NONFINITE`` steps in a row."""


@dataclass
class TrainSummary:
    steps_done: int  # the step the run reached (the global step count, resumed steps included)
    last_loss: float  # loss of the last step, averaged over processes (nan if that step was skipped)
    skipped_nonfinite: int  # steps skipped for a non-finite loss or gradient, over the whole run
    out_dir: Path
    checkpoint: Path | None  # checkpoints/last.pt
    metrics: Path  # metrics.jsonl


@dataclass
class _Counters:
    step: int = 0
    skipped_nonfinite: int = 0
    consecutive_nonfinite: int = 0
    last_loss: float = math.nan

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class _StepResult:
    loss: float  # mean over processes
    terms: dict[str, float]
    lr: float
    skipped: bool
    grad_norm: float | None
    output: MethodOutput


# ---- small pure helpers --------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator of step ``step`` (1-based) on rank ``rank``."""
    return torch.Generator().manual_seed(derive_seed(seed, step, rank))


def move_to_device(batch, device: torch.device):
    """Tensors of a (nested) dict/list/tuple batch moved to ``device``; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def _plain(value):
    """YAML- and weights_only-safe copy of a config dict (tuples -> lists, paths -> strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _as_rgb(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3|1, H, W) or (H, W) -> (3, *size) float on the CPU."""
    image = image.detach().float().cpu()
    image = image[None] if image.ndim == 2 else image  # (C, H, W)
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image[None], size=size, mode="nearest")[0]
    return image


def _metric_name(name: str, reserved: set[str]) -> str:
    return f"term_{name}" if name in reserved else name


# ---- the trainer ---------------------------------------------------------------------------------


class Trainer:
    """Trains ``method`` on ``dataset``; ``fit()`` runs (or resumes) the whole schedule."""

    def __init__(
        self,
        method: Method,
        dataset: Dataset,
        train: TrainConfig,
        optim: OptimConfig,
        collate_fn: Callable | None = None,
        config_dict: dict | None = None,
        num_workers: int = 0,
    ):
        self.method = method  # the raw module: saved in checkpoints, owns .encoder
        self.dataset = dataset
        self.train = train
        self.optim = optim
        self.collate_fn = collate_fn
        self.num_workers = num_workers  # DataLoader worker processes (data.workers)
        self.config_dict = _plain(config_dict if config_dict is not None else {"train": to_dict(train), "optim": to_dict(optim)})
        self.out_dir = Path(train.out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.preview_dir = self.out_dir / "previews"
        self.model: torch.nn.Module | None = None  # method, or its DDP wrapper, while fit() runs

    # -- public ----------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainSummary:
        """Train to ``train.steps`` (from ``checkpoints/last.pt`` when ``resume``)."""
        ctx = init_distributed(self.train.device)
        try:
            summary = self._fit(ctx, resume)
        except BaseException:
            cleanup(ctx, barrier=False)  # peers may never reach a barrier
            raise
        finally:
            self.model = None
        cleanup(ctx)
        return summary

    # -- set-up ----------------------------------------------------------------------------------

    def _fit(self, ctx: DistContext, resume: bool) -> TrainSummary:
        train = self.train
        method = self.method.to(ctx.device).train()
        seed_everything(derive_seed(train.seed, ctx.rank))
        sampler = ResumableDistributedSampler(len(self.dataset), ctx.world, ctx.rank, train.seed)
        if sampler.num_batches(train.batch_size) < 1:
            raise InputError(
                f"train.batch_size={train.batch_size}: a dataset of {len(self.dataset)} samples over {ctx.world} process(es) has no full batch"
            )
        optimizer = build_optimizer(method, self.optim, total_batch=train.batch_size * ctx.world)
        scheduler = build_scheduler(optimizer, self.optim, train.steps)
        counters = _Counters()
        if resume:
            state = load_checkpoint(self.checkpoint_dir / LAST)
            self._restore(state, ctx, optimizer, scheduler, sampler, counters)
        elif ctx.is_main:
            gone = clear_run_checkpoints(self.checkpoint_dir)
            if gone:
                log.warning("%s: starting a fresh run; deleted %d checkpoint(s) of an earlier run", self.out_dir, len(gone))
        if ctx.is_main:
            remove_temp_files(self.checkpoint_dir)  # left by a process killed mid-write
        barrier()  # rank 0 has cleared old files before anyone writes new ones
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.config_dict, sort_keys=False))

        self.model = self._wrap(method, ctx)
        batches = self._batches(sampler, ctx)
        logger = TrainLogger(self.out_dir, enabled=ctx.is_main, start_step=counters.step, total_steps=train.steps, progress=train.progress)
        try:
            with logger:
                self._loop(ctx, batches, optimizer, scheduler, sampler, counters, logger)
        finally:
            batches.close()  # shuts DataLoader workers down
        last = self.checkpoint_dir / LAST
        return TrainSummary(
            steps_done=counters.step,
            last_loss=counters.last_loss,
            skipped_nonfinite=counters.skipped_nonfinite,
            out_dir=self.out_dir,
            checkpoint=last if last.exists() else None,
            metrics=self.out_dir / METRICS,
        )

    def _wrap(self, method: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
        if ctx.world == 1:
            return method
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        unused = bool(getattr(method, "ddp_find_unused_parameters", False))
        return DistributedDataParallel(method, device_ids=device_ids, find_unused_parameters=unused)

    def _batches(self, sampler: ResumableDistributedSampler, ctx: DistContext) -> Iterator:
        """Endless batches on the device, rolling over epochs (``sampler.set_epoch``)."""
        while True:
            loader = DataLoader(
                self.dataset,
                batch_size=self.train.batch_size,
                sampler=sampler,
                drop_last=True,
                collate_fn=self.collate_fn,
                num_workers=self.num_workers,
                pin_memory=ctx.device.type == "cuda",
                generator=torch.Generator().manual_seed(derive_seed(self.train.seed, sampler.epoch, ctx.rank, 1)),  # worker seeds
            )
            for batch in loader:
                yield move_to_device(batch, ctx.device)
            sampler.set_epoch(sampler.epoch + 1)

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self, ctx, batches, optimizer, scheduler, sampler, counters: _Counters, logger: TrainLogger) -> None:
        train = self.train
        window_start, window_steps = time.perf_counter(), 0
        for step in range(counters.step + 1, train.steps + 1):
            batch = next(batches)
            result = self._train_step(ctx, batch, step, optimizer, scheduler)
            sampler.advance(train.batch_size)
            self._count(step, result, counters, logger)
            logger.advance()
            window_steps += 1
            final = step == train.steps
            if step % train.log_every == 0 or final:
                seconds = (time.perf_counter() - window_start) / window_steps
                logger.log(step, self._scalars(result, sampler, counters, seconds, ctx))
                window_start, window_steps = time.perf_counter(), 0
            if ctx.is_main and (step % train.preview_every == 0 or final):
                self.save_preview(step, batch, result.output)
            if step % train.ckpt_every == 0 or final:
                self._save(ctx, optimizer, scheduler, sampler, counters)

    def _train_step(self, ctx, batch: dict, step: int, optimizer, scheduler) -> _StepResult:
        """Forward, agree on finiteness across ranks, then backward + clip + AdamW step (or skip)."""
        optimizer.zero_grad(set_to_none=True)
        output = self.model(batch, StepContext(step_generator(self.train.seed, step, ctx.rank), step, self.train.steps))
        names = list(output.terms)
        loss = output.loss.detach().float().reshape(())
        local = torch.stack([(~torch.isfinite(loss)).float(), loss, *[output.terms[n].detach().float().reshape(()).to(loss.device) for n in names]])
        reduced = all_reduce_sum(local).tolist()  # [ranks with a bad loss, sum of losses, sums of terms...]
        skipped, mean = reduced[0] > 0, [v / ctx.world for v in reduced[1:]]
        lr = optimizer.param_groups[0]["lr"]
        grad_norm = None
        if not skipped:
            output.loss.backward()
            if self.optim.grad_clip is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.optim.grad_clip))
                skipped = not math.isfinite(grad_norm)  # equal on every rank: gradients are all-reduced
            if not skipped:
                optimizer.step()
        scheduler.step()
        return _StepResult(mean[0], dict(zip(names, mean[1:])), lr, skipped, grad_norm, output)

    def _count(self, step: int, result: _StepResult, counters: _Counters, logger: TrainLogger) -> None:
        counters.step, counters.last_loss = step, result.loss
        if not result.skipped:
            counters.consecutive_nonfinite = 0
            return
        counters.skipped_nonfinite += 1
        counters.consecutive_nonfinite += 1
        what = f"loss {result.loss}" if not math.isfinite(result.loss) else f"gradient norm {result.grad_norm}"
        logger.warning(f"step {step}: non-finite {what}; skipped backward and optimizer step ({counters.consecutive_nonfinite} in a row)")
        if counters.consecutive_nonfinite >= MAX_CONSECUTIVE_NONFINITE:
            raise NonFiniteLossError(
                f"step {step}: non-finite loss for {MAX_CONSECUTIVE_NONFINITE} consecutive steps "
                f"(steps {step - MAX_CONSECUTIVE_NONFINITE + 1}-{step}); stopping. Lower the learning rate or "
                f"check the data; the last good checkpoint is {self.checkpoint_dir / LAST}"
            )

    def _scalars(self, result: _StepResult, sampler, counters: _Counters, seconds: float, ctx) -> dict:
        reserved = {"step", "epoch", "loss", "lr", "sec_per_step", "samples_per_s", "skipped_nonfinite", "grad_norm"}
        scalars = {"epoch": sampler.epoch, "loss": result.loss}
        scalars |= {_metric_name(k, reserved): v for k, v in result.terms.items()}
        scalars |= {
            "lr": result.lr,
            "sec_per_step": seconds,
            "samples_per_s": self.train.batch_size * ctx.world / max(seconds, 1e-12),
            "skipped_nonfinite": counters.skipped_nonfinite,
        }
        if result.grad_norm is not None:
            scalars["grad_norm"] = result.grad_norm
        return scalars

    # -- previews and checkpoints ----------------------------------------------------------------

    def save_preview(self, step: int, batch: dict, output: MethodOutput) -> Path | None:
        """``method.preview_panels`` as one titled row in ``previews/step_NNNNNN.png``."""
        with torch.no_grad():
            panels = self.method.preview_panels(batch, output)
        if not panels:
            return None
        size = tuple(panels[0][1].shape[-2:])
        images = [_as_rgb(image, size) for _, image in panels]
        scale = max(1, min(8, -(-96 // size[1])))  # small renders are enlarged so titles fit
        return save_grid([images], self.preview_dir / f"step_{step:06d}.png", titles=[name for name, _ in panels], scale=scale)

    def _save(self, ctx, optimizer, scheduler, sampler, counters: _Counters) -> None:
        rngs = all_gather_objects(rng_state())  # collective: every rank takes part
        if not ctx.is_main:
            return
        state = {
            "version": CHECKPOINT_VERSION,
            "step": counters.step,
            "world": ctx.world,
            "model": self.method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": rngs,  # one entry per rank
            "counters": counters.state_dict(),
            "config": self.config_dict,
        }
        save_run_checkpoint(self.checkpoint_dir, counters.step, state, keep=self.train.keep_checkpoints)

    def _restore(self, state: dict, ctx, optimizer, scheduler, sampler, counters: _Counters) -> None:
        path = self.checkpoint_dir / LAST
        try:
            self.method.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            sampler.load_state_dict(state["sampler"])
            counters.load_state_dict(state["counters"])
            rngs = state["rng"]
            set_rng_state(rngs[ctx.rank] if len(rngs) == ctx.world else rngs[ctx.rank % len(rngs)])
        except (KeyError, RuntimeError, ValueError) as err:
            raise InputError(f"{path}: does not match this run (model, optimizer or data differ): {err}") from None
        counters.step = int(state["step"])
