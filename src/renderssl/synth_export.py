"""``renderssl data synth``: write procedural scenes to disk in the common formats, with a preview.

Layout under ``out``: ``<format>/<scene>/`` for each requested format (default ``scannet``, the
ScanNet-style RGB-D export, and ``blender``, transforms.json; also ``7scenes`` and ``llff``),
``ply/<scene>.ply`` (labelled point cloud), ``preview.png``.

The preview shows, for the first scene, a few views' colour, depth, normals, semantic and instance
maps, and a check of the Gaussian renderer: surfel Gaussians built from the scene's back-projected
views, rasterized at a camera half-way between two views (a view that was not rendered), beside the
exact ray-cast image of that camera, with the PSNR between them.

It lives outside ``data/`` because the preview needs ``eval`` (PSNR) and ``viz``: ``data/`` imports
neither.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.formats import SCENE_FORMATS, write_ply, write_viewset
from .data.points import viewset_to_pointcloud
from .data.synthetic import CLASS_NAMES, SyntheticConfig, generate_scene, make_scene_layout, render_layout, scene_cameras
from .data.types import ViewSet
from .errors import InputError
from .eval.metrics import psnr
from .render.splat import rasterize
from .render.surfels import surfel_gaussians
from .viz import colorize_depth, colorize_labels, colorize_normals, save_grid


@dataclass
class SynthSummary:
    out: Path
    scenes: list[str] = field(default_factory=list)
    views: int = 0
    generate_seconds: float = 0.0
    write_seconds: float = 0.0
    preview: Path | None = None
    preview_psnr: float | None = None


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size: expected WIDTHxHEIGHT such as 64x64, got {text!r}") from None
    if w < 8 or h < 8:
        raise InputError(f"--size: images must be at least 8x8, got {text!r}")
    return w, h


def novel_view_check(viewset: ViewSet, config: SyntheticConfig, seed: int, view: float = 0.5):
    """(splatted image, exact image, PSNR) at camera parameter ``view`` of scene ``seed``."""
    layout = make_scene_layout(seed, config)
    cams = scene_cameras(layout, torch.tensor([view]))
    exact = render_layout(layout, cams)["rgb"][0]  # (3, H, W)
    gauss = surfel_gaussians(viewset_to_pointcloud(viewset))
    bg = torch.tensor(config.background, dtype=torch.float32) if config.kind == "object" else None
    splat = rasterize(gauss, cams.reshape(1, 1), background=bg).color[0, 0].clamp(0, 1)
    return splat, exact, float(psnr(splat[None], exact[None])[0])


def save_preview(viewset: ViewSet, config: SyntheticConfig, seed: int, path: Path, max_views: int = 4) -> float:
    """Write the preview PNG; returns the novel-view PSNR of the splat check."""
    n = len(CLASS_NAMES)
    rows = []
    for v in range(min(max_views, len(viewset))):
        rows.append([
            viewset.rgb[v], colorize_depth(viewset.depth[v]), colorize_normals(viewset.normals[v]),
            colorize_labels(viewset.semantic[v], n), colorize_labels(viewset.instance[v]),
        ])
    splat, exact, value = novel_view_check(viewset, config, seed)
    rows.append([exact, splat, (splat - exact).abs().mean(0, keepdim=True).expand(3, -1, -1).mul(4).clamp(0, 1)])
    scale = max(1, 128 // max(viewset.width, viewset.height))
    save_grid(rows, path, titles=["rgb / exact", "depth / splat", "normals / |err|x4", "semantic", "instance"], scale=scale)
    return value


def export_synthetic(
    out,
    scenes: int = 4,
    views: int = 10,
    size: tuple[int, int] = (64, 64),
    kind: str = "room",
    formats=("scannet", "blender"),
    seed: int = 0,
    preview: bool = True,
    log=print,
) -> SynthSummary:
    out = Path(out)
    unknown = [f for f in formats if f not in SCENE_FORMATS]
    if unknown:
        raise InputError(f"--formats: unknown {unknown}; expected some of {list(SCENE_FORMATS)}")
    if scenes < 1 or views < 2:
        raise InputError(f"data synth: need at least 1 scene and 2 views, got {scenes} scenes x {views} views")
    config = SyntheticConfig(kind=kind, num_views=views, width=size[0], height=size[1])
    summary = SynthSummary(out)
    start = time.perf_counter()
    viewsets = [generate_scene(seed + i, config) for i in range(scenes)]
    summary.generate_seconds = time.perf_counter() - start
    summary.scenes = [vs.name for vs in viewsets]
    summary.views = scenes * views
    log(f"generated {scenes} {kind} scenes x {views} views of {size[0]}x{size[1]} in {summary.generate_seconds:.2f} s")

    start = time.perf_counter()
    for vs in viewsets:
        for fmt in formats:
            write_viewset(vs, out / fmt / vs.name, fmt)
        write_ply(viewset_to_pointcloud(vs), out / "ply" / f"{vs.name}.ply")
    summary.write_seconds = time.perf_counter() - start
    log(f"wrote {', '.join(formats)} layouts and labelled PLY clouds under {out} in {summary.write_seconds:.2f} s")
    if preview:
        summary.preview = out / "preview.png"
        summary.preview_psnr = save_preview(viewsets[0], config, seed, summary.preview)
        log(
            f"preview: {summary.preview} (views of {viewsets[0].name}; bottom row: exact ray-cast novel view vs "
            f"Gaussians splatted from the back-projected views, PSNR {summary.preview_psnr:.2f} dB)"
        )
    return summary
