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


def colorize_scalar(x: Tensor, valid: Tensor | None = None, lo: float | None = None, hi: float | None = None) -> Tensor:
    """(H, W) -> (3, H, W) in [0, 1]; invalid pixels black. Range from valid percentiles 2-98 by default."""
    x = x.detach()
    valid = torch.isfinite(x) if valid is None else valid & torch.isfinite(x)
    vals = x[valid]
    if vals.numel() == 0:
        return torch.zeros(3, *x.shape)
    lo = float(torch.quantile(vals.float(), 0.02)) if lo is None else lo
    hi = float(torch.quantile(vals.float(), 0.98)) if hi is None else hi
    t = ((x - lo) / max(hi - lo, 1e-8)).clamp(0, 1) * (len(_DEPTH_ANCHORS) - 1)  # (H, W)
    i0 = t.floor().long().clamp(max=len(_DEPTH_ANCHORS) - 2)
    frac = (t - i0)[..., None]
    rgb = _DEPTH_ANCHORS[i0] * (1 - frac) + _DEPTH_ANCHORS[i0 + 1] * frac  # (H, W, 3)
    return torch.where(valid[..., None], rgb, torch.zeros_like(rgb)).permute(2, 0, 1)


def colorize_depth(depth: Tensor) -> Tensor:
    """z-depth (1, H, W) or (H, W), 0 = invalid -> (3, H, W)."""
    depth = depth.reshape(depth.shape[-2:])
    return colorize_scalar(depth, depth > 0)


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
