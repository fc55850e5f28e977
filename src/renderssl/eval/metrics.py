"""Evaluation metrics: image quality (PSNR, SSIM), semantic segmentation, monocular depth.

Conventions (see docs/conventions.md): images ``(B, C, H, W)`` float in [0, 1] (data range 1); depth
``(B, 1, H, W)`` metric z-depth with 0 = invalid; labels ``(B, H, W)`` int64 with -1 = ignore.
LPIPS lives in :mod:`renderssl.eval.lpips` (it needs weight files).

Definitions, stated precisely because papers differ in the details:

PSNR
    Per image: ``-10 log10(MSE)`` with MSE the mean over channels and (masked) pixels; data range 1.
    An exact match gives ``+inf``; an empty mask gives NaN.

SSIM (Wang et al. 2004, as computed by the NeRF / mip-NeRF evaluation code)
    Gaussian window 11 x 11, sigma 1.5, normalised to sum 1 (separable); ``C1 = (0.01 L)^2``,
    ``C2 = (0.03 L)^2`` with ``L = 1``; local means, variances and covariance are Gaussian-weighted
    moments (``sigma_x^2 = E_w[x^2] - mu_x^2``, population form, no N/(N-1) factor); the SSIM map is
    evaluated only where the window fits inside the image ('valid', (H-10) x (W-10) positions); the
    score of an image is the mean of the map over positions and channels. This equals scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1, channel_axis=...)`` (its reflect-padded borders are cropped before the mean).
    pixelSplat calls scikit-image with the default ``use_sample_covariance=True``, which multiplies
    the (co)variances by 121/120; pass ``sample_covariance=True`` to reproduce that variant.

Segmentation
    Confusion matrix ``conf[gt, pred]`` over pixels whose target is not ``ignore_index``. IoU of class
    c = TP / (TP + FP + FN); mIoU averages over classes whose union TP + FP + FN > 0, i.e. classes that
    occur in the ground truth or the prediction (absent classes are excluded, not counted as 0 or 1).
    Overall accuracy = trace / total; mean class accuracy averages TP / GT-count over classes present
    in the ground truth.

Depth (Eigen et al. 2014 protocol)
    Valid pixels: ``gt > 0`` and, if given, ``gt <= max_depth``. Optional per-image median scaling
    ``pred *= median(gt) / median(pred)`` over valid pixels (for scale-ambiguous predictions; medians
    as numpy's: mean of the two middle values for even counts). The prediction is then clamped to
    ``[min_pred, max_depth]`` (Monodepth2 style, keeps the log finite). Each metric is a mean over the
    valid pixels of one image; :class:`DepthMeter` then averages over images (images with no valid
    pixel are skipped).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


# ----------------------------------------------------------------------------- image quality


def _check_image_pair(pred: Tensor, target: Tensor) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise InputError(
            f"images: expected pred and target of the same shape (B, C, H, W), "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise InputError(f"images: expected float tensors in [0, 1], got {pred.dtype} and {target.dtype}")


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-image PSNR in dB, data range 1. Returns (B,).

    ``mask`` (B, 1, H, W) or (B, H, W), bool or float weights: only masked pixels count.
    """
    _check_image_pair(pred, target)
    se = (pred - target).square()  # (B, C, H, W)
    if mask is None:
        mse = se.flatten(1).mean(dim=1)  # (B,)
    else:
        w = _expand_mask(mask, se)  # (B, C, H, W)
        mse = (se * w).flatten(1).sum(dim=1) / w.flatten(1).sum(dim=1)  # (B,)
    return -10.0 * torch.log10(mse)


def _expand_mask(mask: Tensor, like: Tensor) -> Tensor:
    """Broadcast a (B, H, W) or (B, 1, H, W) mask to ``like`` (B, C, H, W) as float weights."""
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)  # (B, 1, H, W)
    b, _, h, w = like.shape
    if mask.ndim != 4 or mask.shape[0] != b or mask.shape[1] not in (1, like.shape[1]) or mask.shape[2:] != (h, w):
        raise InputError(f"mask: expected (B, H, W) or (B, 1, H, W) matching images {tuple(like.shape)}, got {tuple(mask.shape)}")
    return mask.to(like.dtype).expand_as(like)


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32) -> Tensor:
    """(size,) Gaussian taps centred on the middle tap, normalised to sum 1."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def _gaussian_filter_valid(x: Tensor, g: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of each channel. (B, C, H, W) -> (B, C, H-k+1, W-k+1)."""
    c, k = x.shape[1], g.numel()
    gx = g.view(1, 1, 1, k).expand(c, 1, 1, k)  # (C, 1, 1, k) horizontal pass
    gy = g.view(1, 1, k, 1).expand(c, 1, k, 1)  # (C, 1, k, 1) vertical pass
    return F.conv2d(F.conv2d(x, gx, groups=c), gy, groups=c)


def ssim_map(pred: Tensor, target: Tensor, sample_covariance: bool = False) -> Tensor:
    """SSIM at every valid window position. (B, C, H, W) -> (B, C, H-10, W-10)."""
    _check_image_pair(pred, target)
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise InputError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(pred.shape[-2:])}")
    g = gaussian_window_1d(dtype=pred.dtype).to(pred.device)
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    # one filtering pass over the five moment images
    stack = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)  # (B, 5C, H, W)
    mx, my, exx, eyy, exy = _gaussian_filter_valid(stack, g).chunk(5, dim=1)  # each (B, C, H', W')
    cov_norm = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1) if sample_covariance else 1.0
    vx = cov_norm * (exx - mx * mx)
    vy = cov_norm * (eyy - my * my)
    vxy = cov_norm * (exy - mx * my)
    num = (2 * mx * my + c1) * (2 * vxy + c2)
    den = (mx * mx + my * my + c1) * (vx + vy + c2)
    return num / den


def ssim(pred: Tensor, target: Tensor, sample_covariance: bool = False) -> Tensor:
    """Per-image SSIM (module docstring has the exact definition). (B, C, H, W) x2 -> (B,)."""
    return ssim_map(pred, target, sample_covariance).flatten(1).mean(dim=1)


# ----------------------------------------------------------------------------- segmentation


def _as_labels(pred: Tensor, target: Tensor) -> Tensor:
    """Accept label maps (like ``target``) or logits with one extra class dim at 1 (argmax taken)."""
    if pred.ndim == target.ndim + 1:
        pred = pred.argmax(dim=1)  # (B, K, H, W) -> (B, H, W)
    if pred.shape != target.shape:
        raise InputError(f"segmentation: pred {tuple(pred.shape)} does not match target {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise InputError(f"segmentation: labels must be integer tensors, got {pred.dtype} and {target.dtype}")
    return pred


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = -1) -> Tensor:
    """(K, K) int64 counts ``conf[gt, pred]`` over pixels whose target != ``ignore_index``.

    ``pred`` is a label map shaped like ``target`` or logits (B, K, H, W).
    """
    pred = _as_labels(pred, target)
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()  # (N,)
    for name, v in (("target", t), ("pred", p)):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            raise InputError(
                f"segmentation: {name} labels must be in [0, {num_classes}) or ignore_index={ignore_index}, "
                f"found range [{int(v.min())}, {int(v.max())}]"
            )
    flat = t * num_classes + p  # (N,)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def segmentation_scores(conf: Tensor) -> dict:
    """Scores from a (K, K) confusion ``conf[gt, pred]``.

    Returns ``miou``, ``overall_acc``, ``mean_class_acc`` (floats; NaN if nothing counted) and
    ``iou`` (K,) per class with NaN for classes excluded from the mean (union 0).
    """
    conf = conf.double()
    tp = conf.diag()  # (K,)
    gt_count = conf.sum(dim=1)  # (K,) row sums
    pred_count = conf.sum(dim=0)  # (K,) column sums
    union = gt_count + pred_count - tp  # (K,)
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
    class_acc = tp[gt_count > 0] / gt_count[gt_count > 0]
    total = conf.sum()
    return {
        "miou": _nanmean(iou),
        "overall_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "mean_class_acc": float(class_acc.mean()) if class_acc.numel() else math.nan,
        "iou": iou,
    }


def _nanmean(x: Tensor) -> float:
    ok = ~torch.isnan(x)
    return float(x[ok].mean()) if bool(ok.any()) else math.nan


class SegmentationMeter:
    """Accumulates a confusion matrix over batches; :meth:`compute` gives :func:`segmentation_scores`."""

    def __init__(self, num_classes: int, ignore_index: int = -1):
        if num_classes < 1:
            raise InputError(f"SegmentationMeter: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch: ``pred`` labels (B, H, W) or logits (B, K, H, W), ``target`` (B, H, W)."""
        self.confusion += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict:
        out = segmentation_scores(self.confusion)
        out["confusion"] = self.confusion.clone()
        return out


# ----------------------------------------------------------------------------- depth


def _masked_median(x: Tensor, valid: Tensor) -> Tensor:
    """Per-row median of ``x`` (B, N) over ``valid`` (B, N), numpy convention. Returns (B,); NaN if empty."""
    n = valid.sum(dim=1)  # (B,)
    srt = torch.where(valid, x, torch.full_like(x, math.inf)).sort(dim=1).values  # valid values first
    lo = ((n - 1) // 2).clamp_min(0).unsqueeze(1)  # (B, 1)
    hi = (n // 2).clamp_max(x.shape[1] - 1).unsqueeze(1)  # (B, 1)
    med = 0.5 * (srt.gather(1, lo) + srt.gather(1, hi)).squeeze(1)  # (B,)
    return torch.where(n > 0, med, torch.full_like(med, math.nan))


def depth_metrics(
    pred: Tensor,
    gt: Tensor,
    max_depth: float | None = None,
    median_scaling: bool = False,
    min_pred: float = 1e-3,
) -> dict:
    """Per-image depth errors over valid pixels. ``pred``, ``gt`` (B, 1, H, W) or (B, H, W) metres.

    Returns a dict of (B,) tensors keyed by :data:`DEPTH_KEYS` plus ``valid_pixels`` (B,);
    images without a valid pixel get NaN metrics.
    """
    if pred.shape != gt.shape or pred.ndim not in (3, 4):
        raise InputError(f"depth: expected pred and gt of the same shape (B, 1, H, W), got {tuple(pred.shape)} and {tuple(gt.shape)}")
    p, g = pred.flatten(1).double(), gt.flatten(1).double()  # (B, N)
    valid = g > 0
    if max_depth is not None:
        valid &= g <= max_depth
    if median_scaling:
        scale = _masked_median(g, valid) / _masked_median(p, valid)  # (B,)
        p = p * scale.unsqueeze(1)
    p = p.clamp(min=min_pred, max=max_depth)
    g = torch.where(valid, g, torch.ones_like(g))  # keeps divisions/logs finite off the mask
    return _masked_depth_errors(p, g, valid)


def _masked_depth_errors(p: Tensor, g: Tensor, valid: Tensor) -> dict:
    """Means over valid pixels of each image. (B, N) x3 -> dict of (B,)."""
    n = valid.sum(dim=1)  # (B,)
    w = valid.double()

    def mean(v: Tensor) -> Tensor:  # (B, N) -> (B,), NaN where n == 0
        return (v * w).sum(dim=1) / n

    diff = p - g
    ratio = torch.maximum(p / g, g / p)  # (B, N)
    out = {
        "abs_rel": mean(diff.abs() / g),
        "sq_rel": mean(diff.square() / g),
        "rmse": mean(diff.square()).sqrt(),
        "rmse_log": mean((p.log() - g.log()).square()).sqrt(),
    }
    for i in (1, 2, 3):
        out[f"delta{i}"] = mean((ratio < 1.25**i).double())
    out["valid_pixels"] = n
    return out


class DepthMeter:
    """Averages per-image depth metrics over images (Eigen et al.: per-image mean, then mean over images).

    Images with no valid pixel are skipped; ``compute()`` also reports ``num_images`` counted.
    """

    def __init__(self, max_depth: float | None = None, median_scaling: bool = False, min_pred: float = 1e-3):
        self.max_depth = max_depth
        self.median_scaling = median_scaling
        self.min_pred = min_pred
        self.reset()

    def reset(self) -> None:
        self.sums = {k: 0.0 for k in DEPTH_KEYS}
        self.count = 0

    @torch.no_grad()
    def update(self, pred: Tensor, gt: Tensor) -> None:
        m = depth_metrics(pred, gt, self.max_depth, self.median_scaling, self.min_pred)
        counted = m["valid_pixels"] > 0  # (B,)
        for k in DEPTH_KEYS:
            self.sums[k] += float(m[k][counted].sum())
        self.count += int(counted.sum())

    def compute(self) -> dict:
        out = {k: (s / self.count if self.count else math.nan) for k, s in self.sums.items()}
        out["num_images"] = self.count
        return out
