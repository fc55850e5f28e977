"""Downstream 3D semantic segmentation: a 3D encoder (SparseUNet, PointNet++) plus a linear head on
per-point labels, fine-tuned (or probed) on training scenes and scored on held-out scenes.

Configs and task names come from :mod:`.tasks`, the model base, optimiser, schedule, batch order and
scores shared with the 2D tasks from :mod:`.finetuning`; :mod:`.transfer` dispatches runs here. This
module imports neither :mod:`.downstream` (the 2D trainer) nor :mod:`.transfer`.

Design choices
--------------
Scenes -> clouds
  A scene is a :class:`~renderssl.data.types.PointCloud` with a ``semantic`` field (a PLY file with a
  ``label`` field, :func:`~renderssl.data.formats.read_ply`) or a :class:`ViewSet` with depth and
  semantic maps, fused into one cloud by :func:`~renderssl.data.points.fuse_frames` (every
  ``frame_stride``-th pixel of every frame). Train and test splits are disjoint sets of scenes, as in
  the 2D tasks (:func:`~renderssl.eval.splits.check_disjoint_scenes`).
Input features
  ``color`` (3) or ``color_normal`` (6, PonderV2's and Pointcept's ScanNet input); the encoder's
  ``in_channels`` must match. Colours enter in [-1, 1] (:func:`~renderssl.data.points.normalize_color`,
  Pointcept's NormalizeColor), as the 3D pretraining recipes feed them. Coordinates reach the encoder as positions only (voxel coordinates for
  the SparseUNet, xyz for PointNet++), never as features.
Training
  Each step takes ``batch_size`` training clouds (successive random permutations, as the 2D tasks),
  and for each one: the joint augmentation of :class:`~renderssl.data.points.PointAugmentConfig`
  (rotation, scaling, flipping), random grid sampling at ``grid_size`` (Pointcept's train-mode
  GridSample; 0 = off), then the point cap (below). Clouds are batched by offsets. Loss: cross-entropy
  over labelled points (-1 ignored). Optimiser and schedule: those of the 2D tasks (AdamW, warm-up +
  cosine, no weight decay on 1-D parameters). ``mode: linear`` freezes the encoder (BatchNorm
  statistics included) and trains the head alone. ``downstream.steps`` must exceed
  ``downstream.warmup`` (checked before any data is read): a run that ends inside its warm-up never
  trains at the peak rate, which is how a real-cloud run once gave all-zero metrics without a word.
Point cap
  ``points.max_points`` (default 40000; 0 = no cap) bounds each training cloud after grid sampling, so
  a step costs at most ``batch_size x max_points`` points whatever the clouds (real ScanNet rooms keep
  about 80k points at 0.02 m). ``points.cap: crop`` (default) keeps the ``max_points`` points nearest
  (Euclidean, ties to the lower index) to one uniformly drawn point of the cloud: Pointcept's
  ``SphereCrop(mode="random")``, which its ScanNet SpUNet config applies after GridSample 0.02 with
  ``point_max=100000`` on GPUs (set ``points.max_points=100000`` to match it). A crop keeps the
  evaluation's point density (every point of a test cloud is scored), where a random subset would thin
  the cloud and shift the voxel occupancy the encoder sees; ``cap: sample`` (a uniform random subset)
  is kept as the alternative. 40000 halves Pointcept's cap so that a step of the default batch fits a
  CPU's time and memory. Kept indices ascend. Evaluation is never capped.
Head
  One ``nn.Linear(out_channels, num_classes)`` on the per-point features (the issue's linear head).
Evaluation
  Every test cloud whole, with no augmentation and no grid sampling (a SparseUNet averages the points
  of a voxel itself, and every point reads its voxel's prediction); the metrics count labelled points
  only (-1 is never scored). Metrics: mIoU over classes present in the ground truth or the predictions,
  mean class accuracy, overall accuracy (:class:`~renderssl.eval.metrics.SegmentationMeter`), per-class
  IoU with ``class_names``, ``num_points`` (the labelled points the metrics count) and
  ``num_points_total`` (every point of the test clouds, unlabelled included). Test scenes without any
  labelled point are refused, naming them.
Classes
  The class list, label k = class k, comes from the config or the data, never from the labels' values:
  ``downstream.points.class_names`` (a list) if given, else ``downstream.num_classes`` (names taken from
  the data when it has that many, else ``class_0`` ...), else the training scenes' ``class_names``
  (ViewSets and scene folders carry them; every scene that has names must have the same). Both given
  and different lengths: an error naming both keys. Neither given and no names in the data (PLY clouds
  carry none): an error naming the keys to set. A training or test label outside the list is an error
  naming the scene, the label and the keys.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import PointCloudDataset, collate_points
from ..data.points import augment_points, fuse_frames, grid_sample, normalize_color, select_points
from ..data.scenes import SceneRef, open_scene
from ..data.types import PointCloud, ViewSet
from ..errors import InputError
from ..train.distributed import resolve_device
from .finetuning import SegmentationScores, TaskModel, batch_schedule, build_optimization, take_step
from .tasks import POINT_FEATURES, DownstreamConfig, PointTaskConfig


def scene_cloud(scene, cfg: PointTaskConfig) -> PointCloud:
    """The labelled point cloud of one scene (a PointCloud, a ViewSet or a reference to either)."""
    return labelled_cloud(scene, cfg)[0]


def labelled_cloud(scene, cfg: PointTaskConfig) -> tuple[PointCloud, list[str]]:
    """(the scene's labelled point cloud, the scene's class names: empty for a PointCloud)."""
    scene = open_scene(scene)
    names = list(getattr(scene, "class_names", None) or [])
    cloud = fuse_frames(scene, stride=cfg.frame_stride) if isinstance(scene, ViewSet) else scene
    if cloud.semantic is None:
        raise InputError(f"scene {cloud.name!r}: 3D segmentation needs per-point semantic labels")
    return cloud, names


def point_features(sample: dict, features: str, where: str) -> Tensor:
    """(N, 3) colours or (N, 6) colours + normals of a sample dict; colours mapped to [-1, 1]."""
    needed = POINT_FEATURES[features]
    missing = [k for k in needed if k not in sample]
    if missing:
        raise InputError(f"{where}: features {features!r} need {missing}, which this cloud lacks")
    return torch.cat([normalize_color(sample[k]) if k == "colors" else sample[k] for k in needed], dim=1)


def training_sample(sample: dict, cfg: PointTaskConfig, generator: torch.Generator) -> dict:
    """Augment, grid-sample and cap one training cloud."""
    sample, _, _ = augment_points(sample, cfg.augment, generator)
    if cfg.grid_size > 0:
        sample = select_points(sample, grid_sample(sample["points"], cfg.grid_size, mode="random", generator=generator))
    return cap_points(sample, cfg, generator)


def cap_points(sample: dict, cfg: PointTaskConfig, generator: torch.Generator) -> dict:
    """At most ``cfg.max_points`` points of a cloud: a crop around a random point or a random subset
    (``cfg.cap``; see the module docstring). Kept indices ascend; a cloud within the cap is returned as is."""
    points = sample["points"]  # (N, 3)
    n = points.shape[0]
    if not cfg.max_points or n <= cfg.max_points:
        return sample
    if cfg.cap == "sample":
        keep = torch.randperm(n, generator=generator)[:cfg.max_points]
    else:
        centre = points[int(torch.randint(n, (1,), generator=generator))].double()  # (3,)
        dist2 = ((points.double() - centre) ** 2).sum(1)  # (N,)
        keep = torch.sort(dist2, stable=True).indices[:cfg.max_points]  # nearest first, ties to the lower index
    return select_points(sample, keep.sort().values)


def point_batch(samples: list[dict], cfg: PointTaskConfig) -> dict:
    """Offsets batch with ``features`` and ``semantic``."""
    batch = collate_points(samples)
    batch["features"] = point_features(batch, cfg.features, ", ".join(str(s.get("name")) for s in samples))
    return batch


class PointSegmentationModel(TaskModel):
    """3D encoder + linear head: (N, 3) points, (N, C) features, (B,) offsets -> (N, K) logits."""

    def features(self, batch: dict) -> Tensor:
        args = (batch["points"], batch["features"], batch["offset"])
        if self.frozen_encoder:
            with torch.no_grad():
                return self.encoder(*args)
        return self.encoder(*args)

    def forward(self, batch: dict) -> Tensor:
        return self.head(self.features(batch))  # (N, K)

    def predict(self, batch: dict) -> Tensor:
        return self.forward(batch)

    def forward_loss(self, output: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(output, targets, ignore_index=-1)


CLASS_KEYS = "downstream.num_classes or downstream.points.class_names"


def point_class_names(clouds: list[PointCloud], scene_names: list[list[str]], cfg: DownstreamConfig) -> list[str]:
    """The class list (see "Classes" in the module docstring) of training ``clouds`` whose scenes carry
    ``scene_names`` (one list per cloud, empty when the scene has none); every training label must fit it."""
    given, count = cfg.points.class_names, cfg.num_classes
    named = [(c.name, n) for c, n in zip(clouds, scene_names) if n]
    for name, names in named[1:]:
        if names != named[0][1]:
            raise InputError(f"3D segmentation: scenes {named[0][0]!r} and {name!r} have different class names "
                             f"({len(named[0][1])} vs {len(names)}); set downstream.points.class_names")
    data_names = named[0][1] if named else []
    if given is not None:
        if count is not None and count != len(given):
            raise InputError(f"3D segmentation: downstream.num_classes is {count} but downstream.points.class_names "
                             f"lists {len(given)} classes; give one of them, or make them agree")
        names = list(given)
    elif count is not None:
        names = list(data_names) if len(data_names) == count else [f"class_{k}" for k in range(count)]
    elif data_names:
        names = list(data_names)
    else:
        raise InputError(f"3D segmentation: the classes are unknown: the training scenes ({clouds[0].name!r}, ...) "
                         f"carry no class names (PLY clouds do not); set {CLASS_KEYS}")
    for cloud in clouds:
        check_labels(cloud, len(names), "training")
    return names


def check_labels(cloud: PointCloud, num_classes: int, split: str) -> None:
    top = int(cloud.semantic.max()) if len(cloud) else -1
    if top >= num_classes:
        raise InputError(f"{split} scene {cloud.name!r} has label {top}, but the class list has {num_classes} classes "
                         f"(labels 0..{num_classes - 1}); set {CLASS_KEYS}")


def scene_class_names(scene) -> list[str]:
    """A scene's class names (opening a reference; a PointCloud has none)."""
    if isinstance(scene, PointCloud) or (isinstance(scene, SceneRef) and scene.points):
        return []
    return list(getattr(open_scene(scene), "class_names", None) or [])


def check_schedule(cfg: DownstreamConfig) -> None:
    """``downstream.steps`` must exceed ``downstream.warmup`` (see the module docstring)."""
    if cfg.steps <= cfg.warmup:
        raise InputError(f"3D segmentation: downstream.steps ({cfg.steps}) must be greater than downstream.warmup "
                         f"({cfg.warmup}): the run would end inside its learning-rate warm-up; raise "
                         "downstream.steps or lower downstream.warmup")


def build_point_model(encoder: nn.Module, scenes: list, clouds: list[PointCloud], cfg: DownstreamConfig,
                      class_names: list[str] | None = None) -> PointSegmentationModel:
    """Encoder copy + linear head over the class list (``class_names``, else from ``scenes``' names)."""
    expected = cfg.points.in_channels
    if getattr(encoder, "in_channels", expected) != expected:
        raise InputError(f"3D segmentation: the encoder takes {encoder.in_channels} input channels, features "
                         f"{cfg.points.features!r} give {expected}")
    if class_names is None:
        class_names = point_class_names(clouds, [scene_class_names(s) for s in scenes], cfg)
    num_classes = len(class_names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        head = nn.Linear(encoder.out_channels, num_classes)
    model = PointSegmentationModel(copy.deepcopy(encoder), head, cfg.task, num_classes, cfg.mode == "linear")
    model.class_names = list(class_names)
    return model


def train_point_segmentation(encoder: nn.Module, train_scenes: list, cfg: DownstreamConfig) -> PointSegmentationModel:
    """Fine-tune (or probe) ``encoder`` on the training scenes; returns the model in eval mode."""
    check_schedule(cfg)
    read = [labelled_cloud(s, cfg.points) for s in train_scenes]
    if not read:
        raise InputError("3D segmentation: no training scenes")
    clouds = [cloud for cloud, _ in read]  # (N_i, 3) points each
    class_names = point_class_names(clouds, [names for _, names in read], cfg)
    dataset = PointCloudDataset(clouds)
    device = resolve_device(cfg.device)
    model = build_point_model(encoder, train_scenes, clouds, cfg, class_names).to(device)
    optimizer, lr_schedule = build_optimization(model, cfg)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    model.train()
    for step, idx in enumerate(batch_schedule(len(clouds), cfg, generator)):
        batch = point_batch([training_sample(dataset[int(i)], cfg.points, generator) for i in idx], cfg.points)
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        take_step(model, model.forward_loss(model(batch), batch["semantic"]), optimizer, lr_schedule, step, "3D segmentation")
    return model.eval()


@torch.no_grad()
def evaluate_point_segmentation(model: PointSegmentationModel, test_scenes: list, cfg: DownstreamConfig) -> dict:
    """mIoU, mean class accuracy and overall accuracy over the labelled points of the test scenes (every
    point predicted, -1 never scored); ``num_points`` labelled, ``num_points_total`` all."""
    clouds = [scene_cloud(s, cfg.points) for s in test_scenes]
    if not clouds:
        raise InputError("3D segmentation: no test scenes")
    for cloud in clouds:
        check_labels(cloud, model.num_classes, "test")
    if not any(bool((c.semantic >= 0).any()) for c in clouds):
        raise InputError(f"3D segmentation: the test scenes ({', '.join(repr(c.name) for c in clouds[:5])}) have no "
                         "labelled point (every label is -1): nothing to score")
    dataset = PointCloudDataset(clouds)
    device = next(model.parameters()).device
    model.eval()
    meter = SegmentationScores(model.num_classes)
    labelled = total = 0
    for start in range(0, len(dataset), cfg.eval_batch_size):
        batch = point_batch([dataset[i] for i in range(start, min(start + cfg.eval_batch_size, len(dataset)))], cfg.points)
        logits = model.predict({k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()})
        meter.update(logits.argmax(1).cpu(), batch["semantic"])
        labelled += int((batch["semantic"] >= 0).sum())
        total += int(batch["points"].shape[0])
    out = meter.compute()
    out["class_names"] = list(getattr(model, "class_names", None) or [f"class_{k}" for k in range(model.num_classes)])
    out["num_points"] = labelled
    out["num_points_total"] = total
    out["num_scenes"] = len(dataset)
    return out


__all__ = [
    "PointSegmentationModel", "cap_points", "check_schedule", "evaluate_point_segmentation", "point_class_names",
    "point_features", "scene_cloud", "train_point_segmentation",
]
