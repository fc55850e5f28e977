"""Feed-forward novel view synthesis: from a held-out scene's context views, render a target view it
did not see, and score it against the floor of copying the nearest context view.

- Views: the run's own context selection (``views``: GS³'s pair by frame interval or overlap) and one
  target, chosen for interpolation (``ViewSelectionConfig.targets = "between"``: a frame strictly between
  an interval pair (i, i + d), uniform among i + 1 .. i + d - 1, as pixelSplat evaluates targets between
  its context views; a random other frame in overlap mode or when d == 1), drawn from a generator seeded
  by (``data.seed``, scene index): the same target for every run on the same data.
  NPS (a :class:`~renderssl.data.views.SourceViewCurriculum`): a random target frame and its
  ``num_context`` nearest views by camera distance (GNT's evaluation views, :func:`nearest_sources`), the
  count set by the recipe's ``eval_source_views`` (``renderssl evaluate RUN nps.eval_source_views=2``).
- Model: :meth:`~renderssl.methods.base.Method.render_targets` (no masking, no augmentation), clamped to
  [0, 1] before scoring.
- Floor: the context view whose camera centre is nearest the target's (:func:`nearest_context`; ties:
  the smaller rotation angle between the two cameras, then the first), copied as the prediction.
- Metrics: PSNR and SSIM (:mod:`renderssl.eval.metrics`) per target image, averaged over images; LPIPS
  (VGG, :mod:`renderssl.eval.lpips`) when the run's LPIPS weight files exist, else not available.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..data.build import image_split, load_split
from ..data.datasets import MultiViewDataset
from ..data.views import SourceViewCurriculum
from ..errors import InputError
from .metrics import psnr, ssim

MODEL, FLOOR = "model", "nearest_context_view"
METRICS = ("psnr", "ssim", "lpips")
TIE_TOL = 1e-6  # relative: camera distances / angles this close count as equal


# ---- the floor ------------------------------------------------------------------------------------
def rotation_angle(R_a: Tensor, R_b: Tensor) -> Tensor:
    """(...) angle in radians of R_a^T R_b for rotations (..., 3, 3)."""
    trace = (R_a * R_b).sum(dim=(-2, -1))  # (...) = trace(R_a^T R_b)
    return torch.acos(((trace - 1) / 2).clamp(-1.0, 1.0))


def first_minimum(values: Tensor, among: Tensor) -> Tensor:
    """(..., C) bool: the entries of ``among`` (..., C) whose ``values`` lie within TIE_TOL of their minimum."""
    masked = torch.where(among, values, torch.full_like(values, float("inf")))  # (..., C)
    low = masked.min(dim=-1, keepdim=True).values  # (..., 1)
    return among & (masked <= low + TIE_TOL * (1 + low.abs()))


def nearest_context(c2w_context: Tensor, c2w_target: Tensor) -> Tensor:
    """(B, T) int64: for each target camera, the index of the context camera whose centre is nearest
    (c2w_context (B, C, 4, 4), c2w_target (B, T, 4, 4), OpenCV camera-to-world); ties: the smaller rotation
    angle between the cameras, then the first context view."""
    if c2w_context.dim() != 4 or c2w_target.dim() != 4 or c2w_context.shape[-2:] != (4, 4) or c2w_target.shape[-2:] != (4, 4) \
            or c2w_context.shape[0] != c2w_target.shape[0] or c2w_context.shape[1] < 1:
        raise InputError(f"nearest_context: expected c2w_context (B, C >= 1, 4, 4) and c2w_target (B, T, 4, 4), got "
                         f"{tuple(c2w_context.shape)} and {tuple(c2w_target.shape)}")
    ctx, tgt = c2w_context.double()[:, None], c2w_target.double()[:, :, None]  # (B, 1, C, 4, 4), (B, T, 1, 4, 4)
    dist = (ctx[..., :3, 3] - tgt[..., :3, 3]).norm(dim=-1)  # (B, T, C)
    angle = rotation_angle(ctx[..., :3, :3], tgt[..., :3, :3])  # (B, T, C)
    near = first_minimum(dist, torch.ones_like(dist, dtype=torch.bool))  # (B, T, C)
    best = first_minimum(angle, near)  # (B, T, C)
    return best.long().argmax(dim=-1)  # (B, T) first True


def gather_views(views: Tensor, index: Tensor) -> Tensor:
    """views (B, C, 3, H, W), index (B, T) -> (B, T, 3, H, W): views[b, index[b, t]]."""
    return views[torch.arange(len(views), device=views.device)[:, None], index.to(views.device)]


# ---- the data -------------------------------------------------------------------------------------
def novel_view_scenes(data, split: str) -> list:
    """The scene references of ``split`` (data config ``data``); a folder of plain images is refused."""
    if image_split(data, split) is not None:
        raise InputError(f"evaluate: novel views need posed scenes (ScanNet, 7-Scenes, Blender, LLFF or synthetic), but "
                         f"{data.source} is a folder of plain images")
    return load_split(data, split)


def nearest_sources(count: int) -> SourceViewCurriculum:
    """GNT's evaluation views: exactly the ``count`` views nearest the target (no curriculum, no jitter)."""
    return SourceViewCurriculum(views_start=count, jitter=0, factor_probs=(1.0, 0.0, 0.0), max_candidates=max(count, 22))


def describe_views(views) -> str:
    """How the evaluation picks its views, in words."""
    if isinstance(views, SourceViewCurriculum):
        return "the target's nearest views; the target a random frame"
    return f"{views.mode}; the target between them"


def novel_view_dataset(scenes: list, data, views, size: tuple[int, int], num_context: int | None = None) -> MultiViewDataset:
    """``scenes`` (a non-empty list, :func:`novel_view_scenes`) as one sample each: the context views of
    ``views`` (a ViewSelectionConfig) and one target between them (module docstring), or for a source-view
    curriculum (NPS) a random target and its ``num_context`` nearest views (:func:`nearest_sources`), at
    ``size`` (H, W) by ``data.resize``, seeded by ``data.seed``; scenes opened one at a time, no frame cache."""
    if views is None:
        raise InputError("evaluate: novel views need the recipe's view selection (a views config)")
    options = dict(seed=data.seed, size=size, resize=data.resize, cache_scenes=1, cache_mb=0)
    if isinstance(views, SourceViewCurriculum):
        dataset = MultiViewDataset(scenes, views=nearest_sources(num_context), **options)
        if dataset.fewest_frames() <= num_context:
            raise InputError(f"evaluate: {num_context} source views wanted, but a scene has only {dataset.fewest_frames()} "
                             "frames; lower the recipe's eval_source_views")
        return dataset
    return MultiViewDataset(scenes, views=dataclasses.replace(views, targets="between"), num_targets=1, **options)


# ---- LPIPS ----------------------------------------------------------------------------------------
def lpips_or_reason(paths, key: str, size: tuple[int, int]):
    """(LPIPS, None) from the weight files ``paths`` (``vgg_path``, ``lin_path``; config key ``key``), or
    (None, why not) when they are unset or missing, or the images are too small."""
    from .lpips import MIN_SIZE, LPIPS, missing_weights_message

    vgg, lin = getattr(paths, "vgg_path", None), getattr(paths, "lin_path", None)
    if missing_weights_message(vgg_path=vgg, lin_path=lin) is not None:
        return None, f"no LPIPS weights: set {key}.vgg_path and {key}.lin_path to local files"
    if min(size) < MIN_SIZE:
        return None, f"images of {size[1]}x{size[0]} are smaller than LPIPS's {MIN_SIZE}x{MIN_SIZE}"
    return LPIPS.from_files(vgg, lin), None


# ---- the evaluation -------------------------------------------------------------------------------
@torch.no_grad()
def score_batch(method, batch: dict, lpips=None) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor]]:
    """Per-target-image scores {model, nearest_context_view} -> {psnr, ssim[, lpips]} (B T,) of one
    multi-view batch, and its pictures (B, T, 3, H, W): rendering, nearest view."""
    C = method.num_context
    rgb, c2w = batch["rgb"], batch["c2w"]  # (B, V, 3, H, W), (B, V, 4, 4)
    if rgb.shape[1] <= C:
        raise InputError(f"evaluate: novel views need views after the {C} context views, got V={rgb.shape[1]}")
    target = rgb[:, C:]  # (B, T, 3, H, W)
    rendering = method.render_targets(batch).clamp(0, 1)  # (B, T, 3, H, W)
    nearest = gather_views(rgb[:, :C], nearest_context(c2w[:, :C], c2w[:, C:]))  # (B, T, 3, H, W)
    truth = target.flatten(0, 1)  # (B T, 3, H, W)
    scores = {}
    for name, pred in ((MODEL, rendering), (FLOOR, nearest)):
        pred = pred.flatten(0, 1)  # (B T, 3, H, W)
        scores[name] = {"psnr": psnr(pred, truth), "ssim": ssim(pred, truth)}
        if lpips is not None:
            scores[name]["lpips"] = lpips(pred, truth)
    return scores, {"rendering": rendering, "nearest": nearest}


def evaluate_novel_views(method, batches, lpips=None, examples: int = 4) -> tuple[dict, dict[str, list[Tensor]]]:
    """Means over all target images of :func:`score_batch` for the model and the floor, from running
    sums, plus ``images`` and ``scenes`` counts; and pictures of the first ``examples`` scenes (rows:
    context 0 .. C - 1, target, rendering, nearest view; the first target of each)."""
    sums = {name: dict.fromkeys(METRICS if lpips is not None else METRICS[:2], 0.0) for name in (MODEL, FLOOR)}
    images = scenes = 0
    rows: dict[str, list[Tensor]] = {}
    for batch in batches:
        scores, pictures = score_batch(method, batch, lpips)
        for name, values in scores.items():
            for metric, v in values.items():
                sums[name][metric] += float(v.double().sum())
        images += len(scores[MODEL]["psnr"])
        scenes += len(batch["rgb"])
        if len(rows.get("target", [])) < examples:
            take = slice(0, examples - len(rows.get("target", [])))
            C = method.num_context
            new = {**{f"context {c}": batch["rgb"][take, c] for c in range(C)}, "target": batch["rgb"][take, C],
                   "rendering": pictures["rendering"][take, 0], "nearest view": pictures["nearest"][take, 0]}
            for key, value in new.items():
                rows.setdefault(key, []).extend(value)
    means = {name: {m: (v / images if images else float("nan")) for m, v in values.items()} for name, values in sums.items()}
    return {**means, "images": images, "scenes": scenes}, rows


def format_comparison(metric: str, model: float, floor: float) -> str:
    """``PSNR: model 18.20 dB vs nearest context view 15.10 dB (+3.10)``."""
    unit, digits = (" dB", 2) if metric == "psnr" else ("", 3 if metric == "ssim" else 4)
    return (f"{metric.upper()}: model {model:.{digits}f}{unit} vs nearest context view {floor:.{digits}f}{unit} "
            f"({model - floor:+.{digits}f})")


__all__ = ["FLOOR", "MODEL", "describe_views", "evaluate_novel_views", "format_comparison", "gather_views", "lpips_or_reason",
           "nearest_context", "nearest_sources", "novel_view_dataset", "novel_view_scenes", "rotation_angle", "score_batch"]
