"""Pictures of what the data holds and what a model renders: colour maps and labelled PNG grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

# Anchor colours of a perceptually ordered map (dark blue -> cyan -> yellow -> dark red).
_DEPTH_ANCHORS = torch.tensor(
    [[0.19, 0.07, 0.23], [0.27, 0.51, 0.97], [0.10, 0.90, 0.71], [0.64, 0.99, 0.24], [0.98, 0.73, 0.22], [0.85, 0.22, 0.03], [0.48, 0.02, 0.01]]
)


def scalar_range(x: Tensor, valid: Tensor, max_samples: int = 16384) -> tuple[Tensor, Tensor]:
    """Per-sample 2% and 98% percentiles (B,), (B,) of the valid entries of x (B, ...), taken on a
    regular subsample of at most ``max_samples`` entries per sample (0 and 1 where nothing is valid)."""
    flat = x.detach().reshape(x.shape[0], -1).float()
    keep = valid.reshape(x.shape[0], -1) & torch.isfinite(flat)
    step = max(1, -(-flat.shape[1] // max_samples))
    flat = torch.where(keep, flat, torch.full_like(flat, float("nan")))[:, ::step]
    q = torch.nanquantile(flat, torch.tensor([0.02, 0.98], device=flat.device), dim=1)  # (2, B)
    return torch.nan_to_num(q[0], nan=0.0), torch.nan_to_num(q[1], nan=1.0)


def colorize_scalar_batch(x: Tensor, valid: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
    """(B, H, W) -> (B, 3, H, W) in [0, 1] over per-sample ranges [lo, hi] (B,) (default: the valid
    2-98% percentiles of each sample); invalid pixels black."""
    x = x.detach().float()
    valid = valid & torch.isfinite(x)
    if lo is None or hi is None:
        lo, hi = scalar_range(x, valid)
    scale = (hi - lo).clamp(min=1e-8).view(-1, 1, 1)
    t = ((torch.nan_to_num(x) - lo.view(-1, 1, 1)) / scale).clamp(0, 1) * (len(_DEPTH_ANCHORS) - 1)  # (B, H, W)
    i0 = t.floor().long().clamp(max=len(_DEPTH_ANCHORS) - 2)
    frac = (t - i0)[..., None]
    anchors = _DEPTH_ANCHORS.to(x.device)
    rgb = anchors[i0] * (1 - frac) + anchors[i0 + 1] * frac  # (B, H, W, 3)
    return (rgb * valid[..., None]).permute(0, 3, 1, 2)


def colorize_scalar(x: Tensor, valid: Tensor | None = None, lo: float | None = None, hi: float | None = None) -> Tensor:
    """(H, W) -> (3, H, W) in [0, 1]; invalid pixels black. Range from valid percentiles 2-98 by default."""
    valid = torch.isfinite(x) if valid is None else valid
    bounds = (None, None) if lo is None or hi is None else (torch.tensor([float(lo)]), torch.tensor([float(hi)]))
    return colorize_scalar_batch(x[None], valid[None], *bounds)[0]


def colorize_depth(depth: Tensor) -> Tensor:
    """z-depth (1, H, W) or (H, W), 0 = invalid -> (3, H, W)."""
    depth = depth.reshape(depth.shape[-2:])
    return colorize_scalar(depth, depth > 0)


def colorize_depth_batch(depth: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
    """z-depth (B, 1, H, W), 0 = invalid -> (B, 3, H, W), one range per sample (default its own)."""
    depth = depth[:, 0]
    return colorize_scalar_batch(depth, depth > 0, lo, hi)


def label_palette(n: int) -> Tensor:
    """(n, 3) distinct colours (golden-angle hues)."""
    h = (torch.arange(n) * 0.618033988749895) % 1.0
    s, v = 0.65 + 0.35 * (torch.arange(n) % 2), 0.95 - 0.25 * (torch.arange(n) % 3 == 2).float()
    k = (torch.tensor([5.0, 3.0, 1.0])[None] + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def colorize_labels(labels: Tensor, num_classes: int | None = None) -> Tensor:
    """(H, W) int64, -1 = ignore (black) -> (3, H, W)."""
    n = int(num_classes or max(int(labels.max()) + 1, 1))
    pal = label_palette(n)
    rgb = pal[labels.clamp(min=0, max=n - 1)]  # (H, W, 3)
    return torch.where((labels >= 0)[..., None], rgb, torch.zeros_like(rgb)).permute(2, 0, 1)


def colorize_normals(normals: Tensor) -> Tensor:
    """(3, H, W) unit normals (0 = none) -> (3, H, W) with (n + 1) / 2."""
    return torch.where(normals.abs().sum(0, keepdim=True) > 0, (normals + 1) / 2, torch.zeros_like(normals))


def to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def save_grid(rows: list[list[Tensor]], path, titles: list[str] | None = None, scale: int = 1, pad: int = 2) -> Path:
    """Save rows of (3, H, W) images (all one size) as one PNG with optional column titles."""
    H, W = rows[0][0].shape[-2:]
    H, W = H * scale, W * scale
    top = 12 if titles else 0
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (W + pad) + pad, top + len(rows) * (H + pad) + pad), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            tile = Image.fromarray(to_uint8(img))
            if scale != 1:
                tile = tile.resize((W, H), Image.NEAREST)
            canvas.paste(tile, (pad + j * (W + pad), top + pad + i * (H + pad)))
    if titles:
        draw = ImageDraw.Draw(canvas)
        for j, t in enumerate(titles):
            draw.text((pad + j * (W + pad), 0), t, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
