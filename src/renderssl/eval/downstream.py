"""Downstream transfer on images: fine-tune or linearly probe an image encoder (ViT, ResNet) on the 2D
tasks of labelled scenes and score it on held-out scenes.

The task names and configs live in :mod:`.tasks`, the optimiser, schedule, batch order and model base
shared with the 3D task in :mod:`.finetuning`, the label subsets and held-out check in :mod:`.splits`,
and the runs on data splits and the scratch comparison (which dispatch to this module or to
:mod:`.segmentation3d` by task) in :mod:`.transfer`. This module imports none of :mod:`.segmentation3d`
and :mod:`.transfer`; it re-exports the shared names it used to define (``DownstreamConfig``,
``select_label_fraction``, ``param_groups``, ...), so they stay importable from here.

Design choices
--------------
Tasks and labels (:class:`TaskFrames`)
  * ``segmentation``: per-pixel semantic ids (V, H, W), -1 ignored; cross-entropy over labelled pixels.
  * ``depth``: z-depth (V, 1, H, W) in metres, 0 = invalid; L1 between predicted and true log depth over
    valid pixels (scale-relative, matches :class:`~renderssl.eval.heads.DepthHead`'s log output).
  * ``classification``: one label per scene, the most frequent non-negative semantic id over all its
    views (for ``kind='object'`` synthetic scenes: the object's class; the white background is -1),
    broadcast to each frame; cross-entropy on the class-token feature. Each frame is classified alone.
  The number of classes is ``cfg.num_classes`` if given, else ``len(class_names)`` of the first training
  scene, else the largest training label + 1. Images reach the encoder as the data layer gives them
  (float in [0, 1]), the same input pretraining sees: no extra normalisation.
Streaming
  Frames are read through :class:`TaskFrames` (a :class:`~renderssl.data.scenes.SceneList` over the
  split's scene references, so scenes are opened and frames decoded when a batch needs them, within
  the list's cache budgets) and batched by a DataLoader (``workers`` processes); nothing holds a split
  in memory. The head's set-up (class count without class names, the depth head's starting depth)
  takes one streamed pass over the training targets.
Modes, optimiser, schedule
  ``linear`` (frozen encoder, the head alone) and ``finetune`` as :mod:`.finetuning` describes; for
  classification the linear mode is MAE's linear probe, for the dense tasks the "probe" is the light
  head of :mod:`renderssl.eval.heads`. The only augmentation is a random horizontal flip (``hflip``) of
  image and target together.
Encoder access
  Everything goes through :func:`encoder_features` and :func:`encoder_dim`, so a new encoder family
  needs no other change. Dense maps: ``patch_features`` if the encoder has it (ViT: the patch-token map
  (B, D, H/p, W/p)), else ``forward_features``; when that returns a list of stage maps (ResNet: strides
  4, 8, 16, 32), the last, deepest one (B, C4, H/32, W/32), whose width is the encoder's
  ``num_features`` (the pooled feature's). The dense heads upsample it to full resolution; no
  multi-scale (FPN) head is provided, so at 32x32 a ResNet's map is 1x1. Global vectors: ``forward``
  (ViT: the class token; ResNet: the average-pooled last stage). Width: ``embed_dim``, else
  ``num_features``.
Determinism and isolation
  ``train_downstream`` deep-copies the encoder (the caller's weights are never modified), initialises
  the head under ``torch.random.fork_rng`` seeded with ``cfg.seed`` (the global RNG is left as it was),
  and draws batches and flips from a ``torch.Generator`` seeded with ``cfg.seed``: one cfg, one result
  (on a given device). Batches walk through successive random permutations of the training frames.
Metrics (``evaluate_downstream``)
  segmentation: ``miou``, ``overall_acc``, ``mean_class_acc`` (+ per-class ``iou``) from
  :class:`SegmentationScores`; depth: every key of :data:`DEPTH_KEYS` (``abs_rel``, ``rmse``, ``delta1``,
  ...) from :class:`DepthMeter` on raw metric predictions (no median scaling); classification: ``top1``
  over frames.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import FrameIndex
from ..data.scenes import SceneCache, SceneList
from ..data.types import PointCloud, ViewSet
from ..errors import InputError
from ..train.distributed import resolve_device
from .finetuning import (  # re-exported (__all__): importable from here as before
    EMBEDDING_PREFIXES, NO_DECAY_NAMES, SegmentationScores, TaskModel, batch_schedule, build_optimization,
    encoder_layer_id, layer_groups, learning_rate, no_decay_names, optim_config, param_groups, take_step,
    uses_weight_decay,
)
from .heads import DepthHead, LinearClassifier, SegmentationHead
from .metrics import DEPTH_KEYS, DepthMeter
from .splits import check_disjoint_scenes, select_label_fraction  # re-exported
from .tasks import (  # re-exported
    DENSE_TASKS, IMAGE_TASKS, MODES, POINT_FEATURES, POINT_TASKS, TASKS, DownstreamConfig, PointTaskConfig,
)


# ==================================================================================================
# Data: frames and labels
# ==================================================================================================
class TaskFrames(Dataset):
    """Every frame of ``scenes`` (ViewSets or lazily opened SceneRefs) with the task's target, decoded
    when read: image (3, H, W) float32 and segmentation (H, W) int64 (-1 = ignore) | depth (1, H, W)
    metres (0 = invalid) | classification () int64, the scene's class (:func:`scene_class`)."""

    def __init__(self, scenes: list, task: str, cache: SceneCache | None = None):
        if task not in IMAGE_TASKS:
            raise InputError(f"TaskFrames: {task!r} is not an image task; expected one of {IMAGE_TASKS}")
        if not scenes:
            raise InputError("TaskFrames: no scenes given")
        clouds = [s.name for s in scenes if isinstance(s, PointCloud) or getattr(s, "points", False)]
        if clouds:
            raise InputError(f"TaskFrames: task {task!r} needs posed images; scenes {clouds[:3]} are point clouds")
        self.scenes, self.task = SceneList(scenes, ViewSet, cache=cache), task
        self.index = FrameIndex(self.scenes.lengths())
        self._classes: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor]:
        scene, frame = self.index.locate(idx)
        data = self.scenes.frame(scene, frame)
        return data["rgb"], self.target(scene, frame, data)

    def target(self, scene: int, frame: int, data: dict) -> Tensor:
        name = self.scenes.name(scene)
        if self.task == "depth":
            if "depth" not in data:
                raise InputError(f"scene {name!r}: task 'depth' needs depth maps")
            return data["depth"]  # (1, H, W)
        if "semantic" not in data:
            raise InputError(f"scene {name!r}: task {self.task!r} needs semantic maps")
        if self.task == "segmentation":
            return data["semantic"]  # (H, W)
        if scene not in self._classes:
            n = len(self.scenes[scene])
            labels = torch.cat([self.scenes.frame(scene, f)["semantic"].reshape(-1) for f in range(n)])
            self._classes[scene] = scene_class(labels, name)
        return self._classes[scene]  # ()

    def image_size(self) -> tuple[int, int]:
        first = self.scenes[0]
        return first.height, first.width


def quiet_generator() -> torch.Generator:
    """A DataLoader's own generator, so iterating it leaves the global RNG alone (no randomness is drawn
    from it: samples and batches are fixed by the caller)."""
    return torch.Generator().manual_seed(0)


def frames_from_scenes(viewsets: list, task: str) -> tuple[Tensor, Tensor]:
    """All frames of ``viewsets`` with the task's targets, stacked: images (N, 3, H, W) and targets
    (see :class:`TaskFrames`). For small splits and tests; training and evaluation stream."""
    frames = TaskFrames(viewsets, task)
    images, targets = zip(*(frames[i] for i in range(len(frames))))
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise InputError(f"frames_from_scenes: scenes have different image sizes {sorted(shapes)}; resize them first")
    return torch.stack(images), torch.stack(targets)


def scene_class(labels: Tensor, name: str) -> Tensor:
    """() int64: the most frequent non-negative semantic id of a scene's labels (ties: the smallest id)."""
    labels = labels[labels >= 0]  # (M,)
    if labels.numel() == 0:
        raise InputError(f"scene {name!r}: no labelled pixel to take a class from")
    return torch.bincount(labels).argmax()


def infer_num_classes(frames: TaskFrames, stats: "TargetStats", cfg: DownstreamConfig) -> int:
    """Classes of the task: ``cfg.num_classes``, else the scenes' class_names, else max label + 1."""
    if cfg.num_classes is not None:
        return cfg.num_classes
    if frames.scenes[0].class_names:
        return len(frames.scenes[0].class_names)
    return stats.max_label + 1


@dataclass
class TargetStats:
    """What the head's set-up needs from the training targets, gathered in one streamed pass."""

    max_label: int = -1
    log_depth_sum: float = 0.0
    depth_count: int = 0

    @classmethod
    def of(cls, frames: TaskFrames, batch_size: int) -> "TargetStats":
        stats = cls()
        for _, targets in DataLoader(frames, batch_size=batch_size, generator=quiet_generator()):
            if frames.task == "depth":
                valid = targets[targets > 0]
                stats.log_depth_sum += float(valid.double().log().sum())
                stats.depth_count += int(valid.numel())
            else:
                stats.max_label = max(stats.max_label, int(targets.max()))
        return stats

    @property
    def mean_depth_geometric(self) -> float:
        """exp(mean log depth) over valid pixels (1.0 if none): the depth head's starting prediction."""
        return math.exp(self.log_depth_sum / self.depth_count) if self.depth_count else 1.0


# ==================================================================================================
# Encoder adapter and the downstream model
# ==================================================================================================
def encoder_features(encoder: nn.Module, images: Tensor, dense: bool) -> Tensor:
    """The one place that touches an encoder. (B, 3, H, W) -> (B, C, h, w) if ``dense`` else (B, D).

    Dense: ``patch_features``, else ``forward_features``; a list of stage maps (ResNet) gives its last,
    deepest map (B, num_features, H/32, W/32). Global: ``forward``.
    """
    name = type(encoder).__name__
    if dense:
        fn = getattr(encoder, "patch_features", None) or getattr(encoder, "forward_features", None)
        if fn is None:
            raise InputError(f"{name}: dense tasks need patch_features or forward_features")
        out = fn(images)
        if isinstance(out, (list, tuple)):  # stage maps, finest first
            if not out:
                raise InputError(f"{name}: forward_features returned no feature map")
            out = out[-1]  # (B, C_last, h, w)
        expected = 4
    else:
        out = encoder(images)
        expected = 2
    if not isinstance(out, Tensor) or out.ndim != expected:
        kind = "(B, C, h, w) feature map" if dense else "(B, D) feature vector"
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"{name}: expected a {kind}, got {got}")
    return out


def encoder_dim(encoder: nn.Module) -> int:
    """Feature width of :func:`encoder_features` (``embed_dim`` as the ViT and the ResNet, else timm's
    ``num_features``)."""
    for name in ("embed_dim", "num_features"):
        value = getattr(encoder, name, None)
        if isinstance(value, int):
            return value
    raise InputError(f"{type(encoder).__name__}: cannot tell its feature width (no embed_dim / num_features)")


class DownstreamModel(TaskModel):
    """Image encoder + task head. ``forward`` gives what the loss compares (logits, or log depth for
    depth); ``predict`` what the metrics compare (logits, or depth in metres)."""

    def features(self, images: Tensor) -> Tensor:
        dense = self.task in DENSE_TASKS
        if self.frozen_encoder:
            with torch.no_grad():
                return encoder_features(self.encoder, images, dense)
        return encoder_features(self.encoder, images, dense)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> logits (B, K, H, W) | log depth (B, 1, H, W) | logits (B, K)."""
        feats = self.features(images)
        size = tuple(images.shape[-2:])
        if self.task == "segmentation":
            return self.head(feats, size)
        if self.task == "depth":
            return self.head.log_depth(feats, size)
        return self.head(feats)

    def predict(self, images: Tensor) -> Tensor:
        out = self.forward(images)
        return out.exp() if self.task == "depth" else out

    def forward_loss(self, output: Tensor, targets: Tensor) -> Tensor:
        """Scalar task loss of ``forward``'s output against targets (see the module docstring)."""
        if self.task == "segmentation":
            labelled = (targets >= 0).sum().clamp_min(1)
            return F.cross_entropy(output, targets, ignore_index=-1, reduction="sum") / labelled
        if self.task == "depth":
            valid = targets > 0  # (B, 1, H, W)
            err = (output - targets.clamp_min(1e-6).log()).abs()  # (B, 1, H, W)
            return (err * valid).sum() / valid.sum().clamp_min(1)
        return F.cross_entropy(output, targets)


def build_head(task: str, dim: int, num_classes: int, channels: int, init_depth: float) -> nn.Module:
    if task == "segmentation":
        return SegmentationHead(dim, num_classes, channels)
    if task == "depth":
        return DepthHead(dim, channels, init_depth=init_depth)
    return LinearClassifier(dim, num_classes)


# ==================================================================================================
# Augmentation
# ==================================================================================================
def random_hflip(images: Tensor, targets: Tensor, dense: bool, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Flip each sample left-right with probability 1/2 (dense targets flip with their image)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5  # (B,)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if dense:
        f = flip.view((-1,) + (1,) * (targets.ndim - 1))
        targets = torch.where(f, targets.flip(-1), targets)
    return images, targets


# ==================================================================================================
# Train / evaluate
# ==================================================================================================
def train_downstream(encoder: nn.Module, train_scenes: list, cfg: DownstreamConfig, cache: SceneCache | None = None) -> DownstreamModel:
    """Train a head (``linear``) or encoder + head (``finetune``) on ``train_scenes``; returns the model
    in eval mode on ``cfg.device``, with ``loss_history`` (one float per step)."""
    frames = TaskFrames(train_scenes, cfg.task, cache)
    device = resolve_device(cfg.device)
    model = build_model(encoder, frames, cfg).to(device)
    optimizer, lr_schedule = build_optimization(model, cfg)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    schedule = batch_schedule(len(frames), cfg, generator)  # (steps, B)
    model.train()
    loader = DataLoader(frames, batch_sampler=schedule.tolist(), num_workers=cfg.workers, generator=quiet_generator())
    for step, (x, y) in enumerate(loader):
        if cfg.hflip:
            x, y = random_hflip(x, y, cfg.task in DENSE_TASKS, generator)
        take_step(model, model.forward_loss(model(x.to(device)), y.to(device)), optimizer, lr_schedule, step, cfg.task)
    return model.eval()


def build_model(encoder: nn.Module, frames: TaskFrames, cfg: DownstreamConfig) -> DownstreamModel:
    """A copy of ``encoder`` plus a head initialised deterministically from ``cfg.seed`` (class count and
    starting depth from one streamed pass over the training targets)."""
    stats = TargetStats.of(frames, cfg.eval_batch_size) if cfg.task == "depth" or cfg.num_classes is None else TargetStats()
    num_classes = infer_num_classes(frames, stats, cfg) if cfg.task != "depth" else 1
    init_depth = stats.mean_depth_geometric if cfg.task == "depth" else 1.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        head = build_head(cfg.task, encoder_dim(encoder), num_classes, cfg.head_channels, init_depth)
    return DownstreamModel(copy.deepcopy(encoder), head, cfg.task, num_classes, cfg.mode == "linear")


@torch.no_grad()
def evaluate_downstream(model: DownstreamModel, test_scenes: list, cfg: DownstreamConfig, cache: SceneCache | None = None) -> dict:
    """Metrics of ``model`` on every frame of ``test_scenes`` (keys in the module docstring)."""
    if model.task != cfg.task:
        raise InputError(f"evaluate_downstream: model was trained for {model.task!r}, cfg.task is {cfg.task!r}")
    frames = TaskFrames(test_scenes, cfg.task, cache)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    meter = make_meter(model)
    for x, y in DataLoader(frames, batch_size=cfg.eval_batch_size, num_workers=cfg.workers, generator=quiet_generator()):
        meter.update(model.predict(x.to(device)).cpu(), y)
    model.train(was_training)
    out = meter.compute()
    out["num_frames"] = len(frames)
    out["num_scenes"] = len(test_scenes)
    return out


class Top1Meter:
    """Fraction of samples whose arg-max logit is the label."""

    def __init__(self):
        self.correct = 0
        self.count = 0

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.correct += int((logits.argmax(dim=1) == labels).sum())
        self.count += int(labels.numel())

    def compute(self) -> dict:
        return {"top1": self.correct / self.count if self.count else math.nan}


def make_meter(model: DownstreamModel):
    if model.task == "segmentation":
        return SegmentationScores(model.num_classes)
    if model.task == "depth":
        return DepthMeter()
    return Top1Meter()


__all__ = [
    # this module
    "DEPTH_KEYS", "DownstreamModel", "TaskFrames", "TargetStats", "Top1Meter", "build_head", "build_model",
    "encoder_dim", "encoder_features", "evaluate_downstream", "frames_from_scenes", "infer_num_classes",
    "make_meter", "quiet_generator", "random_hflip", "scene_class", "train_downstream",
    # re-exported from .tasks, .splits and .finetuning
    "DENSE_TASKS", "DownstreamConfig", "EMBEDDING_PREFIXES", "IMAGE_TASKS", "MODES", "NO_DECAY_NAMES", "POINT_FEATURES",
    "POINT_TASKS", "PointTaskConfig", "SegmentationScores", "TASKS", "TaskModel", "batch_schedule",
    "build_optimization", "check_disjoint_scenes", "encoder_layer_id", "layer_groups", "learning_rate",
    "no_decay_names", "optim_config", "param_groups", "select_label_fraction", "uses_weight_decay",
]
