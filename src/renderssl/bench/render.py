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

Dense runs only where N x pixels <= ``dense_max_pairs`` (it holds several N x pixels tensors). Times are
the best of up to 3 runs (1 if a run takes over a second), after one untimed warm-up run for runs under
a second. Exponents are least-squares fits of log t = a + b log N + c log P over the grid points with
N >= 4096 (below that fixed per-call costs dominate).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..geometry import Cameras, intrinsics_matrix, look_at
from ..render.splat import Gaussians, rasterize
from ..render.surfels import surfel_gaussians
from .memory import PeakMemory, synchronize, use_mmap_for_large_blocks

COUNTS = (1024, 4096, 16384, 65536, 262144)
SIZES = ((64, 64), (128, 128), (320, 240), (640, 480))
PARAMS = ("means", "quats", "scales", "opacities", "colors")


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


def fit_exponents(timings: list[RenderTiming], min_gaussians: int = 4096) -> tuple[float, float] | None:
    """Least-squares (b, c) of log t = a + b log N + c log P."""
    pts = [t for t in timings if t.gaussians >= min_gaussians]
    if len({t.gaussians for t in pts}) < 2 or len({t.width * t.height for t in pts}) < 2:
        return None
    X = torch.tensor([[1.0, math.log(t.gaussians), math.log(t.width * t.height)] for t in pts], dtype=torch.float64)
    y = torch.tensor([math.log(t.seconds) for t in pts], dtype=torch.float64)
    coef = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    return float(coef[1]), float(coef[2])


def bench_render(
    counts=COUNTS,
    sizes=SIZES,
    scenes=("surface", "cloud"),
    backends=("tiles", "dense"),
    dense_max_pairs: float = 2.7e8,
    device: str = "cpu",
    volume: bool = True,
    log=print,
) -> RenderBench:
    device = torch.device(device)
    use_mmap_for_large_blocks()
    result = RenderBench()
    makers = {"cloud": cloud_scene}
    if "surface" in scenes:
        makers["surface"] = SurfaceScenes()
    for scene in scenes:
        for backend in backends:
            for n in counts:
                for w, h in sizes:
                    if backend == "dense" and n * w * h > dense_max_pairs:
                        continue
                    gauss, cams = makers[scene](n, w, h)
                    secs, peak, out = time_render(gauss, cams, backend, device)
                    t = RenderTiming(scene, backend, n, w, h, secs, peak, out.overflow, out.max_per_tile)
                    result.timings.append(t)
                    log(format_timing(t))
            sel = [t for t in result.timings if t.scene == scene and t.backend == backend]
            fit = fit_exponents(sel)
            if fit:
                result.exponents[(scene, backend)] = fit
    if volume:
        from .volume import bench_volume

        result.volume = bench_volume(device=str(device))
    return result


def format_timing(t: RenderTiming) -> str:
    mem = "n/a" if t.peak_bytes is None else f"{t.peak_bytes / 2**20:8.1f} MiB"
    return (
        f"{t.scene:8s} {t.backend:6s} N={t.gaussians:7d} {t.width:4d}x{t.height:<4d} "
        f"fwd+bwd {t.seconds * 1000:9.1f} ms  peak {mem}  max/tile {t.max_per_tile:6d}  overflow {t.overflow}"
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
    lines.append("Scaling exponents, t ~ N^b P^c (N >= 4096):")
    for (scene, backend), (b, c) in result.exponents.items():
        lines.append(f"  {scene:8s} {backend:6s} b (Gaussians) = {b:.2f}   c (pixels) = {c:.2f}")
    if result.volume:
        from .volume import format_volume_bench

        lines.append(format_volume_bench(result.volume))
    return "\n".join(lines)
