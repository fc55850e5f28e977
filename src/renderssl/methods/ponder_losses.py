"""PonderV2's losses on rendered rays: pure functions, official weights as ``PonderLossConfig`` defaults.

Official indoor config (``pretrain-ponder-spunet-v1m1-0-base.py``; code ``base_surface_model.get_loss``):
rgb L1 10, depth L1 1, sdf 10, free space 1, eikonal 0.01, semantic 0.1, truncation 0.05, temperature
0.01. With t the distance along a unit ray of a sample, d the ray's ground-truth distance (plane depth
converted by ``render.volume.ray_distance_from_z_depth``; d = 0 marks an invalid pixel) and τ the
truncation:

- rgb: mean |C − Ĉ| over all rays and channels (``F.l1_loss``).
- depth: Σ_valid |D − D̂| / max(#valid, 1), valid = d > 0. The official code renders D as Σ w t / Σ w
  (``NeuSOutput.depth_normalized``); the paper writes Σ w t. The caller chooses; this function does not.
- SDF masks per sample: front = valid & t < d − τ; back = valid & t > d + τ; band = valid & neither.
- sdf: mean over band samples of |t + sdf − d| (the SDF target along the ray is d − t, the signed
  distance to the observed surface measured along the ray).
- free space: mean over front samples of relu(τ − sdf) (a sample well in front of the surface must have
  sdf >= τ). Back samples get neither term. Means are over masked samples, clamped at 1.
- eikonal: ``render.volume.eikonal_loss``, mean (|∇sdf| − 1)² over every sample of every ray.
- semantic, InfoNCE over rays with temperature T = 0.01. The rendered embedding e (R, D) is
  L2-normalised (the field outputs raw per-sample embeddings; normalisation is after compositing, as
  the official code), and the text embeddings E are the L2-normalised CLIP text embeddings
  (``data.text_embeddings``). Two candidate sets (``PonderLossConfig.semantic_negatives``):
  * ``"classes"`` (default): logits = e Eᵀ / T over the K class embeddings, cross-entropy against the
    ray's class. Rays labelled < 0 (renderssl's ignore label) are ignored.
  * ``"rays"``: the official code's form: logits = e [E_{y_1} … E_{y_R}]ᵀ / T over the R rays' own
    target embeddings (zero vectors for unlabelled rays, as the official zero-filled targets), target =
    the ray's own column, unlabelled rays ignored. Two rays of one class have identical columns, so
    this is the "classes" form with each class logit counted once per ray of that class (a false
    negative per duplicate); its floor is log(#rays of the class), not 0.
  With no labelled ray the term is 0 (kept in the graph).
Every function takes flat rays (R, ...) and samples (R, S); batch scenes by concatenating their rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, check_shape
from ..render.volume import eikonal_loss

SEMANTIC_NEGATIVES = ("classes", "rays")


@dataclass
class PonderLossConfig:
    """Official weights and constants (indoor config). A weight of 0 turns its term off."""

    rgb_weight: float = 10.0
    depth_weight: float = 1.0
    sdf_weight: float = 10.0
    free_space_weight: float = 1.0
    eikonal_weight: float = 0.01
    semantic_weight: float = 0.1
    truncation: float = 0.05  # sensor_depth_truncation, in unit-cube units
    temperature: float = 0.01
    semantic_negatives: str = "classes"  # "classes" | "rays" (the official code's form)

    def __post_init__(self):
        if self.truncation <= 0 or self.temperature <= 0:
            raise InputError(f"PonderLossConfig: truncation and temperature must be > 0, got {self.truncation}, {self.temperature}")
        if self.semantic_negatives not in SEMANTIC_NEGATIVES:
            raise InputError(f"PonderLossConfig: semantic_negatives {self.semantic_negatives!r} not in {SEMANTIC_NEGATIVES}")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Σ mask·values / max(Σ mask, 1) (0 when nothing is masked in, still in the graph)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def rgb_l1_loss(rgb: Tensor, target: Tensor) -> Tensor:
    """Mean |rgb − target| over rays (R, 3) and channels."""
    if rgb.shape != target.shape:
        raise InputError(f"rgb_l1_loss: rgb {tuple(rgb.shape)} and target {tuple(target.shape)} differ")
    return F.l1_loss(rgb, target)


def depth_l1_loss(depth: Tensor, target: Tensor) -> Tensor:
    """Mean |depth − target| (R,) over rays with a valid target (> 0)."""
    if depth.shape != target.shape or depth.dim() != 1:
        raise InputError(f"depth_l1_loss: depth {tuple(depth.shape)} and target {tuple(target.shape)} must both be (R,)")
    return masked_mean((depth - target).abs(), target > 0)


def sdf_sample_masks(t: Tensor, target: Tensor, truncation: float) -> tuple[Tensor, Tensor]:
    """Samples t (R, S), ray distances (R,) -> front (R, S) (t < d − τ) and band (R, S) (|t − d| <= τ) masks,
    valid rays (d > 0) only."""
    if t.dim() != 2 or target.shape != t.shape[:1]:
        raise InputError(f"sdf losses: t must be (R, S) and the depth target (R,), got {tuple(t.shape)} and {tuple(target.shape)}")
    valid = (target > 0)[:, None]  # (R, 1)
    d = target[:, None]  # (R, 1)
    front = valid & (t < d - truncation)  # (R, S)
    back = valid & (t > d + truncation)  # (R, S)
    return front, valid & ~front & ~back


def sdf_loss(t: Tensor, sdf: Tensor, target: Tensor, truncation: float = 0.05) -> Tensor:
    """Mean |t + sdf − d| over samples (R, S) within the truncation band of the observed surface."""
    check_shape("sdf_loss: sdf", sdf, *t.shape)
    _, band = sdf_sample_masks(t, target, truncation)
    return masked_mean((t + sdf - target[:, None]).abs(), band)


def free_space_loss(t: Tensor, sdf: Tensor, target: Tensor, truncation: float = 0.05) -> Tensor:
    """Mean relu(τ − sdf) over samples (R, S) in front of the truncation band."""
    check_shape("free_space_loss: sdf", sdf, *t.shape)
    front, _ = sdf_sample_masks(t, target, truncation)
    return masked_mean(F.relu(truncation - sdf), front)


def _check_semantic(fn: str, embedding: Tensor, labels: Tensor, class_embeddings: Tensor) -> None:
    if embedding.dim() != 2 or class_embeddings.dim() != 2 or embedding.shape[1] != class_embeddings.shape[1]:
        raise InputError(f"{fn}: embedding (R, D) and class_embeddings (K, D) must share D, "
                         f"got {tuple(embedding.shape)} and {tuple(class_embeddings.shape)}")
    if labels.shape != embedding.shape[:1] or labels.dtype.is_floating_point:
        raise InputError(f"{fn}: labels must be integer (R,), got {labels.dtype} {tuple(labels.shape)}")
    if bool((labels >= class_embeddings.shape[0]).any()):
        raise InputError(f"{fn}: a label >= the {class_embeddings.shape[0]} classes of class_embeddings")


def semantic_infonce_loss(embedding: Tensor, labels: Tensor, class_embeddings: Tensor,
                          temperature: float = 0.01) -> Tensor:
    """InfoNCE over the K classes: rendered embeddings (R, D), class labels (R,) (< 0 ignored), text
    embeddings (K, D) (normalised) -> cross-entropy of normalise(e) Eᵀ / T."""
    _check_semantic("semantic_infonce_loss", embedding, labels, class_embeddings)
    logits = F.normalize(embedding, dim=-1) @ class_embeddings.T / temperature  # (R, K)
    valid = labels >= 0  # (R,)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid], labels[valid])


def semantic_infonce_over_rays(embedding: Tensor, labels: Tensor, class_embeddings: Tensor,
                               temperature: float = 0.01) -> Tensor:
    """The official form: candidates are the R rays' own target embeddings (zeros where unlabelled),
    target = the ray's own column; unlabelled rays (< 0) ignored."""
    _check_semantic("semantic_infonce_over_rays", embedding, labels, class_embeddings)
    valid = labels >= 0  # (R,)
    targets = class_embeddings[labels.clamp_min(0)] * valid[:, None]  # (R, D), zero rows where unlabelled
    logits = F.normalize(embedding, dim=-1) @ targets.T / temperature  # (R, R)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    own = torch.arange(len(labels), device=labels.device)  # (R,)
    return F.cross_entropy(logits[valid], own[valid])


def ponder_losses(
    config: PonderLossConfig,
    rgb: Tensor,
    rgb_target: Tensor,
    depth: Tensor,
    depth_target: Tensor,
    t: Tensor,
    sdf: Tensor,
    gradients: Tensor,
    semantic: Tensor | None = None,
    labels: Tensor | None = None,
    class_embeddings: Tensor | None = None,
) -> dict[str, Tensor]:
    """Weighted terms {rgb, depth, sdf, free_space, eikonal[, semantic], total}: rays (R, ...) and their
    samples (R, S). ``depth_target`` is ray distance (0 = invalid). Terms with weight 0 are left out; the
    semantic term needs ``semantic``, ``labels`` and ``class_embeddings`` (else it is off)."""
    c = config
    terms = {}
    if c.rgb_weight:
        terms["rgb"] = c.rgb_weight * rgb_l1_loss(rgb, rgb_target)
    if c.depth_weight:
        terms["depth"] = c.depth_weight * depth_l1_loss(depth, depth_target)
    if c.sdf_weight:
        terms["sdf"] = c.sdf_weight * sdf_loss(t, sdf, depth_target, c.truncation)
    if c.free_space_weight:
        terms["free_space"] = c.free_space_weight * free_space_loss(t, sdf, depth_target, c.truncation)
    if c.eikonal_weight:
        terms["eikonal"] = c.eikonal_weight * eikonal_loss(gradients)
    if c.semantic_weight and semantic is not None and labels is not None and class_embeddings is not None:
        infonce = semantic_infonce_loss if c.semantic_negatives == "classes" else semantic_infonce_over_rays
        terms["semantic"] = c.semantic_weight * infonce(semantic, labels, class_embeddings.to(semantic.dtype), c.temperature)
    terms["total"] = sum(terms.values()) if terms else rgb.sum() * 0.0
    return terms
