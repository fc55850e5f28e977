"""Downstream transfer: fine-tune or linearly probe an encoder on labelled scenes, score it on held-out
scenes, and compare it with the same encoder trained from scratch on the same labels and budget.

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
  * ``segmentation3d``: per-point semantic ids of scene point clouds; see :mod:`.segmentation3d`
    (configured by ``DownstreamConfig.points``). It shares splits, label fractions, optimiser,
    schedule and scratch comparison with the image tasks.
Streaming
  Frames are read through :class:`TaskFrames` (a :class:`~renderssl.data.scenes.SceneList` over the
  split's scene references, so scenes are opened and frames decoded when a batch needs them, within
  the list's cache budgets) and batched by a DataLoader (``workers`` processes); nothing holds a split
  in memory. The head's set-up (class count without class names, the depth head's starting depth)
  takes one streamed pass over the training targets.
Modes
  * ``linear``: the encoder is frozen (``requires_grad_(False)``, kept in eval mode even when the model
    is put in train mode, features computed under ``no_grad``); only the head trains. For
    classification that is MAE's linear probe; for the dense tasks the "probe" is the light head of
    :mod:`renderssl.eval.heads`.
  * ``finetune``: encoder and head train together.
  Both modes use the engine's optimiser and schedule code (:mod:`renderssl.train.optim`,
  :mod:`renderssl.train.schedule`) through :func:`optim_config` and :func:`build_optimization`: AdamW
  (betas 0.9, 0.999, eps 1e-8) with a per-step schedule, linear warm-up over ``warmup`` steps to ``lr``,
  then a half-cycle cosine to 0 (MAE's fine-tuning schedule, counted in steps, not epochs). The warm-up
  is ``lr (t + 1) / warmup`` (``warmup_from_zero: false``), so the first step already moves, unlike
  pretraining's MAE warm-up that starts at 0. Weight decay skips 1-D parameters (biases, norms) and
  tokens/position embeddings, by name (MAE's rule, passed as ``skip``), plus whatever the shared rule
  adds (names ending in ``.bias``, names a module lists in ``no_weight_decay()``).
  Layer-wise lr decay (MAE/BEiT): with L ViT blocks, the patch embedding, class token and position
  embedding are layer 0, block i is layer i + 1, everything after (final norm, head) is layer L + 1;
  layer l gets ``lr * layer_decay ** (L + 1 - l)``: parameter groups ``layer_0`` .. ``layer_L`` of the
  shared code (:func:`layer_groups`), layer L + 1 its default group. Encoders without ``blocks`` (and
  ``layer_decay`` 1) get scale 1 everywhere, i.e. the default group only.
  The only augmentation is a random horizontal flip (``hflip``) of image and target together.
Encoder access
  Everything goes through :func:`encoder_features` (dense maps: ``patch_features`` if the encoder has it,
  else a 4-D ``forward_features``, e.g. a ResNet trunk; global vectors: ``forward``) and
  :func:`encoder_dim` (``embed_dim`` or ``num_features``), so a new encoder family needs no other change.
Determinism and isolation
  ``train_downstream`` deep-copies the encoder (the caller's weights are never modified), initialises
  the head under ``torch.random.fork_rng`` seeded with ``cfg.seed`` (the global RNG is left as it was),
  and draws batches and flips from a ``torch.Generator`` seeded with ``cfg.seed``: one cfg, one result
  (on a given device). Batches walk through successive random permutations of the training frames.
Splits (``run_downstream``)
  Train on ``select_label_fraction(train split, label_fraction, seed)`` and score on the TEST split
  only; :func:`check_disjoint_scenes` raises if a scene name is in both (or a name is missing). The label
  subset is the first ``n = max(1, round(fraction * scenes))`` scenes of a seeded permutation, kept in
  split order, so for one seed smaller fractions are subsets of larger ones.
  The encoder factory is called under ``fork_rng`` seeded with ``cfg.seed``, so a scratch encoder's
  initialisation is deterministic too and differs between seeds.
Scratch comparison (``compare_with_scratch``)
  Pretrained and scratch runs share splits, label subset, head init, batches and budget per seed; the
  summary gives per-seed metrics and the mean and sample standard deviation (ddof 1; 0 for one seed)
  of every scalar metric, and ``delta`` = pretrained mean - scratch mean.
Metrics (``evaluate_downstream``)
  segmentation: ``miou``, ``overall_acc``, ``mean_class_acc`` (+ per-class ``iou``) from
  :class:`SegmentationMeter`; depth: every key of :data:`DEPTH_KEYS` (``abs_rel``, ``rmse``, ``delta1``,
  ...) from :class:`DepthMeter` on raw metric predictions (no median scaling); classification: ``top1``
  over frames.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch.utils.data import DataLoader, Dataset

from ..data.build import load_split
from ..data.datasets import FrameIndex
from ..data.points import PointAugmentConfig
from ..data.scenes import SceneList
from ..data.types import PointCloud, ViewSet
from ..errors import InputError
from ..methods.base import ParamGroup
from ..train.config import DataConfig, OptimConfig
from ..train.distributed import resolve_device
from ..train.optim import build_optimizer
from ..train.optim import param_groups as shared_param_groups
from ..train.schedule import StepSchedule, build_scheduler, lr_at_step
from .heads import HEAD_CHANNELS, DepthHead, LinearClassifier, SegmentationHead
from .metrics import DEPTH_KEYS, DepthMeter, SegmentationMeter

TASKS = ("segmentation", "depth", "classification", "segmentation3d")
POINT_TASKS = ("segmentation3d",)
POINT_FEATURES = {"color": ("colors",), "color_normal": ("colors", "normals")}  # input features -> cloud fields
MODES = ("finetune", "linear")
DENSE_TASKS = ("segmentation", "depth")
IMAGE_TASKS = DENSE_TASKS + ("classification",)
NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed", "dist_token")
EMBEDDING_PREFIXES = ("cls_token", "mask_token", "pos_embed", "patch_embed")


@dataclass
class PointTaskConfig:
    """How scenes become training and test clouds for the point tasks (:mod:`.segmentation3d`)."""

    features: str = "color_normal"  # color | color_normal: the encoder's input channels (3 | 6)
    frame_stride: int = 1  # every k-th pixel of every frame when a scene's RGB-D frames are fused
    grid_size: float = 0.02  # train-time random grid sampling, scene units (Pointcept GridSample); 0 = off
    max_points: int = 0  # cap on points per training cloud after grid sampling; 0 = no cap
    augment: PointAugmentConfig = field(default_factory=PointAugmentConfig)

    def __post_init__(self):
        if self.features not in POINT_FEATURES:
            raise InputError(f"PointTaskConfig.features: expected one of {list(POINT_FEATURES)}, got {self.features!r}")
        if self.frame_stride < 1 or self.grid_size < 0 or self.max_points < 0:
            raise InputError("PointTaskConfig: frame_stride must be >= 1, grid_size and max_points >= 0")

    @property
    def in_channels(self) -> int:
        """Input channels the features give a 3D encoder (3 per field: colours, normals)."""
        return 3 * len(POINT_FEATURES[self.features])


@dataclass
class DownstreamConfig:
    """One downstream run. Build from YAML with ``train.config.from_dict(DownstreamConfig, data)``."""

    task: str = "segmentation"  # segmentation | depth | classification
    mode: str = "finetune"  # finetune | linear (frozen encoder)
    steps: int = 200
    batch_size: int = 16
    lr: float = 5e-4  # peak learning rate (absolute)
    weight_decay: float = 0.05
    warmup: int = 20  # warm-up steps
    layer_decay: float = 1.0  # MAE layer-wise lr decay on ViT blocks; 1.0 = off
    label_fraction: float = 1.0  # fraction of the train scenes whose labels are used (>= 1 scene)
    seed: int = 0
    eval_batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    hflip: bool = True  # random horizontal flips of training frames
    head_channels: int = HEAD_CHANNELS  # width of the dense heads' trunk
    num_classes: int | None = None  # None = len(class_names) of the training scenes
    workers: int = 0  # DataLoader worker processes decoding frames
    points: PointTaskConfig = field(default_factory=PointTaskConfig)  # point tasks only

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str):
            raise InputError(f"DownstreamConfig.{name}: {why} (got {getattr(self, name)!r})")

        if self.task not in TASKS:
            bad("task", f"expected one of {TASKS}")
        if self.mode not in MODES:
            bad("mode", f"expected one of {MODES}")
        if self.steps < 1:
            bad("steps", "must be >= 1")
        if self.batch_size < 2:
            bad("batch_size", "must be >= 2 (the heads' BatchNorm needs two samples)")
        if self.eval_batch_size < 1:
            bad("eval_batch_size", "must be >= 1")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.warmup < 0:
            bad("warmup", "must be >= 0")
        if not 0 < self.layer_decay <= 1:
            bad("layer_decay", "must lie in (0, 1]")
        if not 0 < self.label_fraction <= 1:
            bad("label_fraction", "must lie in (0, 1]")
        if self.head_channels < 1:
            bad("head_channels", "must be >= 1")
        if self.num_classes is not None and self.num_classes < 1:
            bad("num_classes", "must be >= 1")


# ==================================================================================================
# Data: frames, labels, label fractions, splits
# ==================================================================================================
class TaskFrames(Dataset):
    """Every frame of ``scenes`` (ViewSets or lazily opened SceneRefs) with the task's target, decoded
    when read: image (3, H, W) float32 and segmentation (H, W) int64 (-1 = ignore) | depth (1, H, W)
    metres (0 = invalid) | classification () int64, the scene's class (:func:`scene_class`)."""

    def __init__(self, scenes: list, task: str, cache_scenes: int = 8, cache_mb: float = 512.0):
        if task not in IMAGE_TASKS:
            raise InputError(f"TaskFrames: {task!r} is not an image task; expected one of {IMAGE_TASKS}")
        if not scenes:
            raise InputError("TaskFrames: no scenes given")
        clouds = [s.name for s in scenes if isinstance(s, PointCloud) or getattr(s, "points", False)]
        if clouds:
            raise InputError(f"TaskFrames: task {task!r} needs posed images; scenes {clouds[:3]} are point clouds")
        self.scenes, self.task = SceneList(scenes, ViewSet, cache_scenes, cache_mb), task
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


def select_label_fraction(viewsets: list[ViewSet], fraction: float, seed: int) -> list[ViewSet]:
    """The scenes whose labels are used: ``max(1, round(fraction * len))`` of them, drawn by a seeded
    permutation and returned in their original order (nested across fractions for one seed)."""
    if not 0 < fraction <= 1:
        raise InputError(f"label_fraction must lie in (0, 1], got {fraction}")
    if not viewsets:
        raise InputError("select_label_fraction: no scenes given")
    n = max(1, int(math.floor(fraction * len(viewsets) + 0.5)))
    order = torch.randperm(len(viewsets), generator=torch.Generator().manual_seed(int(seed)))
    keep = order[:n].sort().values.tolist()
    return [viewsets[i] for i in keep]


def check_disjoint_scenes(train: list[ViewSet], test: list[ViewSet]) -> None:
    """Raise :class:`InputError` if a scene is unnamed or named in both ``train`` and ``test``."""
    if any(not v.name for v in list(train) + list(test)):
        raise InputError("downstream: every scene needs a name to prove train and test are disjoint")
    shared = sorted({v.name for v in train} & {v.name for v in test})
    if shared:
        raise InputError(f"downstream: test scenes also used for training: {shared}")


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
    """The one place that touches an encoder. (B, 3, H, W) -> (B, C, h, w) if ``dense`` else (B, D)."""
    if dense:
        fn = getattr(encoder, "patch_features", None) or getattr(encoder, "forward_features", None)
        if fn is None:
            raise InputError(f"{type(encoder).__name__}: dense tasks need patch_features or forward_features")
        out = fn(images)
        expected = 4
    else:
        out = encoder(images)
        expected = 2
    if out.ndim != expected:
        kind = "(B, C, h, w) feature map" if dense else "(B, D) feature vector"
        raise InputError(f"{type(encoder).__name__}: expected a {kind}, got {tuple(out.shape)}")
    return out


def encoder_dim(encoder: nn.Module) -> int:
    """Feature width of an encoder (``embed_dim`` as the ViT, or timm's ``num_features``)."""
    for name in ("embed_dim", "num_features"):
        value = getattr(encoder, name, None)
        if isinstance(value, int):
            return value
    raise InputError(f"{type(encoder).__name__}: cannot tell its feature width (no embed_dim / num_features)")


class DownstreamModel(nn.Module):
    """Encoder + task head. ``forward`` gives what the loss compares (logits, or log depth for depth);
    ``predict`` what the metrics compare (logits, or depth in metres)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, task: str, num_classes: int, frozen_encoder: bool):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.task = task
        self.num_classes = num_classes
        self.frozen_encoder = frozen_encoder
        self.loss_history: list[float] = []
        if frozen_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> "DownstreamModel":
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()  # a frozen encoder never updates BatchNorm statistics
        return self

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
# Optimisation
# ==================================================================================================
def encoder_layer_id(name: str, num_blocks: int) -> int:
    """MAE layer id of an encoder parameter: embeddings 0, ``blocks.i.*`` i + 1, the rest num_blocks + 1."""
    if name.startswith(EMBEDDING_PREFIXES):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_blocks + 1


def uses_weight_decay(name: str, param: Tensor) -> bool:
    """MAE's fine-tuning rule: decay only parameters with ndim > 1 that are not tokens / position embeddings."""
    return param.ndim > 1 and name.split(".")[-1] not in NO_DECAY_NAMES


def no_decay_names(model: nn.Module) -> list[str]:
    """Full names of ``model``'s parameters :func:`uses_weight_decay` exempts (the shared code's ``skip``)."""
    return [name for name, param in model.named_parameters() if not uses_weight_decay(name, param)]


def layer_groups(model: DownstreamModel, lr: float, layer_decay: float) -> list[ParamGroup]:
    """Layer-wise lr decay as parameter groups: ``layer_l`` (prefixes of :func:`encoder_layer_id`'s layer
    l = 0 .. L) at ``lr * layer_decay ** (L + 1 - l)``; layer L + 1 is left to the default group (``lr``).
    Empty when the encoder has no ``blocks`` or ``layer_decay`` is 1 (every scale would be 1)."""
    blocks = getattr(model.encoder, "blocks", None)
    if blocks is None or layer_decay == 1:
        return []
    num_blocks = len(blocks)
    embeddings = tuple(f"encoder.{p}" for p in EMBEDDING_PREFIXES)
    groups = [ParamGroup("layer_0", embeddings, lr=lr * layer_decay ** (num_blocks + 1))]
    for i in range(num_blocks):
        groups.append(ParamGroup(f"layer_{i + 1}", (f"encoder.blocks.{i}.",), lr=lr * layer_decay ** (num_blocks - i)))
    return groups


def optim_config(cfg: DownstreamConfig) -> OptimConfig:
    """Fine-tuning's optimiser and schedule in the engine's terms (see the module docstring)."""
    return OptimConfig(name="adamw", lr=cfg.lr, min_lr=0.0, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8,
                       schedule="cosine", warmup_steps=cfg.warmup, warmup_from_zero=False)


def param_groups(model: DownstreamModel, weight_decay: float, layer_decay: float) -> list[dict]:
    """The torch param groups fine-tuning uses, for a peak lr of 1: non-empty groups of the shared code
    (``params``, ``names``, ``name``, ``decay``, ``weight_decay``) with ``lr_scale``, their lr / ``cfg.lr``."""
    groups = shared_param_groups(model, weight_decay, no_decay_names(model), lr=1.0,
                                 groups=layer_groups(model, 1.0, layer_decay))
    return [{**{k: v for k, v in g.items() if k != "lr"}, "lr_scale": g["lr"]} for g in groups if g["params"]]


def build_optimization(model: nn.Module, cfg: DownstreamConfig) -> tuple[torch.optim.Optimizer, StepSchedule]:
    """AdamW over ``model``'s trainable parameters and its schedule; step the schedule after every optimizer step."""
    ocfg = optim_config(cfg)
    groups = layer_groups(model, cfg.lr, cfg.layer_decay)
    optimizer = build_optimizer(model, ocfg, total_batch=cfg.batch_size, groups=groups, skip=no_decay_names(model))
    return optimizer, build_scheduler(optimizer, ocfg, cfg.steps)


def learning_rate(step: int, cfg: DownstreamConfig) -> float:
    """lr of step ``step`` (0-based) at layer scale 1: warm-up ``lr (step + 1) / warmup``, then cosine to 0."""
    return lr_at_step(step, cfg.lr, 0.0, cfg.warmup, cfg.steps, from_zero=False)


def batch_schedule(num_frames: int, cfg: DownstreamConfig, generator: torch.Generator) -> Tensor:
    """(steps, batch_size) frame indices walking through successive random permutations."""
    total = cfg.steps * cfg.batch_size
    epochs = -(-total // num_frames)
    order = torch.cat([torch.randperm(num_frames, generator=generator) for _ in range(epochs)])
    return order[:total].view(cfg.steps, cfg.batch_size)


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
def train_downstream(encoder: nn.Module, train_scenes: list[ViewSet], cfg: DownstreamConfig) -> DownstreamModel:
    """Train a head (``linear``) or encoder + head (``finetune``) on ``train_scenes``; returns the model
    in eval mode on ``cfg.device``, with ``loss_history`` (one float per step)."""
    frames = TaskFrames(train_scenes, cfg.task)
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
        loss = model.forward_loss(model(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        model.loss_history.append(float(loss.detach()))
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
def evaluate_downstream(model: DownstreamModel, test_scenes: list[ViewSet], cfg: DownstreamConfig) -> dict:
    """Metrics of ``model`` on every frame of ``test_scenes`` (keys in the module docstring)."""
    if model.task != cfg.task:
        raise InputError(f"evaluate_downstream: model was trained for {model.task!r}, cfg.task is {cfg.task!r}")
    frames = TaskFrames(test_scenes, cfg.task)
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


class SegmentationScores(SegmentationMeter):
    """SegmentationMeter whose ``compute`` keeps the scalar scores and per-class IoU as a list."""

    def compute(self) -> dict:
        out = super().compute()
        return {"miou": out["miou"], "overall_acc": out["overall_acc"], "mean_class_acc": out["mean_class_acc"],
                "iou": out["iou"].tolist()}


def make_meter(model: DownstreamModel):
    if model.task == "segmentation":
        return SegmentationScores(model.num_classes)
    if model.task == "depth":
        return DepthMeter()
    return Top1Meter()


# ==================================================================================================
# Runs on data splits, and the scratch comparison
# ==================================================================================================
EncoderFactory = Callable[[], nn.Module]


def run_downstream(encoder_factory: EncoderFactory, data_cfg: DataConfig, cfg: DownstreamConfig) -> dict:
    """Train on a label fraction of the train split, score on the test split.

    Returns ``{"metrics": {...}, "train_scenes": [names], "test_scenes": [names], "task", "mode", "seed"}``.
    """
    train_all, test = load_split(data_cfg, "train"), load_split(data_cfg, "test")
    return run_on_splits(encoder_factory, train_all, test, cfg)


def run_on_splits(encoder_factory: EncoderFactory, train_all: list[ViewSet], test: list[ViewSet],
                  cfg: DownstreamConfig) -> dict:
    check_disjoint_scenes(train_all, test)
    train = select_label_fraction(train_all, cfg.label_fraction, cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        encoder = encoder_factory()
    if cfg.task in POINT_TASKS:
        from .segmentation3d import evaluate_point_segmentation, train_point_segmentation

        metrics = evaluate_point_segmentation(train_point_segmentation(encoder, train, cfg), test, cfg)
    else:
        metrics = evaluate_downstream(train_downstream(encoder, train, cfg), test, cfg)
    return {
        "metrics": metrics,
        "train_scenes": [v.name for v in train],
        "test_scenes": [v.name for v in test],
        "task": cfg.task, "mode": cfg.mode, "seed": cfg.seed,
    }


def compare_with_scratch(pretrained_factory: EncoderFactory, scratch_factory: EncoderFactory, data_cfg: DataConfig,
                         cfg: DownstreamConfig, seeds=(0, 1, 2)) -> dict:
    """Both encoders under the same splits, label subsets, budget and seeds.

    Returns ``{"seeds": [...], "pretrained": summary, "scratch": summary, "delta": {metric: mean
    difference}}`` with ``summary = {"runs": [run_downstream result per seed], "mean": {...}, "std": {...}}``.
    """
    if not seeds:
        raise InputError("compare_with_scratch: give at least one seed")
    train_all, test = load_split(data_cfg, "train"), load_split(data_cfg, "test")
    out = {"seeds": list(seeds)}
    for label, factory in (("pretrained", pretrained_factory), ("scratch", scratch_factory)):
        runs = [run_on_splits(factory, train_all, test, with_seed(cfg, s)) for s in seeds]
        out[label] = summarise_runs(runs)
    out["delta"] = {k: out["pretrained"]["mean"][k] - out["scratch"]["mean"][k] for k in out["pretrained"]["mean"]}
    return out


def with_seed(cfg: DownstreamConfig, seed: int) -> DownstreamConfig:
    new = copy.copy(cfg)
    new.seed = int(seed)
    return new


def summarise_runs(runs: list[dict]) -> dict:
    """Mean and sample std (ddof 1; 0 for one run) of every scalar metric over runs."""
    keys = [k for k, v in runs[0]["metrics"].items() if isinstance(v, float)]  # counts are ints, iou a list
    values = {k: torch.tensor([r["metrics"][k] for r in runs], dtype=torch.float64) for k in keys}
    return {
        "runs": runs,
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std()) if v.numel() > 1 else 0.0 for k, v in values.items()},
    }


__all__ = [
    "DEPTH_KEYS", "DownstreamConfig", "DownstreamModel", "MODES", "TASKS", "check_disjoint_scenes",
    "compare_with_scratch", "encoder_dim", "encoder_features", "evaluate_downstream", "frames_from_scenes",
    "learning_rate", "param_groups", "run_downstream", "scene_class", "select_label_fraction", "train_downstream",
]
