"""Training-step benchmark for every recipe: seconds per optimizer step, where the step's time goes (matrix
products vs the rest, the largest other ops and the renderssl lines that issue them), achieved GFLOP/s
against this device's fp32 matmul peak, the rendering's share of the step, and for GMAE the step-time
ratio against MAE at the same encoder.

- Batch: one real batch of the recipe's pretraining data, as the trainer gets it: ``train.batch_size``
  samples of :func:`~renderssl.experiment.pretraining_data` (the recipe's Dataset, its collate function),
  moved to the device (:func:`~renderssl.train.trainer.move_to_device`). The config is
  :func:`~renderssl.bench.step_memory.bench_config`'s: stage fields (Mask3D's ``init_from``) cleared,
  only as many training scenes as one batch needs, stand-in LPIPS weights where the real files are not
  set. Our choice: the bench stands at the middle of the schedule (step ``train.steps // 2``): datasets
  with ``set_step`` (NPS's source-view curriculum) draw the batch there and every timed step gets that
  ``StepContext`` step (NPS's hardness curriculum), so curricula sit at their middle setting; the same
  batch is used for every step. The time to build a batch (samples + collate in this process, scenes
  already cached; not part of the step) is reported apart as ``data``.
- Step = forward + backward + optimizer step with the optimizer the trainer builds
  (:func:`~renderssl.train.optim.build_optimizer` with the recipe's parameter groups; the schedule's lr
  does not change the time); each step draws its randomness from a seeded generator. ``warmup`` untimed
  steps, then ``repeats`` timed ones; best and median are reported. Throughput (GFLOP/s) uses the best
  step: on a shared machine the best is the steadier figure, the median shows the load.
- Rendering share, from the very steps that are timed (a share of a separately timed rendering against
  a step's best time mixes two phases and two loads, and read 161.8% on a busy machine): while the steps
  run, the method's ``render`` (GMAE, GS³: projection + rasterization of the Gaussians; PonderV2: the
  NeuS volume rendering of its rays) is wrapped by a :class:`RenderTimer`. Forward: wall time of the
  call. Backward: identity autograd functions mark the call's inputs and outputs; the outputs' mark runs
  when their gradients are complete (the backward reaches the renderer) and the inputs' mark when the
  renderer's backward has produced the input gradients, so the time between them is the renderer's
  backward. CUDA is synchronised at each mark. The step's rendering time is the total length of the
  union of these intervals, all inside the step's own interval, so the share is <= 100% by construction.
  Reported: the median over the timed steps of (rendering seconds / step seconds) of the same step (for
  GMAE the quantity the paper's "+1.5%" refers to), and the median rendering seconds. Assumption: no
  backward work outside the renderer becomes ready between its two marks (true for GMAE, whose loss reads
  only the rendering; a loss term computed from the renderer's inputs alone could run in between). The
  timer is installed for the warm-up and timed steps only (not the FLOP-counting or profiled steps); its
  cost (views of the marked tensors, and on CUDA four synchronisations per call) is part of the timed step.
- Profile (:func:`profile_steps`): ``torch.profiler`` over ``profile_steps`` further steps (after the
  timed ones, timer removed). Every profiler event's SELF time (its time minus its children's) is counted
  once, so nothing is counted twice: on CPU self CPU time, on CUDA the self device time of the ops (the
  kernels each op launched itself; the kernel rows, which repeat them, are not counted). Matrix
  products are the events named in :data:`MATMUL_OPS`, each ``aten::`` + one of: mm, bmm, addmm,
  baddbmm, addbmm, _addmm_activation, addmv, mv, dot, matmul, linear, einsum (matrix products); conv1d,
  conv2d, conv3d, convolution, _convolution, mkldnn_convolution, _slow_conv2d_forward,
  _slow_conv2d_backward, slow_conv3d_forward, slow_conv_dilated2d, slow_conv_dilated3d,
  convolution_backward, conv_transpose1d, conv_transpose2d, conv_transpose3d, slow_conv_transpose2d,
  slow_conv_transpose3d, cudnn_convolution, cudnn_convolution_transpose, _nnpack_spatial_convolution
  (convolutions, forward and backward); scaled_dot_product_attention,
  _scaled_dot_product_flash_attention_for_cpu, _scaled_dot_product_flash_attention_for_cpu_backward,
  _scaled_dot_product_flash_attention, _scaled_dot_product_flash_attention_backward,
  _scaled_dot_product_efficient_attention, _scaled_dot_product_efficient_attention_backward,
  _scaled_dot_product_cudnn_attention, _scaled_dot_product_cudnn_attention_backward,
  _scaled_dot_product_attention_math, _flash_attention_forward, _flash_attention_backward,
  _efficient_attention_forward, _efficient_attention_backward (attention, forward and backward). The
  wrappers' (matmul, linear, einsum, convolution, ...) self time is their own dispatch work, not their
  children's, and is counted here too: it is the cost of calling the matrix product. Sparse
  convolutions and gathered attention count their mm / bmm here and their gathers and scatters in the
  rest. The rest: every other op, the autograd engine's nodes, and the self time of the bench's ``record_function`` ranges ``[python] forward``,
  ``[python] backward``, ``[python] optimizer`` (Python and dispatch work of that phase outside any op).
  Shares are of the profiled steps' summed self time (= the steps' wall time minus time in no event).
  The top non-matmul events are listed by self time with their share; with ``sites`` a second profiled
  run with ``with_stack=True`` attributes each to the renderssl functions that issued it (the innermost
  two ``renderssl/`` Python functions among the event's ancestors inside the step's phase range, named by
  file and first line; ``[python] optimizer (outside renderssl)`` for torch.optim's ops); the same run
  also sums every non-matmul event's self time by that site, an op of the backward charged to the site of
  the forward op that recorded its autograd node (same ``sequence_nr``; shown as ``bwd <site>``; nodes
  made during a backward, as a double backward's, stay ``backward of <node>``), shares of that run's
  total: the renderssl functions whose non-matmul work costs most, forward and backward together. (An op
  run by the autograd engine has no Python stack: as a top event's site it reads ``backward of
  IndexBackward0``.) The profiler's per-op overhead makes op-heavy code (many small ops: loops, the
  optimizer's per-parameter updates) look somewhat larger than it runs; ratios of the timed steps are
  the figures to quote.
- FLOPs are counted once per configuration with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
  convolutions and attention, forward and backward; elementwise work, gathers and the rasterizer's
  compositing are not counted), so GFLOP/s is a lower bound of the arithmetic done.
- Peak: the best of several (2048 x 2048) @ (2048 x 2048) fp32 matmuls on the same device, measured
  once in the same run.
- The MAE twin of a GMAE config has the same encoder, mask ratio and decoder width, depth and heads:
  only the decoder's output (pixels per patch vs k Gaussians + splatting) differs, and GMAE's decoder
  runs 1 + visible + k tokens where MAE's runs 1 + L. It gets the same batch and a plain AdamW (lr 1e-4,
  betas (0.9, 0.95), weight decay 0.05; one parameter group: the values do not change the time). The two methods' steps are interleaved (GMAE, MAE, GMAE, ...) so a change of load hits both
  alike, and the ratio is the median over rounds of (GMAE step / MAE step) of the same round.
- ``--all-tiny`` (:data:`TINY_PRESETS`): every recipe's tiny preset one after the other in this process,
  a table at the end.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from ..experiment import ExperimentConfig, build_method
from ..methods.base import StepContext
from ..methods.mae import MAE, MAEConfig
from ..train.optim import build_optimizer
from ..train.trainer import move_to_device
from .memory import synchronize

TINY_PRESETS = ("mae_tiny", "gmae_tiny", "mask3d_tiny", "gs3_rgb_tiny", "gs3_rgbd_tiny", "ponder_tiny",
                "ponder_images_tiny", "nps_tiny")


@dataclass
class StepTiming:
    name: str
    batch: int
    step_seconds: list[float]  # (repeats,) each timed step
    gflop_per_step: float
    render_seconds: list[float] | None = None  # (repeats,) rendering inside the same steps; None: no render
    profile: OpProfile | None = None  # where the step's time goes (profile_steps); None: not profiled

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
# Where a step's time goes
# ---------------------------------------------------------------------------------------------------

_MATMUL = ("mm", "bmm", "addmm", "baddbmm", "addbmm", "_addmm_activation", "addmv", "mv", "dot", "matmul", "linear", "einsum")
_CONV = ("conv1d", "conv2d", "conv3d", "convolution", "_convolution", "mkldnn_convolution", "_slow_conv2d_forward",
         "_slow_conv2d_backward", "slow_conv3d_forward", "slow_conv_dilated2d", "slow_conv_dilated3d", "convolution_backward",
         "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "slow_conv_transpose2d", "slow_conv_transpose3d",
         "cudnn_convolution", "cudnn_convolution_transpose", "_nnpack_spatial_convolution")
_ATTENTION = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention",
              "_scaled_dot_product_cudnn_attention_backward", "_scaled_dot_product_attention_math",
              "_flash_attention_forward", "_flash_attention_backward", "_efficient_attention_forward",
              "_efficient_attention_backward")
MATMUL_OPS = frozenset(f"aten::{n}" for n in (*_MATMUL, *_CONV, *_ATTENTION))  # the events counted as matrix products
PHASES = ("[python] forward", "[python] backward", "[python] optimizer")  # record_function ranges of a profiled step


@dataclass
class OpProfile:
    """Self time of a few profiled steps, by event name (seconds, summed over the steps)."""

    steps: int
    self_seconds: dict[str, float]  # event name -> self time
    sites: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # event -> [(where, share of the event)], largest first
    # [(renderssl function, share of the step's self time, [(op, share)] its largest ops)], non-matmul, largest first
    functions: list[tuple[str, float, list[tuple[str, float]]]] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.self_seconds.values())

    @property
    def matmul_seconds(self) -> float:
        return sum(s for n, s in self.self_seconds.items() if n in MATMUL_OPS)

    @property
    def matmul_share(self) -> float:
        return self.matmul_seconds / self.total if self.total > 0 else 0.0

    def top_other(self, k: int = 8) -> list[tuple[str, float]]:
        """The ``k`` largest non-matmul events as (name, share of the total self time)."""
        other = sorted(((n, s) for n, s in self.self_seconds.items() if n not in MATMUL_OPS), key=lambda x: -x[1])
        return [(n, s / self.total) for n, s in other[:k]] if self.total > 0 else []


def _self_time_us(event, cuda: bool) -> float:
    if cuda:
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
    return float(event.self_cpu_time_total)


def _op_children(event):
    """The nearest descendants of ``event`` that are not Python-function events (``with_stack`` runs insert
    those between an op and the ops it calls)."""
    for c in event.cpu_children:
        if getattr(c, "is_python_function", False):
            yield from _op_children(c)
        else:
            yield c


def _op_self_time_us(event, cuda: bool) -> float:
    """Self time as a run without Python events would count it."""
    if cuda:
        return _self_time_us(event, cuda)
    return float(event.cpu_time_total) - sum(float(c.cpu_time_total) for c in _op_children(event))


def _site(event, depth: int = 2) -> str:
    """Where ``event`` was issued: the innermost ``depth`` renderssl Python functions among its ancestors
    below the step's phase range, as ``renderssl/FILE.py(LINE): FUNCTION`` with LINE the function's first
    line (the profiler's Python events name functions, not call lines), innermost first, joined by " < ";
    ``backward of <node>`` for an op the autograd engine ran; ``<phase> (outside renderssl)`` for an op
    with no renderssl function inside its phase (the optimizer's, for one)."""
    frames, e = [], event.cpu_parent
    while e is not None and len(frames) < depth:
        name = e.name.replace("\\", "/")
        if name in PHASES or "renderssl/bench/" in name:  # the harness: above it is the bench, not the recipe
            return " < ".join(frames) if frames else f"{name if name in PHASES else 'bench'} (outside renderssl)"
        if "renderssl/" in name and "(" in name:
            frames.append(name[name.index("renderssl/"):])
        elif name.startswith("autograd::engine::evaluate_function: ") and not frames:
            return "backward of " + name.split(": ", 1)[1]
        e = e.cpu_parent
    return " < ".join(frames) if frames else "(no renderssl frame)"


def profile_steps(step, steps: int = 3, device: torch.device | str = "cpu", sites: bool = False, top: int = 8) -> OpProfile:
    """Self time by event over ``steps`` calls of ``step(i)``, with the sites of the ``top`` non-matmul
    events when ``sites`` (a second run of as many steps with Python stacks). See the module docstring."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def run(with_stack: bool, offset: int):
        with profile(activities=activities, with_stack=with_stack) as prof:
            for i in range(steps):
                step(offset + i)
            synchronize(device)
        return prof.events()

    totals: dict[str, float] = defaultdict(float)
    for e in run(False, 0):
        if e.device_type.name == "CPU":  # on CUDA an op's self device time holds its kernels: kernel rows would count twice
            t = _self_time_us(e, cuda)
            if t > 0:
                totals[e.name] += t * 1e-6
    result = OpProfile(steps, dict(totals))
    if sites:
        result.sites, result.functions = _attribute(run(True, steps), {n for n, _ in result.top_other(top)} - set(PHASES), cuda)
    return result


def _attribute(events, wanted: set[str], cuda: bool, keep: int = 10):
    """From a ``with_stack`` run: the sites of the ``wanted`` events, and the non-matmul self time by site
    with backward ops charged to the forward op that recorded their autograd node (same ``sequence_nr``)."""
    ops = [e for e in events if not getattr(e, "is_python_function", False) and e.device_type.name == "CPU"]
    forward_site: dict[int, str] = {}
    for e in ops:
        if e.sequence_nr >= 0 and e.sequence_nr not in forward_site and e.name.startswith("aten::"):
            where = _site(e)
            if not where.startswith("backward of"):
                forward_site[e.sequence_nr] = where
    by_site: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_function: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    total = 0.0
    for e in ops:
        t = _op_self_time_us(e, cuda) * 1e-6
        if t <= 0:
            continue
        total += t
        if e.name in MATMUL_OPS:
            continue
        where = _site(e)
        if e.name in wanted:
            by_site[e.name][where] += t
        if where.startswith("backward of"):
            node = e.cpu_parent
            while node is not None and not node.name.startswith("autograd::engine::evaluate_function: "):
                node = node.cpu_parent
            if node is not None and node.sequence_nr in forward_site:
                where = "bwd " + forward_site[node.sequence_nr]
        by_function[where][e.name] += t
    sites = {n: sorted(((k, v / sum(d.values())) for k, v in d.items()), key=lambda x: -x[1]) for n, d in by_site.items()}
    functions = sorted(((f, sum(d.values()) / total, sorted(((n, v / total) for n, v in d.items()), key=lambda x: -x[1])[:4])
                        for f, d in by_function.items()), key=lambda x: -x[1]) if total > 0 else []
    return sites, functions[:keep]


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


def time_methods(methods: dict[str, torch.nn.Module], batch, warmup: int, repeats: int,
                 optimizers: dict[str, torch.optim.Optimizer] | None = None, schedule: tuple[int, int] | None = None,
                 profile: int = 0, sites: bool = False, batch_size: int | None = None) -> list[StepTiming]:
    """Interleaved training steps of ``methods`` (one step of each per round) on the same batch.

    ``batch``: the collated batch on the device, or a (B, 3, H, W) image tensor (``{"image": images}``);
    ``batch_size``: its samples (default: B of the image tensor; a packed point batch has no such axis).
    ``optimizers``: by name, default AdamW(lr 1e-4, betas (0.9, 0.95), weight decay 0.05) for a missing
    one. ``schedule``: (step, total) given to every step's ``StepContext``; default step i + 1 of
    ``repeats``. ``profile`` > 0: that many more steps of each method under :func:`profile_steps`
    (``sites``: with their source lines). A method with a ``render`` attribute gets it timed inside
    every timed step (:class:`RenderTimer`).
    """
    from torch.utils.flop_counter import FlopCounterMode

    if repeats < 1:
        raise InputError(f"time_methods: repeats must be >= 1, got {repeats}")
    if warmup < 0 or profile < 0:
        raise InputError(f"time_methods: warmup and profile must be >= 0, got {warmup} and {profile}")
    if isinstance(batch, torch.Tensor):
        batch_size = batch.shape[0] if batch_size is None else batch_size
        batch = {"image": batch}
    device = next((v.device for v in batch.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    optimizers = optimizers or {}
    runners, flops = [], []
    for name, method in methods.items():
        method.to(device).train()
        opt = optimizers.get(name) or torch.optim.AdamW(method.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        runner = _Runner(name, method, opt, RenderTimer(device) if callable(getattr(method, "render", None)) else None)
        counter = FlopCounterMode(display=False)
        with counter:
            _step(runner, batch, 0, repeats, schedule)
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
                _step(r, batch, i + 1, repeats, schedule)
                synchronize(device)
                if i >= warmup:
                    r.steps.append(time.perf_counter() - start)
                    if r.timer is not None:
                        r.renders.append(r.timer.seconds())
    finally:
        for r in runners:
            if r.timer is not None:
                del r.method.render  # the instance attribute; the class's method shows again
    profiles = [None] * len(runners)
    if profile:
        first = warmup + repeats + 1
        for k, r in enumerate(runners):
            profiles[k] = profile_steps(lambda i, r=r: _step(r, batch, first + i, repeats, schedule, phases=True),
                                        profile, device, sites=sites)
    return [StepTiming(r.name, batch_size or 0, r.steps, f, r.renders if r.timer is not None else None, p)
            for r, f, p in zip(runners, flops, profiles)]


def _step(r: _Runner, batch: dict, i: int, total: int, schedule: tuple[int, int] | None = None, phases: bool = False) -> None:
    """One training step; ``phases``: each phase inside a ``record_function`` range (:data:`PHASES`)."""
    from contextlib import nullcontext

    from torch.profiler import record_function

    def phase(k):
        return record_function(PHASES[k]) if phases else nullcontext()

    step, steps = schedule if schedule is not None else (i + 1, total)
    with phase(0):
        out = r.method(batch, StepContext(torch.Generator().manual_seed(i), step, steps))
    r.optimizer.zero_grad(set_to_none=True)
    with phase(1):
        out.loss.backward()
    with phase(2):
        r.optimizer.step()


def mae_twin(cfg: ExperimentConfig) -> MAE:
    g = cfg.gmae
    return MAE(MAEConfig(encoder=g.encoder, mask_ratio=g.mask_ratio, decoder_embed_dim=g.decoder_embed_dim,
                         decoder_depth=g.decoder_depth, decoder_num_heads=g.decoder_num_heads))


def pretraining_batch(cfg: ExperimentConfig, step: int) -> tuple[dict, float]:
    """One collated batch (the first ``train.batch_size`` samples) of ``cfg``'s pretraining data with the
    dataset at schedule step ``step``, and the seconds a second build of it took (samples + collate, scenes
    cached)."""
    from .step_memory import first_batch_builder

    build = first_batch_builder(cfg, step, bench="bench step")
    build()
    start = time.perf_counter()
    batch = build()
    return batch, time.perf_counter() - start


@dataclass
class RecipeBench:
    preset: str
    recipe: str
    resolution: tuple[int, int]  # (H, W) of the data
    data_seconds: float  # building one batch (not in the step)
    optimizer: str  # what steps the parameters
    timings: list[StepTiming]  # the recipe first; for GMAE its MAE twin second
    gmae_over_mae: float | None = None
    lpips_stand_in: bool = False


def bench_recipe(preset: str, overrides: list[str] = (), device: str = "cpu", warmup: int = 3, repeats: int = 10,
                 profile: int = 3, sites: bool = True) -> RecipeBench:
    """One preset (or YAML path) with ``overrides``: its batch, timed steps, FLOPs and profile."""
    from .step_memory import bench_config

    device = torch.device(device)
    with tempfile.TemporaryDirectory() as scratch:
        cfg, stand_in = bench_config(preset, list(overrides), Path(scratch))
        torch.manual_seed(cfg.train.seed)
        method = build_method(cfg)  # LPIPS stand-in weights are read here, inside the scratch folder's life
    step = max(1, cfg.train.steps // 2)
    batch, data_seconds = pretraining_batch(cfg, step)
    batch = move_to_device(batch, device)
    method.to(device)
    optimizer = build_optimizer(method, cfg.optim, total_batch=cfg.train.batch_size, groups=method.param_groups())
    methods, optimizers = {cfg.method: method}, {cfg.method: optimizer}
    if cfg.method == "gmae":
        methods["mae (same encoder and decoder)"] = mae_twin(cfg)
    timings = time_methods(methods, batch, warmup, repeats, optimizers, schedule=(step, cfg.train.steps),
                           profile=profile, sites=sites, batch_size=cfg.train.batch_size)
    ratio = None
    if cfg.method == "gmae":
        ratio = statistics.median(a / b for a, b in zip(timings[0].step_seconds, timings[1].step_seconds))
    return RecipeBench(preset, cfg.method, (cfg.data.height, cfg.data.width), data_seconds,
                       f"{type(optimizer).__name__} as the trainer builds it", timings, ratio, stand_in)


def bench_step(presets, overrides: list[str] = (), device: str = "cpu", warmup: int = 3, repeats: int = 10,
               profile: int = 3, sites: bool = True, log=None) -> dict:
    """:func:`bench_recipe` of each preset in turn (``log``: called with each one's text as it is done),
    and the fp32 matmul peak of this device measured once."""
    if isinstance(presets, str):
        presets = [presets]
    if not presets:
        raise InputError("bench step: give a preset or config (e.g. gmae_tiny), several, or --all-tiny")
    peak = matmul_peak_gflops(torch.device(device))
    result = {"peak_gflops": peak, "device": str(device), "threads": torch.get_num_threads(), "recipes": []}
    for preset in presets:
        result["recipes"].append(bench_recipe(preset, overrides, device, warmup, repeats, profile, sites))
        if log is not None:
            log(format_recipe(result["recipes"][-1], peak))
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_recipe(r: RecipeBench, peak: float) -> str:
    H, W = r.resolution
    note = " (LPIPS: stand-in random weights)" if r.lpips_stand_in else ""
    lines = [f"{r.preset} ({r.recipe}, batch {r.timings[0].batch} at {W}x{H}; {r.optimizer}){note}; "
             f"building one batch {r.data_seconds * 1000:.1f} ms (samples + collate, not in the step)"]
    for t in r.timings:
        lines.append(
            f"  {t.name:32s}: {t.best_seconds * 1000:8.1f} ms/step (median {t.median_seconds * 1000:.1f}), "
            f"{t.images_per_second:7.1f} samples/s, {t.gflop_per_step:7.2f} GFLOP/step -> {t.gflops:6.1f} GFLOP/s "
            f"({100 * t.gflops / peak:.1f}% of peak)"
        )
        if t.render_seconds is not None:
            lines.append(
                f"    rendering (render(), fwd + bwd) {_pct(t.render_share)} of the step (median over the same "
                f"{len(t.step_seconds)} timed steps; {statistics.median(t.render_seconds) * 1000:.1f} ms/step)"
            )
        p = t.profile
        if p is not None:
            lines.append(f"    profile ({p.steps} steps, self time {p.total / p.steps * 1000:.1f} ms/step): matrix products "
                         f"{_pct(p.matmul_share)}, the rest {_pct(1 - p.matmul_share)}; largest of the rest:")
            for name, share in p.top_other():
                where = "; ".join(f"{100 * s:.0f}% {site}" for site, s in p.sites.get(name, [])[:3])
                lines.append(f"      {share * 100:5.1f}%  {name}" + (f"  <- {where}" if where else ""))
            if p.functions:
                lines.append("    largest non-matmul costs by renderssl function (bwd: the backward of the ops it issued):")
                for where, share, ops in p.functions:
                    detail = ", ".join(f"{n.removeprefix('aten::')} {100 * v:.1f}%" for n, v in ops)
                    lines.append(f"      {share * 100:5.1f}%  {where}  [{detail}]")
    if r.gmae_over_mae is not None:
        flops = r.timings[0].gflop_per_step / r.timings[1].gflop_per_step
        lines.append(f"  GMAE / MAE step time: {r.gmae_over_mae:.3f} (median over interleaved rounds; "
                     f"counted FLOPs {flops:.2f}x: the decoder's longer sequence)")
    return "\n".join(lines)


def format_table(result: dict) -> str:
    peak = result["peak_gflops"]
    lines = [f"fp32 matmul peak {peak:.1f} GFLOP/s on {result['device']} ({result['threads']} threads)",
             "| preset | batch | best ms | median ms | matmul share | largest other op | GFLOP/step | GFLOP/s | % of peak | rendering | data ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["recipes"]:
        for t in r.timings:
            p = t.profile
            top = p.top_other(1) if p is not None else []
            other = f"{top[0][0]} {100 * top[0][1]:.1f}%" if top else "-"
            name = r.preset if t is r.timings[0] else f"({t.name})"
            lines.append(f"| {name} | {t.batch} | {t.best_seconds * 1000:.1f} | {t.median_seconds * 1000:.1f} | "
                         f"{_pct(p.matmul_share) if p is not None else '-'} | {other} | {t.gflop_per_step:.2f} | "
                         f"{t.gflops:.1f} | {100 * t.gflops / peak:.1f}% | {_pct(t.render_share)} | "
                         f"{r.data_seconds * 1000:.1f} |")
    return "\n".join(lines)
