"""Training-step benchmark: seconds per optimizer step, images per second, achieved GFLOP/s against
this device's fp32 matmul peak, and for GMAE the step-time ratio against MAE at the same encoder.

- Step = forward + backward + AdamW step on one batch of synthetic training images, as the trainer
  runs it (the mask is drawn from a seeded generator each step). Best and median of ``repeats`` steps
  after ``warmup`` steps.
- FLOPs are counted once per configuration with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
  convolutions and attention, forward and backward; the rasterizer's elementwise work is not counted,
  its matmuls are), so GFLOP/s is a lower bound of the arithmetic done.
- Peak: the best of several (2048 x 2048) @ (2048 x 2048) fp32 matmuls on the same device, measured
  in the same run.
- The MAE twin of a GMAE config has the same encoder, mask ratio and decoder width, depth and heads:
  only the decoder's output (pixels per patch vs k Gaussians + splatting) differs, and GMAE's decoder
  runs 1 + visible + k tokens where MAE's runs 1 + L. The splatting share times projection and
  rasterization (forward + backward) of the step's Gaussians alone: the quantity the paper's "+1.5%"
  refers to.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..methods.base import StepContext
from ..experiment import ExperimentConfig, build_method
from ..methods.mae import MAE, MAEConfig
from .memory import synchronize


@dataclass
class StepTiming:
    name: str
    batch: int
    best_seconds: float
    median_seconds: float
    gflop_per_step: float

    @property
    def images_per_second(self) -> float:
        return self.batch / self.best_seconds

    @property
    def gflops(self) -> float:
        return self.gflop_per_step / self.best_seconds


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


def time_method(name: str, method: torch.nn.Module, images: torch.Tensor, warmup: int, repeats: int) -> StepTiming:
    from torch.utils.flop_counter import FlopCounterMode

    device = images.device
    method.to(device).train()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    batch = {"image": images}

    def step(i: int) -> None:
        out = method(batch, StepContext(torch.Generator().manual_seed(i), i + 1, repeats))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step(0)
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        step(i + 1)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return StepTiming(name, images.shape[0], min(times), statistics.median(times), counter.get_total_flops() / 1e9)


def splat_seconds(method, images: torch.Tensor, repeats: int = 3) -> float:
    """Best time of rendering GMAE's predicted Gaussians, forward + backward into them."""
    from ..render.splat import Gaussians

    with torch.no_grad():
        g, _, camera = method.predict_gaussians(images, torch.Generator().manual_seed(0))
    best = float("inf")
    for _ in range(repeats):
        leaf = Gaussians(*(t.detach().clone().requires_grad_(True) for t in (g.means, g.quats, g.scales, g.opacities, g.colors)))
        synchronize(images.device)
        start = time.perf_counter()
        method.render(leaf, camera).color.sum().backward()
        synchronize(images.device)
        best = min(best, time.perf_counter() - start)
    return best


def mae_twin(cfg: ExperimentConfig) -> MAE:
    g = cfg.gmae
    return MAE(MAEConfig(encoder=g.encoder, mask_ratio=g.mask_ratio, decoder_embed_dim=g.decoder_embed_dim,
                         decoder_depth=g.decoder_depth, decoder_num_heads=g.decoder_num_heads))


def bench_step(cfg: ExperimentConfig, device: str = "cpu", warmup: int = 3, repeats: int = 10) -> dict:
    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    images = training_images(cfg, cfg.train.batch_size, device)
    method = build_method(cfg)
    timings = [time_method(cfg.method, method, images, warmup, repeats)]
    result = {"timings": timings, "peak_gflops": matmul_peak_gflops(device), "device": str(device),
              "threads": torch.get_num_threads()}
    if cfg.method == "gmae":
        timings.append(time_method("mae (same encoder and decoder)", mae_twin(cfg), images, warmup, repeats))
        result["gmae_over_mae"] = timings[0].best_seconds / timings[1].best_seconds
        result["splat_share"] = splat_seconds(method, images) / timings[0].best_seconds
    return result


def format_step_bench(result: dict) -> str:
    lines = [f"training step on {result['device']} ({result['threads']} threads); fp32 matmul peak {result['peak_gflops']:.1f} GFLOP/s"]
    for t in result["timings"]:
        lines.append(
            f"  {t.name:32s} batch {t.batch:4d}: {t.best_seconds * 1000:8.1f} ms/step (median {t.median_seconds * 1000:.1f}), "
            f"{t.images_per_second:7.1f} images/s, {t.gflop_per_step:7.2f} GFLOP/step -> {t.gflops:6.1f} GFLOP/s "
            f"({100 * t.gflops / result['peak_gflops']:.0f}% of peak)"
        )
    if "gmae_over_mae" in result:
        flops = result["timings"][0].gflop_per_step / result["timings"][1].gflop_per_step
        lines.append(f"  GMAE / MAE step time: {result['gmae_over_mae']:.3f} (counted FLOPs {flops:.2f}x: the decoder's longer sequence)")
        lines.append(f"  splatting (projection + rasterization, fwd + bwd): {100 * result['splat_share']:.1f}% of the GMAE step")
    return "\n".join(lines)
