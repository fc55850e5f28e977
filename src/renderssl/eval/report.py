"""Comparison reports: a markdown table and a PNG plot of a metric against the label fraction.

The plot is drawn with PIL (no plotting dependency): one line per method through the mean over seeds,
a vertical bar of +/- one standard deviation at each point, a log-scaled x axis of label fractions.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from ..viz import label_palette


def markdown_table(rows: dict, fractions: list[float], metric: str, digits: int = 3) -> str:
    """rows: method -> fraction -> (mean, std, n). One row per method, one column per fraction."""
    head = "| method | " + " | ".join(f"{100 * f:g}% labels" for f in fractions) + " |"
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for method, by_fraction in rows.items():
        cells = []
        for f in fractions:
            mean, std, n = by_fraction[f]
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return f"**{metric}** (mean ± std over seeds)\n\n" + "\n".join(lines) + "\n"


def plot_metric(rows: dict, fractions: list[float], metric: str, path, size=(560, 380)) -> Path:
    """Save the metric-vs-label-fraction plot of ``rows`` (as for :func:`markdown_table`)."""
    W, H = size
    left, right, top, bottom = 60, 150, 30, 45
    values = [m + s * sign for by_f in rows.values() for (m, s, _) in by_f.values() for sign in (-1, 1)]
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    xs = [math.log(f) for f in fractions]
    x0, x1 = min(xs), max(xs) if len(xs) > 1 else min(xs) + 1
    x0, x1 = x0 - 0.06 * (x1 - x0), x1 + 0.06 * (x1 - x0)  # keep end points off the frame

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0 or 1) * (W - left - right)
        py = top + (hi - y) / (hi - lo) * (H - top - bottom)
        return px, py

    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for f, x in zip(fractions, xs):
        px, _ = to_px(x, lo)
        draw.line([px, H - bottom, px, H - bottom + 4], fill=(0, 0, 0))
        draw.text((px - 12, H - bottom + 6), f"{100 * f:g}%", fill=(0, 0, 0))
    for i in range(5):
        y = lo + (hi - lo) * i / 4
        _, py = to_px(x0, y)
        draw.line([left - 4, py, left, py], fill=(0, 0, 0))
        draw.text((4, py - 6), f"{y:.3f}", fill=(0, 0, 0))
    draw.text((left, 8), f"{metric} vs fraction of training labels", fill=(0, 0, 0))
    palette = (label_palette(max(len(rows), 1)) * 200).int().tolist()
    for i, (method, by_fraction) in enumerate(rows.items()):
        colour = tuple(palette[i])
        points = [to_px(x, by_fraction[f][0]) for f, x in zip(fractions, xs)]
        draw.line(points, fill=colour, width=2)
        for f, x, (px, py) in zip(fractions, xs, points):
            mean, std, _ = by_fraction[f]
            _, top_y = to_px(x, mean + std)
            _, bottom_y = to_px(x, mean - std)
            draw.line([px, top_y, px, bottom_y], fill=colour, width=1)
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.line([W - right + 10, top + 14 * i + 6, W - right + 30, top + 14 * i + 6], fill=colour, width=2)
        draw.text((W - right + 34, top + 14 * i), method, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
