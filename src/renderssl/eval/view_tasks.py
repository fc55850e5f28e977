"""NPS's downstream tasks: semantic segmentation and depth of novel views, rendered by a generalizable
NeRF (``nerf_transformer``) from a target's nearest posed source views, learnt from the labels of a few
training scenes and scored on held-out scenes.

NPS (Sec. 3.3, 4.2): "For each unique downstream task, NPS's architecture is augmented with a
task-specific ray transformer block, lighter than the rendering ray transformer", trained "end-to-end,
where all parameters of NPS are adjusted simultaneously to optimize performance for novel view synthesis
and the downstream task", with "labels from only a few scenes" (ScanNet: 60 train scenes, 10 unseen test
scenes); segmentation is scored by mIoU, total and average accuracy (Table 3), depth by AbsRel and RMSE
(Table 4), each beside the rendering quality. The paper gives nothing else; the rest is our choice,
marked "ours". Configs: :class:`~renderssl.eval.tasks.DownstreamConfig` (steps, batch, lr, warm-up,
weight decay, label fraction, seed) and its ``views`` section
(:class:`~renderssl.eval.tasks.ViewTaskConfig`). Dispatched from :mod:`.transfer` (``TRAINERS["views"]``).

Mechanism
---------
Model (:class:`ViewTaskModel`)
  The :class:`~renderssl.models.nerf.generalizable_nerf.GeneralizableNeRF` (a copy of the pretrained or
  scratch encoder) plus one :class:`~renderssl.models.heads.ray_task_head.RayTaskHead` (``views.head_blocks``
  ray-transformer blocks, default 1) on the trunk's per-sample features: ``view_segmentation`` ->
  ``kind="classes"`` logits (K,) per ray; ``view_depth`` -> ``kind="depth"``, the head's attention-weighted
  sample depth. Rays are parameterised by z-depth (unit camera-z directions, as GNT's ``K^-1 [u, v, 1]``),
  so ``RayOutput.t`` and the head's depth are z-depth and compare with the depth maps directly. The head
  is initialised under ``fork_rng`` seeded with ``cfg.seed``.
Views (ours)
  A sample is one random target frame of a labelled scene and exactly its ``views.source_views`` nearest
  views by camera distance (:func:`~renderssl.eval.novel_views.nearest_sources`, GNT's evaluation views; no
  curriculum), through :class:`~renderssl.data.datasets.MultiViewDataset` (frames at the scenes' own size;
  ``near`` / ``far`` from the source views' depth), widened by GNT's ``near_scale`` 0.9 / ``far_scale`` 1.5.
  ``source_views`` defaults to 6 (GNT evaluates with 10; the tiny synthetic scenes have 10-16 frames, and
  NPS's curriculum trains down to 2); a split whose smallest scene has no more frames than that is refused.
Training (:func:`train_view_task`)
  Each step: ``batch_size`` samples (scenes in successive random permutations, :func:`batch_schedule`;
  new targets every step: the dataset's epoch is the step), ``views.rays_per_target`` distinct rays per
  target uniform over the image as in pretraining (:func:`pick_ray_pixels`), samples stratified in inverse
  depth. Loss = ``views.rgb_weight`` x MSE(colour, target pixels) over every ray (NPS's joint NVS
  objective; 1 by default) + the task term over the rays at labelled pixels (semantic >= 0 | depth > 0;
  rays drawn among labelled pixels only made the fine-tuned NeRF forget an object scene's unlabelled
  background: its held-out PSNR fell from 19.5 to 12.3 dB in 20 steps): cross-entropy of the logits, or
  (ours) L1 between log predicted and log true z-depth, scale-relative as the image depth task
  (:mod:`.downstream`), finite since the head's depth lies in the positive sample range.
  Optimiser and schedule: :func:`~renderssl.eval.finetuning.build_optimization` (AdamW, warm-up + cosine,
  no decay on 1-D parameters), one learning rate for the CNN and the trunk (ours: NPS's pretraining gives
  the CNN its own, fine-tuning does not say). ``mode: finetune`` trains every parameter; ``mode: linear``
  freezes the NeRF (rendered under ``no_grad``; the colour term is then reported but trains nothing) and
  trains the head alone. No flips (a flipped target breaks its geometry with the sources); ``workers`` is
  unused (samples are read in the main process, so the per-step epoch reaches the dataset).
Determinism
  Ray pixels, stratified samples and the batch order come from one generator seeded with ``cfg.seed``;
  dropout runs under ``fork_rng`` seeded with ``cfg.seed`` (the global RNG is left as it was); samples
  are functions of (``cfg.seed``, step, index). One cfg, one result on a given device.
Evaluation (:func:`evaluate_view_task`)
  Per test scene ``views.eval_targets`` (default 2) random target frames, each with its
  ``source_views`` nearest views, drawn with a fixed seed (0), not ``cfg.seed`` (ours), so every run and
  seed of a comparison scores the same views; every pixel rendered (bin midpoints in inverse depth,
  deterministic), one target at a time, ``views.eval_chunk`` rays at a time (``eval_batch_size`` is not
  used: a full target is already ``eval_chunk`` x samples x source views tokens per chunk). Segmentation: the argmax of the logits over the
  pixels with a label, one confusion matrix over all targets (:class:`SegmentationScores`): ``miou`` over
  classes with a non-empty union, ``overall_acc`` (NPS's total accuracy), ``mean_class_acc`` (NPS's average
  accuracy), per-class ``iou``. Depth: :class:`~renderssl.eval.metrics.DepthMeter` (per-image means over
  pixels with depth > 0, then over images, raw metric depth, no median scaling): ``abs_rel``, ``rmse`` (NPS's
  two) and the other :data:`~renderssl.eval.metrics.DEPTH_KEYS`. Both: ``psnr`` of the rendered colour
  (clamped to [0, 1]) per target image, averaged over images; ``num_images``, ``num_scenes``.
Classes
  ``cfg.num_classes`` if given, else the first training scene's ``class_names``; neither is an error
  naming ``downstream.num_classes``. A training label outside the classes is an error naming the scene.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import MultiViewDataset, collate_stacked
from ..data.scenes import SceneCache, SceneList
from ..data.types import PointCloud, ViewSet
from ..errors import InputError
from ..models.heads.ray_task_head import RayTaskHead, RayTaskHeadConfig
from ..models.nerf.generalizable_nerf import (
    GeneralizableNeRF, RayOutput, SourceViews, gather_pixels, pixel_centres, random_pixels,
)
from ..train.distributed import resolve_device
from .finetuning import SegmentationScores, TaskModel, batch_schedule, build_optimization, take_step
from .metrics import DepthMeter, psnr
from .novel_views import nearest_sources
from .tasks import VIEW_TASKS, DownstreamConfig, ViewTaskConfig

HEAD_KINDS = {"view_segmentation": "classes", "view_depth": "depth"}
EVAL_SEED = 0  # the evaluation's target draw, the same for every run (module docstring)


# ==================================================================================================
# Rays at labelled pixels
# ==================================================================================================
def target_labels(batch: dict, task: str) -> tuple[Tensor, Tensor]:
    """The target view's (the batch's last view's) labels and their validity: semantic (B, H, W) int64
    with valid = label >= 0, or z-depth (B, H, W) with valid = depth > 0."""
    key = "semantic" if task == "view_segmentation" else "depth"
    if key not in batch:
        raise InputError(f"{task}: the scenes carry no {key} maps (needed as labels of the target views)")
    labels = batch[key][:, -1]  # (B, H, W) | (B, 1, H, W)
    if key == "depth":
        labels = labels[:, 0]  # (B, H, W)
    return labels, (labels >= 0) if key == "semantic" else (labels > 0)


def pick_ray_pixels(valid: Tensor, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` distinct flat pixels per target, uniform over the whole image as in pretraining (top-k of
    i.i.d. keys): valid (B, H, W) bool -> pixels (B, R) int64 (i W + j) and whether each is labelled (B, R).
    The colour term covers every ray, the task term the labelled ones: rays drawn among labelled pixels
    only would leave the unlabelled ones (an object scene's background) out of the colour term, and the
    fine-tuned NeRF forgets how to render them."""
    B, H, W = valid.shape
    pixels = random_pixels(B, H, W, count, generator, "downstream.views.rays_per_target").to(valid.device)  # (B, R)
    return pixels, gather_pixels(valid, pixels)


# ==================================================================================================
# The model
# ==================================================================================================
class ViewTaskModel(TaskModel):
    """GeneralizableNeRF + task ray-transformer head: target rays -> colour and logits (K,) | z-depth."""

    def __init__(self, encoder: GeneralizableNeRF, head: RayTaskHead, task: str, num_classes: int, frozen_encoder: bool,
                 views: ViewTaskConfig):
        super().__init__(encoder, head, task, num_classes, frozen_encoder)
        self.views = views

    def bounds(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(B,) near and far of the samples (GNT's widened bounds of the sample's near / far)."""
        return batch["near"].float() * self.views.near_scale, batch["far"].float() * self.views.far_scale

    def encode(self, batch: dict) -> SourceViews:
        """The batch's source views (every view but the last) with their CNN features."""
        rgb, K, c2w = batch["rgb"], batch["K"].float(), batch["c2w"].float()  # (B, V + 1, 3, H, W), ...
        return self.encoder.encode_sources(rgb[:, :-1], K[:, :-1], c2w[:, :-1])

    def rays(self, batch: dict, sources: SourceViews, uv: Tensor, generator: torch.Generator | None = None) -> RayOutput:
        """The target (the batch's last view) at pixels uv (B, R, 2) through the NeRF; stratified samples
        with a generator, bin midpoints without."""
        near, far = self.bounds(batch)
        return self.encoder.render_pixels(sources, batch["K"][:, -1].float(), batch["c2w"][:, -1].float(), uv, near, far,
                                          self.views.num_samples, generator)

    def head_output(self, out: RayOutput) -> Tensor:
        """The task head on the rays' per-sample features -> logits (B, R, K) | z-depth (B, R)."""
        B, R, S, D = out.features.shape
        pred = self.head(out.features.reshape(B * R, S, D), out.t.reshape(B * R, S))  # (B R, K) | (B R,)
        return pred.reshape(B, R, *pred.shape[1:])

    def render(self, batch: dict, sources: SourceViews, uv: Tensor, generator: torch.Generator | None = None
               ) -> tuple[RayOutput, Tensor]:
        """(:meth:`rays`, :meth:`head_output`) at pixels uv (B, R, 2) of the target."""
        out = self.rays(batch, sources, uv, generator)
        return out, self.head_output(out)

    def forward(self, batch: dict, uv: Tensor, generator: torch.Generator | None = None) -> tuple[RayOutput, Tensor]:
        """:meth:`render` from the batch's sources; a frozen NeRF is run without gradients."""
        if self.frozen_encoder:
            with torch.no_grad():
                out = self.rays(batch, self.encode(batch), uv, generator)
            return out, self.head_output(out)
        return self.render(batch, self.encode(batch), uv, generator)

    def task_loss(self, pred: Tensor, labels: Tensor, labelled: Tensor) -> Tensor:
        """Cross-entropy (logits (B, R, K), classes (B, R)) or L1 of log z-depth (depth (B, R) vs (B, R)) over
        the labelled rays (B, R) bool."""
        if not bool(labelled.any()):
            return pred.sum() * 0.0
        if self.task == "view_segmentation":
            return F.cross_entropy(pred[labelled], labels[labelled])
        return (pred[labelled].clamp_min(1e-6).log() - labels[labelled].log()).abs().mean()

    def training_loss(self, batch: dict, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """One step's loss on a batch: random labelled rays of each target (module docstring)."""
        labels, valid = target_labels(batch, self.task)  # (B, H, W) each
        pixels, labelled = pick_ray_pixels(valid, self.views.rays_per_target, generator)  # (B, R) each
        W = labels.shape[-1]
        out, pred = self(batch, pixel_centres(pixels, W), generator)
        colour = gather_pixels(batch["rgb"][:, -1], pixels)  # (B, R, 3)
        mse = F.mse_loss(out.rgb, colour)
        task = self.task_loss(pred, gather_pixels(labels, pixels), labelled)
        loss = task + (self.views.rgb_weight * mse if not self.frozen_encoder else 0.0)
        return loss, {"mse": float(mse.detach()), "task": float(task.detach())}

    @torch.no_grad()
    def render_full(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Every pixel of the targets, deterministic -> rgb (B, 3, H, W) and logits (B, K, H, W) | depth (B, 1, H, W)."""
        sources = self.encode(batch)
        B, _, _, H, W = batch["rgb"].shape
        uv = pixel_centres(torch.arange(H * W, device=batch["rgb"].device).expand(B, -1), W)  # (B, H W, 2)
        rgb, pred = [], []
        for start in range(0, H * W, self.views.eval_chunk):
            out, p = self.render(batch, sources, uv[:, start:start + self.views.eval_chunk])
            rgb.append(out.rgb)
            pred.append(p)
        rgb = torch.cat(rgb, dim=1).transpose(1, 2).reshape(B, 3, H, W)  # (B, 3, H, W)
        pred = torch.cat(pred, dim=1)  # (B, H W, K) | (B, H W)
        pred = pred.transpose(1, 2).reshape(B, -1, H, W) if pred.dim() == 3 else pred.reshape(B, 1, H, W)
        return rgb, pred


# ==================================================================================================
# Data
# ==================================================================================================
def view_task_dataset(scenes: list, cfg: DownstreamConfig, seed: int, cache: SceneCache | None = None,
                      samples_per_scene: int = 1) -> MultiViewDataset:
    """Samples of ``scenes``: a random target and its ``cfg.views.source_views`` nearest views (the sources
    first), seeded by ``seed``; decoded frames shared through ``cache`` when given."""
    if not scenes:
        raise InputError(f"{cfg.task}: no scenes given")
    clouds = [getattr(s, "name", "?") for s in scenes if isinstance(s, PointCloud) or getattr(s, "points", False)]
    if clouds:
        raise InputError(f"{cfg.task}: needs posed RGB-D views; scenes {clouds[:3]} are point clouds")
    n = cfg.views.source_views
    dataset = MultiViewDataset(scenes, views=nearest_sources(n), seed=int(seed), samples_per_scene=samples_per_scene)
    if cache is not None:
        dataset.scenes = SceneList(scenes, ViewSet, cache=cache)
    if dataset.fewest_frames() <= n:
        raise InputError(f"{cfg.task}: downstream.views.source_views is {n}, but a scene has only "
                         f"{dataset.fewest_frames()} frames (the target needs {n} other views); lower it")
    return dataset


def view_num_classes(dataset: MultiViewDataset, cfg: DownstreamConfig) -> int:
    """``cfg.num_classes``, else the first scene's class names (module docstring)."""
    if cfg.task != "view_segmentation":
        return 1
    if cfg.num_classes is not None:
        return int(cfg.num_classes)
    names = getattr(dataset.scenes[0], "class_names", None)
    if not names:
        raise InputError(f"view_segmentation: the training scene {dataset.scenes.name(0)!r} carries no class names; "
                         "set downstream.num_classes")
    return len(names)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def check_view_task(encoder: nn.Module, cfg: DownstreamConfig) -> None:
    if cfg.task not in VIEW_TASKS:
        raise InputError(f"view tasks: {cfg.task!r} is not one of {list(VIEW_TASKS)}")
    if not isinstance(encoder, GeneralizableNeRF):
        raise InputError(f"task {cfg.task!r} needs a view encoder (nerf_transformer, a GeneralizableNeRF); got "
                         f"{type(encoder).__name__}")


def build_view_model(encoder: GeneralizableNeRF, cfg: DownstreamConfig, num_classes: int) -> ViewTaskModel:
    """A copy of ``encoder`` plus the task head, initialised from ``cfg.seed``."""
    kind = HEAD_KINDS[cfg.task]
    head_cfg = RayTaskHeadConfig(kind=kind, num_classes=num_classes if kind == "classes" else 0,
                                 blocks=cfg.views.head_blocks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        head = RayTaskHead(head_cfg, encoder.dim)
    return ViewTaskModel(copy.deepcopy(encoder), head, cfg.task, num_classes, cfg.mode == "linear", cfg.views)


def check_classes(batch: dict, num_classes: int, task: str) -> None:
    if task != "view_segmentation":
        return
    labels = batch["semantic"][:, -1]  # (B, H, W)
    top = int(labels.max()) if labels.numel() else -1
    if top >= num_classes:
        b = int((labels.flatten(1).max(dim=1).values >= num_classes).nonzero()[0])
        raise InputError(f"view_segmentation: scene {batch['scene'][b]!r} has label {top}, but there are {num_classes} "
                         f"classes (labels 0..{num_classes - 1}); set downstream.num_classes")


# ==================================================================================================
# Train / evaluate
# ==================================================================================================
def train_view_task(encoder: nn.Module, train_scenes: list, cfg: DownstreamConfig,
                    cache: SceneCache | None = None) -> ViewTaskModel:
    """Fine-tune (or probe, ``mode: linear``) ``encoder`` with a task head on ``train_scenes``; returns the
    model in eval mode on ``cfg.device`` with ``loss_history`` (one float per step) and ``mse_history``."""
    check_view_task(encoder, cfg)
    dataset = view_task_dataset(train_scenes, cfg, cfg.seed, cache)
    device = resolve_device(cfg.device)
    model = build_view_model(encoder, cfg, view_num_classes(dataset, cfg)).to(device)
    model.mse_history = []
    optimizer, lr_schedule = build_optimization(model, cfg)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    schedule = batch_schedule(len(dataset), cfg, generator)  # (steps, B) scene indices
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(cfg.seed))  # dropout
        model.train()
        for step, idx in enumerate(schedule):
            dataset.set_epoch(step)  # new targets every step
            batch = to_device(collate_stacked([dataset[int(i)] for i in idx]), device)
            check_classes(batch, model.num_classes, cfg.task)
            loss, terms = model.training_loss(batch, generator)
            take_step(model, loss, optimizer, lr_schedule, step, cfg.task)
            model.mse_history.append(terms["mse"])
    return model.eval()


def score_views(model: ViewTaskModel, batches) -> dict:
    """Metrics of ``model`` over multi-view batches (sources then one target each; module docstring)."""
    seg = model.task == "view_segmentation"
    meter = SegmentationScores(model.num_classes) if seg else DepthMeter()
    psnr_sum, images = 0.0, 0
    for batch in batches:
        rgb, pred = model.render_full(batch)  # (B, 3, H, W), (B, K | 1, H, W)
        labels, _ = target_labels(batch, model.task)  # (B, H, W)
        if seg:
            meter.update(pred.argmax(dim=1).cpu(), labels.cpu())
        else:
            meter.update(pred.cpu(), labels[:, None].cpu())
        psnr_sum += float(psnr(rgb.clamp(0, 1).float(), batch["rgb"][:, -1].float()).double().sum())
        images += rgb.shape[0]
    out = meter.compute()
    out.pop("num_images", None)
    out["psnr"] = psnr_sum / images if images else math.nan
    out["num_images"] = images
    return out


@torch.no_grad()
def evaluate_view_task(model: ViewTaskModel, test_scenes: list, cfg: DownstreamConfig,
                       cache: SceneCache | None = None) -> dict:
    """Metrics of ``model`` on ``views.eval_targets`` full target frames per test scene (keys in the module docstring)."""
    if model.task != cfg.task:
        raise InputError(f"evaluate_view_task: the model was trained for {model.task!r}, cfg.task is {cfg.task!r}")
    dataset = view_task_dataset(test_scenes, cfg, EVAL_SEED, cache, samples_per_scene=cfg.views.eval_targets)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = (to_device(collate_stacked([dataset[i]]), device) for i in range(len(dataset)))  # one target at a time
    out = score_views(model, batches)
    model.train(was_training)
    out["num_scenes"] = len(test_scenes)
    return out


__all__ = [
    "EVAL_SEED", "HEAD_KINDS", "ViewTaskModel", "build_view_model", "evaluate_view_task", "gather_pixels", "pick_ray_pixels",
    "pixel_centres", "score_views", "target_labels", "train_view_task", "view_num_classes", "view_task_dataset",
]
