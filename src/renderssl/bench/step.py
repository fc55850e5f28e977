"""Training-step benchmark: seconds per optimizer step, images per second, achieved GFLOP/s against
this device's fp32 matmul peak, the rendering's share of the step, and for GMAE the step-time ratio
against MAE at the same encoder.

- Step = forward + backward + AdamW step on one batch of synthetic training images, as the trainer
  runs it (the mask is drawn from a seeded generator each step). ``warmup`` untimed steps, then
  ``repeats`` timed ones; best and median are reported. Throughput (images/s, GFLOP/s) uses the best
  step: on a shared machine the best is the steadier figure, the median shows the load.
- Rendering share, from the very steps that are timed (a share of a separately timed rendering against
  a step's best time mixes two phases and two loads, and read 161.8% on a busy machine): while the steps
  run, the method's ``render`` (for GMAE, projection + rasterization of its Gaussians) is wrapped by a
  :class:`RenderTimer`. Forward: wall time of the call. Backward: identity autograd functions mark the
  call's inputs and outputs; the outputs' mark runs when their gradients are complete (the backward
  reaches the renderer) and the inputs' mark when the renderer's backward has produced the input
  gradients, so the time between them is the renderer's backward. CUDA is synchronised at each mark.
  The step's rendering time is the total length of the union of these intervals, all inside the step's
  own interval, so the share is <= 100% by construction. Reported: the median over the timed steps of
  (rendering seconds / step seconds) of the same step (for GMAE the quantity the paper's "+1.5%" refers
  to), and the median rendering seconds. Assumption: no backward work outside the renderer becomes
  ready between its two marks (true for GMAE, whose loss reads only the rendering; a loss term computed
  from the Gaussians alone could run in between). The timer is installed for the warm-up and timed
  steps only (not the FLOP-counting step); its cost (views of the marked tensors, and on CUDA four
  synchronisations per call) is part of the timed step.
- FLOPs are counted once per configuration with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
  convolutions and attention, forward and backward; the rasterizer's elementwise work is not counted,
  its matmuls are), so GFLOP/s is a lower bound of the arithmetic done.
- Peak: the best of several (2048 x 2048) @ (2048 x 2048) fp32 matmuls on the same device, measured
  in the same run.
- The MAE twin of a GMAE config has the same encoder, mask ratio and decoder width, depth and heads:
  only the decoder's output (pixels per patch vs k Gaussians + splatting) differs, and GMAE's decoder
  runs 1 + visible + k tokens where MAE's runs 1 + L. The two methods' steps are interleaved (GMAE,
  MAE, GMAE, ...) so a change of load hits both alike, and the ratio is the median over rounds of
  (GMAE step / MAE step) of the same round.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field

import torch

from ..experiment import ExperimentConfig, build_method
from ..methods.base import StepContext
from ..methods.mae import MAE, MAEConfig
from .memory import synchronize


@dataclass
class StepTiming:
    name: str
    batch: int
    step_seconds: list[float]  # (repeats,) each timed step
    gflop_per_step: float
    render_seconds: list[float] | None = None  # (repeats,) rendering inside the same steps; None: no render

    @property
    def best_seconds(self) -> float:
        return min(self.step_seconds)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def images_per_second(self) -> float:
        return self.batch / self.best_seconds

    @property
    def gflops(self) -> float:
        return self.gflop_per_step / self.best_seconds

    @property
    def render_share(self) -> float | None:
        """Median over steps of rendering seconds / step seconds of the same step."""
        if self.render_seconds is None:
            return None
        return statistics.median(r / s for r, s in zip(self.render_seconds, self.step_seconds))


# ---------------------------------------------------------------------------------------------------
# Rendering time inside a step
# ---------------------------------------------------------------------------------------------------


class _Mark(torch.autograd.Function):
    """Identity on tensors whose backward calls ``callback`` when the gradients of its outputs are complete."""

    @staticmethod
    def forward(ctx, callback, *tensors):
        ctx.callback = callback
        ctx.set_materialize_grads(False)
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.callback()
        return (None, *grads)


def _map_tensors(value, fn):
    """``value`` with ``fn`` applied to every tensor, through dicts, lists, tuples and dataclasses;
    containers holding no changed tensor are returned as they are."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        new = {k: _map_tensors(v, fn) for k, v in value.items()}
        return value if all(new[k] is value[k] for k in value) else new
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        new = [_map_tensors(v, fn) for v in value]
        return value if all(a is b for a, b in zip(new, value)) else type(value)(new)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value) if f.init]
        new = {n: _map_tensors(getattr(value, n), fn) for n in names}
        return value if all(new[n] is getattr(value, n) for n in names) else dataclasses.replace(value, **new)
    return value


def _mark(value, callback):
    """``value`` with its differentiable tensors passed through one :class:`_Mark` calling ``callback``."""
    found = []

    def collect(t):
        if t.requires_grad:
            found.append(t)
        return t

    _map_tensors(value, collect)
    if not found:
        return value
    marked = iter(_Mark.apply(callback, *found))
    return _map_tensors(value, lambda t: next(marked) if t.requires_grad else t)


class RenderTimer:
    """Wall-clock intervals of a render function's forward and backward, collected per step.

    ``timed = timer.wrap(render)`` behaves as ``render``; :meth:`reset` before a step, :meth:`seconds`
    after it (the union of the step's intervals). See the module docstring.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.intervals: list[tuple[float, float]] = []

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def wrap(self, render):
        def timed(*args, **kwargs):
            if not torch.is_grad_enabled():
                start = self._now()
                out = render(*args, **kwargs)
                self.intervals.append((start, self._now()))
                return out
            backward = {}

            def end_backward():  # inputs' gradients done: the renderer's backward is over
                if "start" in backward:
                    self.intervals.append((backward.pop("start"), self._now()))

            def start_backward():  # outputs' gradients complete: the renderer's backward begins
                backward["start"] = self._now()

            args, kwargs = _mark((args, kwargs), end_backward)
            start = self._now()
            out = render(*args, **kwargs)
            self.intervals.append((start, self._now()))
            return _mark(out, start_backward)

        return timed

    def reset(self) -> None:
        self.intervals = []

    def seconds(self) -> float:
        """Total length of the union of the intervals recorded since :meth:`reset`."""
        total, reach = 0.0, float("-inf")
        for start, end in sorted(self.intervals):
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total


# ---------------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------------


def matmul_peak_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def training_images(cfg: ExperimentConfig, batch: int, device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) views of the first training scenes (real synthetic images, not noise)."""
    from ..data.synthetic import SyntheticConfig, generate_scene

    synth = SyntheticConfig(kind=cfg.data.kind, num_views=10, width=cfg.data.width, height=cfg.data.height)
    views, seed = [], cfg.data.seed
    while sum(v.shape[0] for v in views) < batch:
        views.append(generate_scene(seed, synth).rgb)
        seed += 1
    return torch.cat(views)[:batch].to(device)


@dataclass
class _Runner:
    name: str
    method: torch.nn.Module
    optimizer: torch.optim.Optimizer
    timer: RenderTimer | None
    steps: list[float] = field(default_factory=list)
    renders: list[float] = field(default_factory=list)


def time_methods(methods: dict[str, torch.nn.Module], images: torch.Tensor, warmup: int, repeats: int) -> list[StepTiming]:
    """Interleaved training steps of ``methods`` (one step of each per round) on the same batch.

    A method with a ``render`` attribute gets it timed inside every step (:class:`RenderTimer`).
    """
    from torch.utils.flop_counter import FlopCounterMode

    if repeats < 1:
        raise ValueError(f"time_methods: repeats must be >= 1, got {repeats}")
    device = images.device
    batch = {"image": images}
    runners, flops = [], []
    for name, method in methods.items():
        method.to(device).train()
        opt = torch.optim.AdamW(method.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        runner = _Runner(name, method, opt, RenderTimer(device) if callable(getattr(method, "render", None)) else None)
        counter = FlopCounterMode(display=False)
        with counter:
            _step(runner, batch, 0, repeats)
        flops.append(counter.get_total_flops() / 1e9)
        runners.append(runner)
    for r in runners:  # install the timers after FLOP counting, remove them whatever happens
        if r.timer is not None:
            r.method.render = r.timer.wrap(r.method.render)
    try:
        for i in range(warmup + repeats):
            for r in runners:
                if r.timer is not None:
                    r.timer.reset()
                synchronize(device)
                start = time.perf_counter()
                _step(r, batch, i + 1, repeats)
                synchronize(device)
                if i >= warmup:
                    r.steps.append(time.perf_counter() - start)
                    if r.timer is not None:
                        r.renders.append(r.timer.seconds())
    finally:
        for r in runners:
            if r.timer is not None:
                del r.method.render  # the instance attribute; the class's method shows again
    return [StepTiming(r.name, images.shape[0], r.steps, f, r.renders if r.timer is not None else None)
            for r, f in zip(runners, flops)]


def _step(r: _Runner, batch: dict, i: int, total: int) -> None:
    out = r.method(batch, StepContext(torch.Generator().manual_seed(i), i + 1, total))
    r.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    r.optimizer.step()


def mae_twin(cfg: ExperimentConfig) -> MAE:
    g = cfg.gmae
    return MAE(MAEConfig(encoder=g.encoder, mask_ratio=g.mask_ratio, decoder_embed_dim=g.decoder_embed_dim,
                         decoder_depth=g.decoder_depth, decoder_num_heads=g.decoder_num_heads))


def bench_step(cfg: ExperimentConfig, device: str = "cpu", warmup: int = 3, repeats: int = 10) -> dict:
    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    images = training_images(cfg, cfg.train.batch_size, device)
    methods = {cfg.method: build_method(cfg)}
    if cfg.method == "gmae":
        methods["mae (same encoder and decoder)"] = mae_twin(cfg)
    timings = time_methods(methods, images, warmup, repeats)
    result = {"timings": timings, "peak_gflops": matmul_peak_gflops(device), "device": str(device),
              "threads": torch.get_num_threads()}
    if cfg.method == "gmae":
        result["gmae_over_mae"] = statistics.median(a / b for a, b in zip(timings[0].step_seconds, timings[1].step_seconds))
    return result


def format_step_bench(result: dict) -> str:
    lines = [f"training step on {result['device']} ({result['threads']} threads); fp32 matmul peak {result['peak_gflops']:.1f} GFLOP/s"]
    for t in result["timings"]:
        lines.append(
            f"  {t.name:32s} batch {t.batch:4d}: {t.best_seconds * 1000:8.1f} ms/step (median {t.median_seconds * 1000:.1f}), "
            f"{t.images_per_second:7.1f} images/s, {t.gflop_per_step:7.2f} GFLOP/step -> {t.gflops:6.1f} GFLOP/s "
            f"({100 * t.gflops / result['peak_gflops']:.0f}% of peak)"
        )
    for t in result["timings"]:
        if t.render_seconds is not None:
            lines.append(
                f"  {t.name}: rendering (render(): projection + rasterization, fwd + bwd) {100 * t.render_share:.1f}% of "
                f"the step (median over the same {len(t.step_seconds)} timed steps; {statistics.median(t.render_seconds) * 1000:.1f} ms/step)"
            )
    if "gmae_over_mae" in result:
        flops = result["timings"][0].gflop_per_step / result["timings"][1].gflop_per_step
        lines.append(f"  GMAE / MAE step time: {result['gmae_over_mae']:.3f} (median over interleaved rounds; "
                     f"counted FLOPs {flops:.2f}x: the decoder's longer sequence)")
    return "\n".join(lines)
