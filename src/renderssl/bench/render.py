"""Renderer benchmark: forward + backward time and peak memory of the Gaussian rasterizer over a grid
of Gaussian counts and image sizes, fitted scaling exponents, and volume-renderer rays per second.

Scenes (both B = 1 scene, V = 1 camera, 3 colour channels; loss = sum of colour + sum of depth):

- ``surface`` (realistic): surfel Gaussians (render/surfels.py) on the back-projected surfaces of a
  synthetic room (seed 0, 24 views at 128x128 give ~390k points; N of them are drawn at random), seen
  from a point of the room's camera path between two training views. Pixels saturate after a few
  layers, as in fitted or predicted scenes.
- ``cloud`` (stress): N Gaussians uniform in [-1, 1]^3, scales 0.03 x U(0.2, 1.2), opacities U(0.05,
  0.95), seen from 4.3 units away with f = 0.9 W; per-tile lists grow linearly with N and many pixels
  never saturate.

Dense runs only where its estimated peak memory fits a budget: it holds several N x pixels float32
tensors at once (alpha, transmittances, weights and their gradients); measured on CPU (resident-set
peak, :class:`~.memory.PeakMemory`), its peak is 66 bytes per (Gaussian, pixel) pair from 512 to 4096
Gaussians at 48x48 to 128x128 pixels (plus ~10 MB fixed, which matters only below ~1e6 pairs), so the
estimate is N x pixels x views x ``DENSE_BYTES_PER_PAIR`` = 72 bytes (the measurement plus ~9%). The budget is
``dense_max_bytes`` (``--dense-max-gib``), by default ``DENSE_BUDGET_FRACTION`` = 0.5 of the memory
available when the bench starts (MemAvailable of /proc/meminfo on CPU, free memory of
``torch.cuda.mem_get_info`` on CUDA): half, because the tiles runs, the scenes and other processes need
the rest. A configuration above it is skipped before anything is allocated, with the reason logged and
kept in ``RenderBench.skipped``. ``--quick`` caps the default budget at ``QUICK_DENSE_MAX_GIB`` = 2 GiB
(dense at 4.5 GB took 25-45 s per configuration on a loaded 2-core machine; a quick run only checks
that everything works). Times are the best of up to 3 runs (1 if a run takes over a second),
after one untimed warm-up run for runs under a second. Exponents are least-squares fits of log t = a +
b log N + c log P over the grid points with N >= 4096 (below that fixed per-call costs dominate), made
only with at least 3 distinct N and 3 distinct image sizes among them (:mod:`.scaling`): otherwise the
reason is printed instead of an exponent.

Compositing (``--compositing``, :func:`bench_compositing`; also part of the full run): the compiled
kernel alone against the arithmetic it needs, all with ONE thread in the same run. The kernel's inputs
are captured from a real ``compiled`` render of the surface scene (16k Gaussians, 320x240), then its
forward and backward are timed directly (best of ``repeats``). A *pair* is a (pixel, Gaussian) pair
that gsplat's per-pixel algorithm visits: each pixel walks its tile's depth-sorted list up to and
including the Gaussian at which it terminates (or to the end), whether or not that Gaussian covers it;
the kernel counts them (``visited``) and both ns/pair figures divide by this one count (the useful
work; the backward's own walk, sum of last + 1, is printed beside it). The reference is the ns per
element of an in-cache vectorised exp: the kernel's own exp over a 4096-element float32 array,
repeated, timed inside the extension (no Python call per repetition); ``torch.exp`` on the same
4096-element tensor (``out=``, one call per repetition, so its per-call overhead is included) is printed
beside it. Ratio = kernel ns/pair / exp ns/element (goal <= 3). Last, the whole forward + backward
(:func:`time_render`) of ``compiled`` against its readable twin ``tiles`` on the same scene.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..geometry import Cameras, intrinsics_matrix, look_at
from ..render.splat import Gaussians, rasterize
from ..render.surfels import surfel_gaussians
from .memory import PeakMemory, synchronize, use_mmap_for_large_blocks
from .scaling import fit_power_law

COUNTS = (1024, 4096, 16384, 65536, 262144)
SIZES = ((64, 64), (128, 128), (320, 240), (640, 480))
PARAMS = ("means", "quats", "scales", "opacities", "colors")
DENSE_BYTES_PER_PAIR = 72  # peak bytes per (Gaussian, pixel) pair of the dense backend, see the module doc
DENSE_BUDGET_FRACTION = 0.5
QUICK_DENSE_MAX_GIB = 2.0  # --quick: the dense budget is at most this (a check that it works, not a figure)
MIN_FIT_GAUSSIANS = 4096


@dataclass
class RenderTiming:
    scene: str
    backend: str
    gaussians: int
    width: int
    height: int
    seconds: float
    peak_bytes: int | None
    overflow: int
    max_per_tile: int


@dataclass
class RenderBench:
    timings: list[RenderTiming] = field(default_factory=list)
    exponents: dict = field(default_factory=dict)  # (scene, backend) -> (b_gaussians, c_pixels)
    fit_notes: dict = field(default_factory=dict)  # (scene, backend) -> why no exponent was fitted
    skipped: list = field(default_factory=list)  # lines naming the configurations not run and why
    dense_budget_bytes: float = 0.0
    volume: dict = field(default_factory=dict)


def cloud_scene(n: int, width: int, height: int, seed: int = 0) -> tuple[Gaussians, Cameras]:
    g = torch.Generator().manual_seed(seed)
    gauss = Gaussians(
        means=torch.rand(1, n, 3, generator=g) * 2 - 1,
        quats=torch.randn(1, n, 4, generator=g),
        scales=(torch.rand(1, n, 3, generator=g) + 0.2) * 0.03,
        opacities=torch.rand(1, n, generator=g) * 0.9 + 0.05,
        colors=torch.rand(1, n, 3, generator=g),
    )
    c2w = look_at(torch.tensor([[0.0, -4.0, 1.5]]), torch.zeros(1, 3))[None]  # (1, 1, 4, 4)
    K = intrinsics_matrix(0.9 * width, 0.9 * width, width / 2, height / 2)[None, None]
    return gauss, Cameras(K, c2w, width, height)


class SurfaceScenes:
    """Surfel Gaussians of one synthetic room, generated once and subsampled per N."""

    def __init__(self, seed: int = 0, views: int = 24, size: int = 128):
        from ..data.points import viewset_to_pointcloud
        from ..data.synthetic import SyntheticConfig, generate_scene, make_scene_layout, scene_cameras

        cfg = SyntheticConfig(kind="room", num_views=views, width=size, height=size)
        self.layout = make_scene_layout(seed, cfg)
        self.cloud = viewset_to_pointcloud(generate_scene(seed, cfg))
        self._cameras = scene_cameras

    def __call__(self, n: int, width: int, height: int) -> tuple[Gaussians, Cameras]:
        keep = torch.randperm(len(self.cloud), generator=torch.Generator().manual_seed(n))[:n]
        cloud = self.cloud.select(keep)
        spacing = math.sqrt(_surface_area(self.cloud) / len(cloud))
        cams = self._cameras(self.layout, torch.tensor([2.5]), width=width, height=height)
        return surfel_gaussians(cloud, spacing=spacing), cams.reshape(1, 1)


def _surface_area(cloud) -> float:
    """Area covered by a dense back-projected cloud: points x (mean spacing)^2."""
    from ..render.surfels import mean_spacing

    return len(cloud) * mean_spacing(cloud.points) ** 2


def time_render(gauss: Gaussians, cams: Cameras, backend: str, device: torch.device) -> tuple[float, int | None, object]:
    """Best forward+backward seconds, peak bytes of one run, and the last output."""
    gauss = Gaussians(*(getattr(gauss, p).to(device).requires_grad_(True) for p in PARAMS))
    cams = cams.to(device)

    def step():
        out = rasterize(gauss, cams, backend=backend)
        (out.color.sum() + out.depth.sum()).backward()
        synchronize(device)
        return out

    with PeakMemory(device) as peak:
        start = time.perf_counter()
        out = step()
        first = time.perf_counter() - start
    times = [first]
    if first < 1.0:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            out = step()
            times.append(time.perf_counter() - start)
    return min(times), peak.bytes, out


def fit_exponents(timings: list[RenderTiming], min_gaussians: int = MIN_FIT_GAUSSIANS) -> tuple[tuple[float, float] | None, str | None]:
    """((b, c), None) of log t = a + b log N + c log P over the timings with N >= ``min_gaussians``, or
    (None, reason) with fewer than 3 distinct N or 3 distinct image sizes among them."""
    pts = [t for t in timings if t.gaussians >= min_gaussians]
    fit, reason = fit_power_law({f"Gaussian counts >= {min_gaussians}": [t.gaussians for t in pts],
                                 "image sizes": [t.width * t.height for t in pts]}, [t.seconds for t in pts])
    return (None, reason) if fit is None else (tuple(fit.values()), None)


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take now: CUDA free memory, or MemAvailable of /proc/meminfo."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_dense_budget(device: torch.device, fraction: float = DENSE_BUDGET_FRACTION) -> float:
    """``fraction`` of the available memory; 4 GiB where it cannot be read."""
    available = available_memory_bytes(torch.device(device))
    return fraction * available if available is not None else 4 * 2**30


def dense_peak_estimate(gaussians: int, width: int, height: int, views: int = 1) -> int:
    """Estimated peak bytes of one dense forward + backward: N x pixels x views x DENSE_BYTES_PER_PAIR."""
    return gaussians * width * height * views * DENSE_BYTES_PER_PAIR


def bench_render(
    counts=COUNTS,
    sizes=SIZES,
    scenes=("surface", "cloud"),
    backends=("tiles", "dense"),
    dense_max_bytes: float | None = None,
    device: str = "cpu",
    volume: bool = True,
    log=print,
) -> RenderBench:
    """Time every (scene, backend, N, size) of the grid; ``dense_max_bytes`` is the dense backend's
    memory budget (None: half the available memory; see the module doc)."""
    device = torch.device(device)
    use_mmap_for_large_blocks()
    result = RenderBench()
    budget = default_dense_budget(device) if dense_max_bytes is None else float(dense_max_bytes)
    result.dense_budget_bytes = budget
    if "dense" in backends:
        log(f"dense reference: memory budget {budget / 2**30:.2f} GiB; estimated peak = N x pixels x "
            f"{DENSE_BYTES_PER_PAIR} B")
    makers = {"cloud": cloud_scene}
    if "surface" in scenes:
        makers["surface"] = SurfaceScenes()
    for scene in scenes:
        for backend in backends:
            for n in counts:
                for w, h in sizes:
                    if backend == "dense" and dense_peak_estimate(n, w, h) > budget:
                        line = (f"{scene:8s} dense  N={n:7d} {w:4d}x{h:<4d} skipped: estimated peak "
                                f"{dense_peak_estimate(n, w, h) / 2**30:.2f} GiB > budget {budget / 2**30:.2f} GiB (--dense-max-gib)")
                        result.skipped.append(line)
                        log(line)
                        continue
                    gauss, cams = makers[scene](n, w, h)
                    secs, peak, out = time_render(gauss, cams, backend, device)
                    t = RenderTiming(scene, backend, n, w, h, secs, peak, out.overflow, out.max_per_tile)
                    result.timings.append(t)
                    log(format_timing(t))
            sel = [t for t in result.timings if t.scene == scene and t.backend == backend]
            fit, reason = fit_exponents(sel)
            if fit is not None:
                result.exponents[(scene, backend)] = fit
            else:
                result.fit_notes[(scene, backend)] = reason
    if volume:
        from .volume import bench_volume

        result.volume = bench_volume(device=str(device))
    return result


COMPOSITING_SCENE = (16384, 320, 240)  # surface scene: Gaussians, width, height


@dataclass
class CompositingBench:
    gaussians: int
    width: int
    height: int
    simd: str  # instruction set of the kernel's build
    pairs: int  # (pixel, Gaussian) pairs the per-pixel algorithm visits (forward walk)
    backward_pairs: int  # pairs of the backward walk, sum of (last + 1)
    forward_seconds: float
    backward_seconds: float
    exp_ns: float  # kernel's vectorised exp, ns per element, in cache, float32
    torch_exp_ns: float  # torch.exp on 4096 float32 elements, per element, call overhead included
    compiled_seconds: float  # whole forward + backward, compiled backend
    tiles_seconds: float  # whole forward + backward, tiles backend

    @property
    def forward_ns(self) -> float:
        return self.forward_seconds * 1e9 / max(self.pairs, 1)

    @property
    def backward_ns(self) -> float:
        return self.backward_seconds * 1e9 / max(self.pairs, 1)


def capture_compositing_inputs(gauss: Gaussians, cams: Cameras) -> tuple:
    """(coef, values, pair_gauss, row_start, row_count) that a ``compiled`` render hands its kernel."""
    from unittest import mock

    from ..render.splat_compiled import CompositeTilesCompiled

    got = []
    apply = CompositeTilesCompiled.apply

    def record(*args):
        got.append(args)
        return apply(*args)

    with mock.patch.object(CompositeTilesCompiled, "apply", record), torch.no_grad():
        rasterize(gauss, cams, backend="compiled")
    if len(got) != 1:
        raise RuntimeError(f"expected one compositing call in a compiled render, saw {len(got)}")
    return tuple(t.detach().contiguous() for t in got[0])


def _best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def torch_exp_ns(n: int = 4096, repeats: int = 2000) -> float:
    """ns per element of torch.exp on an in-cache float32 tensor of n elements (best of 3 rounds)."""
    x = torch.linspace(-8.0, 0.0, n)
    y = torch.empty_like(x)
    torch.exp(x, out=y)
    return min(_best_seconds(lambda: [torch.exp(x, out=y) for _ in range(repeats)], 1) for _ in range(3)) * 1e9 / (n * repeats)


def bench_compositing(gaussians: int = COMPOSITING_SCENE[0], width: int = COMPOSITING_SCENE[1],
                      height: int = COMPOSITING_SCENE[2], repeats: int = 5, whole: bool = True,
                      surface: "SurfaceScenes | None" = None, log=print) -> CompositingBench:
    """The compiled compositing kernel in ns per visited pair vs an in-cache exp, one thread (module doc)."""
    from ..render.splat_compiled import compiled_kernel

    kernel = compiled_kernel()
    if kernel is None:
        raise RuntimeError("the compiled kernel is unavailable here (no C++ compiler?)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gauss, cams = (surface or SurfaceScenes())(gaussians, width, height)
        coef, values, pair_gauss, row_start, row_count = capture_compositing_inputs(gauss, cams)
        out, T, last, visited = kernel.composite_forward(coef, pair_gauss, values, row_start, row_count)
        g = torch.Generator().manual_seed(0)
        g_out, g_T = torch.rand(out.shape, generator=g, dtype=out.dtype), torch.rand(T.shape, generator=g, dtype=T.dtype)
        fwd = _best_seconds(lambda: kernel.composite_forward(coef, pair_gauss, values, row_start, row_count), repeats)
        bwd = _best_seconds(lambda: kernel.composite_backward(coef, pair_gauss, values, row_start, T, last, g_out, g_T), repeats)
        exp_ns = min(kernel.exp_ns_per_element(4096, 20000) for _ in range(3))
        t_exp = torch_exp_ns()
        comp = tiles = float("nan")
        if whole:
            comp = time_render(gauss, cams, "compiled", torch.device("cpu"))[0]
            tiles = time_render(gauss, cams, "tiles", torch.device("cpu"))[0]
    finally:
        torch.set_num_threads(threads)
    result = CompositingBench(gaussians, width, height, kernel.simd_target(), int(visited.sum()), int((last + 1).sum()),
                              fwd, bwd, exp_ns, t_exp, comp, tiles)
    log(format_compositing(result))
    return result


def format_compositing(r: CompositingBench) -> str:
    lines = [
        f"Compositing kernel (compiled, {r.simd} build), surface N={r.gaussians} {r.width}x{r.height}, 1 thread:",
        f"  pairs visited by the per-pixel algorithm {r.pairs / 1e6:.2f} M (backward walk {r.backward_pairs / 1e6:.2f} M)",
        f"  forward  {r.forward_seconds * 1000:8.2f} ms  {r.forward_ns:6.2f} ns/pair  = {r.forward_ns / r.exp_ns:5.2f}x exp",
        f"  backward {r.backward_seconds * 1000:8.2f} ms  {r.backward_ns:6.2f} ns/pair  = {r.backward_ns / r.exp_ns:5.2f}x exp",
        f"  in-cache vectorised exp: {r.exp_ns:.3f} ns/element (kernel's exp, 4096 float32, in the extension); "
        f"torch.exp {r.torch_exp_ns:.3f} ns/element (4096 float32, per-call overhead included)",
        f"  ratio to exp (goal <= 3): forward {r.forward_ns / r.exp_ns:.2f}x, backward {r.backward_ns / r.exp_ns:.2f}x "
        f"against the kernel's exp; {r.forward_ns / r.torch_exp_ns:.2f}x, {r.backward_ns / r.torch_exp_ns:.2f}x against torch.exp",
    ]
    if r.compiled_seconds == r.compiled_seconds:  # not NaN
        lines.append(f"  whole forward+backward: compiled {r.compiled_seconds * 1000:.1f} ms vs tiles {r.tiles_seconds * 1000:.1f} ms "
                     f"-> {r.tiles_seconds / r.compiled_seconds:.1f}x")
    return "\n".join(lines)


def format_timing(t: RenderTiming) -> str:
    mem = "n/a" if t.peak_bytes is None else f"{t.peak_bytes / 2**20:8.1f} MiB"
    estimate = f" (est. {dense_peak_estimate(t.gaussians, t.width, t.height) / 2**20:.0f})" if t.backend == "dense" else ""
    return (
        f"{t.scene:8s} {t.backend:6s} N={t.gaussians:7d} {t.width:4d}x{t.height:<4d} "
        f"fwd+bwd {t.seconds * 1000:9.1f} ms  peak {mem}{estimate}  max/tile {t.max_per_tile:6d}  overflow {t.overflow}"
    )


def speedups(result: RenderBench) -> list[str]:
    """Lines comparing tiles with dense where both ran."""
    lines = []
    index = {(t.scene, t.backend, t.gaussians, t.width, t.height): t for t in result.timings}
    for (scene, backend, n, w, h), t in index.items():
        dense = index.get((scene, "dense", n, w, h))
        if backend == "tiles" and dense is not None:
            lines.append(
                f"{scene:8s} N={n:7d} {w}x{h}: tiles {t.seconds * 1000:.1f} ms vs dense {dense.seconds * 1000:.1f} ms "
                f"-> {dense.seconds / t.seconds:.1f}x{'  (tiles overflowed)' if t.overflow else ''}"
            )
    return lines


def format_render_bench(result: RenderBench) -> str:
    lines = ["Speed-up of tiles over dense (same scene, same run):"] + ["  " + s for s in speedups(result)]
    if result.skipped:
        lines.append(f"Skipped (dense over its {result.dense_budget_bytes / 2**30:.2f} GiB memory budget): {len(result.skipped)} configurations")
    lines.append(f"Scaling exponents, t ~ N^b P^c (N >= {MIN_FIT_GAUSSIANS}, >= 3 counts and >= 3 sizes):")
    for (scene, backend), (b, c) in result.exponents.items():
        lines.append(f"  {scene:8s} {backend:6s} b (Gaussians) = {b:.2f}   c (pixels) = {c:.2f}")
    for (scene, backend), reason in result.fit_notes.items():
        lines.append(f"  {scene:8s} {backend:6s} not fitted: {reason}")
    if result.volume:
        from .volume import format_volume_bench

        lines.append(format_volume_bench(result.volume))
    return "\n".join(lines)
