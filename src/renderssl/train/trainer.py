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
- Gradient accumulation (``train.accumulate`` = k): a step runs k micro-batches of ``batch_size``,
  each loss divided by k, gradients synchronised across processes on the last one only (DDP
  ``no_sync``), so a step equals one batch of k x batch_size for losses that are batch means. The
  step's generator is shared by its micro-batches in order; MAE's lr rule counts k x batch x world.
- Mixed precision (``train.precision``): bf16 / fp16 autocast of the forward pass on CUDA, with a
  gradient scaler for fp16; fp32 elsewhere (fp16 on a CPU is refused; bf16 on a CPU is allowed but slow).
- Validation (``train.val_every``): every N steps and at the end, the method's ``validate`` on the
  first ``train.val_batches`` batches of the validation Dataset (in order, eval mode, no gradients,
  a generator seeded by (seed, step, rank, 2)); the means go to the logs as ``val_<name>``.
- Unreadable samples (:mod:`renderssl.data.unreadable`): replaced by the next readable one, each new
  one written to the log once and listed in the summary (``skipped_reads``); the run stops when the
  distinct unreadable samples exceed ``max_bad_fraction`` of the dataset. Checked on every log step
  with every rank's list, so all ranks stop together.
- DataLoader workers persist across epochs; the data order does not depend on them.
- The method may set ``ddp_find_unused_parameters = True`` when some parameters get no gradient in a
  step (DDP's ``find_unused_parameters``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..data.unreadable import EpochIndices, SkippingCollate, SkipUnreadable, check_unreadable
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
    from ..threads import ThreadGovernor

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
    skipped_reads: list[str]  # samples that could not be read (file and problem), over the whole run
    out_dir: Path
    checkpoint: Path | None  # checkpoints/last.pt
    metrics: Path  # metrics.jsonl


@dataclass
class _Counters:
    step: int = 0
    skipped_nonfinite: int = 0
    consecutive_nonfinite: int = 0
    last_loss: float = math.nan
    skipped_reads: list = field(default_factory=list)  # distinct unreadable samples ('file: problem'), every rank's

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
        validation: tuple[Dataset, Callable | None] | None = None,
        max_bad_fraction: float = 0.05,
        threads: ThreadGovernor | None = None,
    ):
        self.method = method  # the raw module: saved in checkpoints, owns .encoder
        self.dataset = dataset
        self.train = train
        self.optim = optim
        self.collate_fn = collate_fn
        self.num_workers = num_workers  # DataLoader worker processes (data.workers)
        self.validation = validation  # (Dataset, collate_fn) of held-out scenes for train.val_every
        self.max_bad_fraction = max_bad_fraction
        self.threads = threads  # re-fits torch's thread count to the load after every step (None: left alone)
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
        if train.precision == "fp16" and ctx.device.type != "cuda":
            raise InputError("train.precision=fp16 needs CUDA; use fp32 (or bf16) on a CPU")
        total_batch = train.batch_size * train.accumulate * ctx.world
        optimizer = build_optimizer(method, self.optim, total_batch=total_batch, groups=method.param_groups())
        scheduler = build_scheduler(optimizer, self.optim, train.steps)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=train.precision == "fp16")
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
        batches = self._batches(sampler, ctx, counters.step)
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
            skipped_reads=list(counters.skipped_reads),
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

    def _batches(self, sampler: ResumableDistributedSampler, ctx: DistContext, steps_done: int) -> Iterator:
        """Endless ``(batch on the device, unreadable samples)``, rolling over epochs (``sampler.set_epoch``)."""
        train = self.train
        # the epoch and each sample's step reach Datasets with set_epoch / set_step in persistent workers
        keys = EpochIndices(sampler, train.batch_size, train.accumulate, steps_done * train.accumulate, train.steps)
        loader = DataLoader(
            SkipUnreadable(self.dataset),
            batch_size=self.train.batch_size,
            sampler=keys,
            drop_last=True,
            collate_fn=SkippingCollate(self.collate_fn),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=ctx.device.type == "cuda",
            generator=torch.Generator().manual_seed(derive_seed(self.train.seed, ctx.rank, 1)),  # worker seeds
        )
        while True:
            for batch, problems in loader:
                yield move_to_device(batch, ctx.device), problems
            sampler.set_epoch(sampler.epoch + 1)

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self, ctx, batches, optimizer, scheduler, sampler, counters: _Counters, logger: TrainLogger) -> None:
        train = self.train
        window_start, window_steps = time.perf_counter(), 0
        problems: list[str] = []
        for step in range(counters.step + 1, train.steps + 1):
            result, batch = self._train_step(ctx, batches, step, optimizer, scheduler, sampler, problems)
            self._count(step, result, counters, logger)
            logger.advance()
            if self.threads is not None:
                self.threads.update()
            window_steps += 1
            final = step == train.steps
            if step % train.log_every == 0 or final:
                self._collect_unreadable(problems, counters, logger)
                problems = []
                seconds = (time.perf_counter() - window_start) / window_steps
                logger.log(step, self._scalars(result, sampler, counters, seconds, ctx))
                window_start, window_steps = time.perf_counter(), 0
            if self.validation is not None and train.val_every and (step % train.val_every == 0 or final):
                logger.log(step, self.validate(step, ctx))
            if ctx.is_main and (step % train.preview_every == 0 or final):
                self.save_preview(step, batch, result.output)
            if step % train.ckpt_every == 0 or final:
                self._save(ctx, optimizer, scheduler, sampler, counters)

    def _train_step(self, ctx, batches, step: int, optimizer, scheduler, sampler, problems: list) -> tuple[_StepResult, dict]:
        """``train.accumulate`` micro-batches: forward, agree on finiteness across ranks, backward; then clip
        and step the optimizer (or skip the step). Returns the result and the last micro-batch."""
        train = self.train
        optimizer.zero_grad(set_to_none=True)
        step_ctx = StepContext(step_generator(train.seed, step, ctx.rank), step, train.steps)
        sums, skipped = None, False
        for micro in range(train.accumulate):
            batch, bad_reads = next(batches)
            problems.extend(bad_reads)
            last = micro == train.accumulate - 1
            with self._sync(ctx, last):
                with self._autocast(ctx):
                    output = self.model(batch, step_ctx)
                names = list(output.terms)
                loss = output.loss.detach().float().reshape(())
                local = torch.stack([(~torch.isfinite(loss)).float(), loss, *[output.terms[n].float().reshape(()).to(loss.device) for n in names]])
                reduced = all_reduce_sum(local)  # [ranks with a bad loss, sum of losses, sums of terms...]
                skipped = skipped or bool(reduced[0] > 0)
                if not skipped:
                    self.scaler.scale(output.loss.float() / train.accumulate).backward()
            sums = reduced[1:] if sums is None else sums + reduced[1:]
            sampler.advance(train.batch_size)
        mean = (sums / (ctx.world * train.accumulate)).tolist()
        lr = optimizer.param_groups[0]["lr"]
        grad_norm = None
        if not skipped:
            if self.optim.grad_clip is not None:
                self.scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.optim.grad_clip))
                skipped = not math.isfinite(grad_norm)  # equal on every rank: gradients are all-reduced
            if not skipped:
                self.scaler.step(optimizer)
            self.scaler.update()  # after step or unscale_: an fp16 overflow lowers the scale
        scheduler.step()
        return _StepResult(mean[0], dict(zip(names, mean[1:])), lr, skipped, grad_norm, output), batch

    def _sync(self, ctx, last_micro_batch: bool):
        """DDP synchronises gradients on the last micro-batch of a step only."""
        if ctx.world == 1 or last_micro_batch:
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _autocast(self, ctx):
        if self.train.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.train.precision == "bf16" else torch.float16
        return torch.autocast(device_type=ctx.device.type, dtype=dtype)

    @torch.no_grad()
    def validate(self, step: int, ctx) -> dict:
        """Mean ``method.validate`` metrics over the first ``train.val_batches`` validation batches."""
        dataset, collate = self.validation
        loader = DataLoader(SkipUnreadable(dataset), batch_size=self.train.batch_size, shuffle=False,
                            collate_fn=SkippingCollate(collate), num_workers=0)
        self.method.eval()
        totals: dict[str, float] = {}
        count = 0
        try:
            for i, (batch, _) in enumerate(loader):
                if i == self.train.val_batches:
                    break
                val_ctx = StepContext(torch.Generator().manual_seed(derive_seed(self.train.seed, step, ctx.rank, 2, i)), step, self.train.steps)
                with self._autocast(ctx):
                    metrics = self.method.validate(move_to_device(batch, ctx.device), val_ctx)
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                count += 1
        finally:
            self.method.train()
        return {f"val_{k}": v / max(count, 1) for k, v in totals.items()}

    def _collect_unreadable(self, problems: list[str], counters: _Counters, logger: TrainLogger) -> None:
        """Every rank's unreadable samples since the last call: logged once each, counted, checked."""
        gathered = {p for rank_problems in all_gather_objects(sorted(set(problems))) for p in rank_problems}
        new = sorted(gathered - set(counters.skipped_reads))
        for problem in new:
            logger.warning(f"skipped an unreadable sample: {problem}")
        counters.skipped_reads.extend(new)
        check_unreadable(set(counters.skipped_reads), len(self.dataset), self.max_bad_fraction)

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
        reserved = {"step", "epoch", "loss", "lr", "sec_per_step", "samples_per_s", "skipped_nonfinite", "skipped_reads", "grad_norm"}
        scalars = {"epoch": sampler.epoch, "loss": result.loss}
        scalars |= {_metric_name(k, reserved): v for k, v in result.terms.items()}
        scalars |= {
            "lr": result.lr,
            "sec_per_step": seconds,
            "samples_per_s": self.train.batch_size * self.train.accumulate * ctx.world / max(seconds, 1e-12),
            "skipped_nonfinite": counters.skipped_nonfinite,
            "skipped_reads": len(counters.skipped_reads),
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
            "grad_scaler": self.scaler.state_dict(),
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
            if state.get("grad_scaler"):
                self.scaler.load_state_dict(state["grad_scaler"])
            rngs = state["rng"]
            set_rng_state(rngs[ctx.rank] if len(rngs) == ctx.world else rngs[ctx.rank % len(rngs)])
        except (KeyError, RuntimeError, ValueError) as err:
            raise InputError(f"{path}: does not match this run (model, optimizer or data differ): {err}") from None
        counters.step = int(state["step"])
