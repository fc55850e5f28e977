"""Volume-renderer throughput: rays per second, forward + backward.

Two figures:
- ``nerf``: ``composite_density`` of 64 samples x C = 3 on 4096 rays, forward + backward into the
  densities and colours (the samplers and any MLP are excluded: compositing only).
- ``neus``: ``render_neus`` with PonderV2's 96 coarse + 36 importance samples (1 up-sampling step) on
  1024 rays through an MLP-free field: a (1, 16, 32, 32, 32) feature volume read by
  ``trilinear_lookup`` (channel 0 = SDF, initialised to a sphere; channels 1-3 -> sigmoid RGB), with
  ∇sdf by autograd, then L1 RGB + L1 depth + 0.01 eikonal, backward through the eikonal double backward
  into the volume and the variance. Includes the no-grad SDF reads of the up-sampler.

Timing: ``time.perf_counter`` around whole iterations after ``warmup`` untimed ones; CUDA is
synchronised around each. Both the median and the best of ``repeats`` are reported: on a shared CPU the
best is the steadier figure, and rays/s is computed from it. ``torch.set_num_threads`` is left as the
caller set it.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..render.grid import trilinear_lookup, world_to_grid
from ..render.volume import AutogradSDFField, SingleVariance, composite_density, eikonal_loss, render_neus, sample_stratified
from .memory import synchronize


def _time(step, device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """(median, best) seconds of ``step()``."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def _nerf_step(device: torch.device, rays: int, samples: int, generator: torch.Generator):
    near = torch.full((rays,), 0.5, device=device)
    t = sample_stratified(near, near + 4.0, samples, generator.manual_seed(0) if device.type == "cpu" else None)  # (R, S)
    sigmas = torch.rand(rays, samples, device=device).mul_(2.0).requires_grad_(True)  # (R, S)
    colors = torch.rand(rays, samples, 3, device=device, requires_grad=True)  # (R, S, 3)
    target = torch.rand(rays, 3, device=device)

    def step():
        sigmas.grad = colors.grad = None
        out = composite_density(sigmas, t, colors)
        loss = (out.features - target).abs().mean() + out.depth.mean()
        loss.backward()

    return step


def sphere_feature_volume(shape=(1, 16, 32, 32, 32), radius: float = 0.5, device="cpu") -> torch.Tensor:
    """(1, C, D, H, W) over [-1, 1]^3: channel 0 = |x| - radius, the rest small noise."""
    _, C, D, H, W = shape
    axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in (D, H, W)]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    sdf = torch.stack([x, y, z]).norm(dim=0) - radius  # (D, H, W)
    g = torch.Generator(device="cpu").manual_seed(0)
    noise = 0.1 * torch.randn(1, C - 1, D, H, W, generator=g).to(device)
    return torch.cat([sdf[None, None], noise], dim=1)


def grid_sdf_field(volume: torch.Tensor, bbox_min=(-1.0, -1.0, -1.0), bbox_max=(1.0, 1.0, 1.0)) -> AutogradSDFField:
    """MLP-free NeuS field on a feature volume: sdf = channel 0, RGB = sigmoid(channels 1-3)."""
    C = volume.shape[1]

    def sdf_fn(points):  # (..., 3) world
        coords = world_to_grid(points, bbox_min, bbox_max).reshape(1, -1, 3)  # (1, N, 3)
        feats = trilinear_lookup(volume, coords)[0].reshape(*points.shape[:-1], C)  # (..., C)
        return feats[..., 0], feats[..., 1:]

    return AutogradSDFField(sdf_fn, lambda p, dirs, grads, geo: torch.sigmoid(geo[..., :3]))


def _neus_step(device: torch.device, rays: int, n_samples: int, n_importance: int, generator: torch.Generator):
    volume = sphere_feature_volume(device=device).requires_grad_(True)
    variance = SingleVariance().to(device)
    field = grid_sdf_field(volume)
    # cameras on a sphere of radius 2.5 looking at random points inside the unit ball
    g = generator.manual_seed(1)
    origins = torch.nn.functional.normalize(torch.randn(rays, 3, generator=g), dim=-1) * 2.5  # (R, 3)
    targets = (torch.rand(rays, 3, generator=g) * 2 - 1) * 0.6  # (R, 3)
    dirs = torch.nn.functional.normalize(targets - origins, dim=-1)
    origins, dirs = origins.to(device), dirs.to(device)
    near, far = torch.full((rays,), 1.0, device=device), torch.full((rays,), 4.0, device=device)
    target_rgb, target_depth = torch.rand(rays, 3, device=device), torch.full((rays,), 2.0, device=device)

    def step():
        volume.grad = variance.variance.grad = None
        out = render_neus(origins, dirs, near, far, field, n_samples, n_importance, 1, variance)
        loss = (out.features - target_rgb).abs().mean() + (out.depth - target_depth).abs().mean()
        loss = loss + 0.01 * eikonal_loss(out.gradients)
        loss.backward()

    return step


def bench_volume(device="cpu", warmup: int = 2, repeats: int = 5) -> dict:
    """Rays per second of NeRF compositing and NeuS rendering, forward + backward (see module doc)."""
    device = torch.device(device)
    generator = torch.Generator(device="cpu")
    nerf_rays, nerf_samples = 4096, 64
    neus_rays, neus_samples, neus_importance = 1024, 96, 36
    nerf_med, nerf_s = _time(_nerf_step(device, nerf_rays, nerf_samples, generator), device, warmup, repeats)
    neus_med, neus_s = _time(_neus_step(device, neus_rays, neus_samples, neus_importance, generator), device, warmup, repeats)
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "nerf_rays": nerf_rays,
        "nerf_samples": nerf_samples,
        "nerf_seconds": nerf_s,
        "nerf_seconds_median": nerf_med,
        "nerf_rays_per_s": nerf_rays / nerf_s,
        "neus_rays": neus_rays,
        "neus_samples": neus_samples + neus_importance,
        "neus_volume": (1, 16, 32, 32, 32),
        "neus_seconds": neus_s,
        "neus_seconds_median": neus_med,
        "neus_rays_per_s": neus_rays / neus_s,
    }


def format_volume_bench(d: dict) -> str:
    """A short human-readable table of :func:`bench_volume`'s figures (best time, median in brackets)."""
    return "\n".join([
        f"volume rendering bench ({d['device']}, {d['threads']} threads, torch {d['torch']}), forward+backward",
        f"  NeRF composite  {d['nerf_rays']:>5} rays x {d['nerf_samples']:>3} samples x C=3   "
        f"{d['nerf_seconds'] * 1e3:8.1f} ms (median {d['nerf_seconds_median'] * 1e3:.1f})  {d['nerf_rays_per_s']:>10,.0f} rays/s",
        f"  NeuS grid SDF   {d['neus_rays']:>5} rays x {d['neus_samples']:>3} samples (96+36) "
        f"{d['neus_seconds'] * 1e3:8.1f} ms (median {d['neus_seconds_median'] * 1e3:.1f})  {d['neus_rays_per_s']:>10,.0f} rays/s"
        "  (incl. eikonal double backward)",
    ])
