"""3D encoder benchmark: forward + backward seconds and peak memory of the SparseUNet and PointNet++
versus point count, with fitted scaling exponents t ~ N^b and memory ~ N^b.

- Input: one scene-like cloud, not a uniform random one: the frames of a synthetic room rendered at
  320x240 and fused (:func:`~renderssl.data.points.fuse_frames`), then a uniform random subset of N
  points (the same seed for every N), features colour + normal (6 channels, PonderV2's input). Points lie
  on surfaces, as in RGB-D scans, which is what sets a sparse conv's neighbour density.
- Step: ``encoder(points, features, offset)`` then ``features.square().mean().backward()`` in train
  mode (BatchNorm on batch statistics). Best of ``repeats`` runs; one run when the first exceeds 2 s.
- Peak memory: :class:`~renderssl.bench.memory.PeakMemory` over the first timed run, after one warm-up
  step per encoder (resident-set growth on CPU with large blocks served by mmap, allocator peak on
  CUDA): activations and temporaries. Parameters and the previous step's gradients (freed and
  reallocated within the step) are held at the start, so they do not count.
- The SparseUNet voxelises at its ``grid_size`` (0.02 m by default); the voxel count is reported.
- Exponents are fitted only over at least 3 distinct counts (:mod:`.scaling`); with fewer the table
  says so instead of quoting a slope through two points.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..data.points import fuse_frames
from ..data.synthetic import SyntheticConfig, generate_scene
from ..models.encoders.pointnet2 import PointNet2, PointNet2Config
from ..models.encoders.sparse_unet import SparseUNet, SparseUNetConfig
from .memory import PeakMemory, synchronize, use_mmap_for_large_blocks
from .scaling import MIN_DISTINCT, fit_power_law

COUNTS = (10_000, 20_000, 50_000, 100_000, 200_000)
SLOW_SECONDS = 2.0


@dataclass
class EncoderTiming:
    encoder: str
    points: int
    seconds: float
    peak_bytes: int | None
    voxels: int | None = None


@dataclass
class EncoderBench:
    timings: list[EncoderTiming] = field(default_factory=list)
    time_exponents: dict = field(default_factory=dict)  # encoder -> b in t ~ N^b
    memory_exponents: dict = field(default_factory=dict)


def bench_cloud(max_points: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, 3) points and (M, 6) colour + normal features of a fused synthetic room, M >= max_points."""
    views = max(10, math.ceil(max_points / (320 * 240 * 0.8)))
    scene = generate_scene(seed, SyntheticConfig(kind="room", num_views=views, width=320, height=240))
    cloud = fuse_frames(scene)
    return cloud.points, torch.cat([cloud.colors, cloud.normals], dim=1)


def build_encoders(sparse_unet: str, pointnet2: str) -> dict[str, torch.nn.Module]:
    return {
        f"sparse_unet:{sparse_unet}": SparseUNet(SparseUNetConfig(preset=sparse_unet, in_channels=6)),
        f"pointnet2:{pointnet2}": PointNet2(PointNet2Config(preset=pointnet2, in_channels=6)),
    }


def time_encoder(encoder: torch.nn.Module, points, features, device: torch.device, repeats: int = 3):
    """Best forward+backward seconds and the peak bytes of the first run."""
    points, features = points.to(device), features.to(device)
    offset = torch.tensor([points.shape[0]], device=device)

    def step():
        encoder.zero_grad(set_to_none=True)
        encoder(points, features, offset).square().mean().backward()
        synchronize(device)

    with PeakMemory(device) as peak:
        start = time.perf_counter()
        step()
        times = [time.perf_counter() - start]
    if times[0] < SLOW_SECONDS:
        for _ in range(repeats - 1):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return min(times), peak.bytes


def fit_exponent(xs: list[float], ys: list[float | None]) -> float | None:
    """Least-squares b of log y = a + b log x; None with fewer than 3 distinct x or a y not > 0."""
    fit, _ = fit_power_law({"counts": xs}, ys)
    return None if fit is None else fit["counts"]


def bench_encoders(counts=COUNTS, sparse_unet: str = "base", pointnet2: str = "scene", device="cpu",
                   repeats: int = 3, log=print) -> EncoderBench:
    device = torch.device(device)
    use_mmap_for_large_blocks()
    points, features = bench_cloud(max(counts))
    order = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))
    result = EncoderBench()
    for name, encoder in build_encoders(sparse_unet, pointnet2).items():
        encoder.to(device).train()
        time_encoder(encoder, points[order[:min(counts)]], features[order[:min(counts)]], device, repeats=1)  # warm-up
        for n in counts:
            idx = order[:n]
            seconds, peak = time_encoder(encoder, points[idx], features[idx], device, repeats)
            voxels = None
            if isinstance(encoder, SparseUNet):
                with torch.no_grad():
                    voxels = len(encoder.voxelize(points[idx].to(device), features[idx].to(device),
                                                  torch.tensor([n], device=device))[0])
            result.timings.append(EncoderTiming(name, n, seconds, peak, voxels))
            log(format_timing(result.timings[-1]))
        mine = [t for t in result.timings if t.encoder == name]
        result.time_exponents[name] = fit_exponent([t.points for t in mine], [t.seconds for t in mine])
        result.memory_exponents[name] = fit_exponent([t.points for t in mine], [t.peak_bytes for t in mine])
    return result


def format_timing(t: EncoderTiming) -> str:
    mem = f"{t.peak_bytes / 2**20:8.0f} MiB" if t.peak_bytes is not None else "      n/a"
    vox = f"  ({t.voxels} voxels)" if t.voxels is not None else ""
    return f"{t.encoder:18s} {t.points:>7d} points  fwd+bwd {t.seconds:7.3f} s  peak {mem}{vox}"


def format_encoder_bench(result: EncoderBench) -> str:
    lines = [f"Scaling exponents (least squares over all counts, >= {MIN_DISTINCT} of them): time ~ N^b, memory ~ N^b"]
    for name in result.time_exponents:
        tb, mb = result.time_exponents[name], result.memory_exponents[name]
        if tb is None:
            counts = len({t.points for t in result.timings if t.encoder == name})
            lines.append(f"  {name:18s} not fitted: too few counts ({counts}; need >= {MIN_DISTINCT})")
            continue
        lines.append(f"  {name:18s} time b = {tb:.2f}" + (f", memory b = {mb:.2f}" if mb is not None else ""))
    names = list(result.time_exponents)
    if len(names) == 2:
        lines.append(f"Time ratio {names[0]} / {names[1]} at the same N:")
        by = {(t.encoder, t.points): t for t in result.timings}
        for n in sorted({t.points for t in result.timings}):
            a, b = by.get((names[0], n)), by.get((names[1], n))
            if a and b:
                lines.append(f"  {n:>7d} points: {a.seconds / b.seconds:.2f}x")
    return "\n".join(lines)


__all__ = ["COUNTS", "EncoderBench", "EncoderTiming", "bench_encoders", "format_encoder_bench"]
