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
  ``in_channels`` must match. Coordinates reach the encoder as positions only (voxel coordinates for
  the SparseUNet, xyz for PointNet++), never as features.
Training
  Each step takes ``batch_size`` training clouds (successive random permutations, as the 2D tasks),
  and for each one: the joint augmentation of :class:`~renderssl.data.points.PointAugmentConfig`
  (rotation, scaling, flipping), random grid sampling at ``grid_size`` (Pointcept's train-mode
  GridSample; 0 = off), then at most ``max_points`` points (a uniform random subset; 0 = all).
  Clouds are batched by offsets. Loss: cross-entropy over labelled points (-1 ignored). Optimiser and
  schedule: those of the 2D tasks (AdamW, warm-up + cosine, no weight decay on 1-D parameters).
  ``mode: linear`` freezes the encoder (BatchNorm statistics included) and trains the head alone.
Head
  One ``nn.Linear(out_channels, num_classes)`` on the per-point features (the issue's linear head).
Evaluation
  Every labelled point of every test cloud, with no augmentation and no grid sampling (a SparseUNet
  averages the points of a voxel itself, and every point reads its voxel's prediction). Metrics: mIoU
  over classes present in the ground truth or the predictions, mean class accuracy, overall accuracy
  (:class:`~renderssl.eval.metrics.SegmentationMeter`).
Classes
  ``num_classes`` if given, else the scenes' ``class_names`` (ViewSets), else the largest training
  label + 1.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import PointCloudDataset, collate_points
from ..data.points import augment_points, fuse_frames, grid_sample, select_points
from ..data.scenes import open_scene
from ..data.types import PointCloud, ViewSet
from ..errors import InputError
from ..train.distributed import resolve_device
from .finetuning import SegmentationScores, TaskModel, batch_schedule, build_optimization
from .tasks import POINT_FEATURES, DownstreamConfig, PointTaskConfig


def scene_cloud(scene, cfg: PointTaskConfig) -> PointCloud:
    """The labelled point cloud of one scene (a PointCloud, a ViewSet or a reference to either)."""
    scene = open_scene(scene)
    cloud = fuse_frames(scene, stride=cfg.frame_stride) if isinstance(scene, ViewSet) else scene
    if cloud.semantic is None:
        raise InputError(f"scene {cloud.name!r}: 3D segmentation needs per-point semantic labels")
    return cloud


def point_features(sample: dict, features: str, where: str) -> Tensor:
    """(N, 3) colours or (N, 6) colours + normals of a sample dict."""
    needed = POINT_FEATURES[features]
    missing = [k for k in needed if k not in sample]
    if missing:
        raise InputError(f"{where}: features {features!r} need {missing}, which this cloud lacks")
    return torch.cat([sample[k] for k in needed], dim=1)


def training_sample(sample: dict, cfg: PointTaskConfig, generator: torch.Generator) -> dict:
    """Augment, grid-sample and cap one training cloud."""
    sample, _, _ = augment_points(sample, cfg.augment, generator)
    if cfg.grid_size > 0:
        sample = select_points(sample, grid_sample(sample["points"], cfg.grid_size, mode="random", generator=generator))
    n = sample["points"].shape[0]
    if cfg.max_points and n > cfg.max_points:
        sample = select_points(sample, torch.randperm(n, generator=generator)[:cfg.max_points].sort().values)
    return sample


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


def num_point_classes(scenes: list, clouds: list[PointCloud], cfg: DownstreamConfig) -> int:
    if cfg.num_classes is not None:
        return cfg.num_classes
    names = getattr(open_scene(scenes[0]), "class_names", None)
    if names:
        return len(names)
    return int(max(int(c.semantic.max()) for c in clouds)) + 1


def build_point_model(encoder: nn.Module, scenes: list, clouds: list[PointCloud], cfg: DownstreamConfig) -> PointSegmentationModel:
    expected = cfg.points.in_channels
    if getattr(encoder, "in_channels", expected) != expected:
        raise InputError(f"3D segmentation: the encoder takes {encoder.in_channels} input channels, features "
                         f"{cfg.points.features!r} give {expected}")
    num_classes = num_point_classes(scenes, clouds, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        head = nn.Linear(encoder.out_channels, num_classes)
    return PointSegmentationModel(copy.deepcopy(encoder), head, cfg.task, num_classes, cfg.mode == "linear")


def train_point_segmentation(encoder: nn.Module, train_scenes: list, cfg: DownstreamConfig) -> PointSegmentationModel:
    """Fine-tune (or probe) ``encoder`` on the training scenes; returns the model in eval mode."""
    clouds = [scene_cloud(s, cfg.points) for s in train_scenes]
    dataset = PointCloudDataset(clouds)
    device = resolve_device(cfg.device)
    model = build_point_model(encoder, train_scenes, clouds, cfg).to(device)
    optimizer, lr_schedule = build_optimization(model, cfg)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    model.train()
    for step, idx in enumerate(batch_schedule(len(clouds), cfg, generator)):
        batch = point_batch([training_sample(dataset[int(i)], cfg.points, generator) for i in idx], cfg.points)
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        loss = model.forward_loss(model(batch), batch["semantic"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"3D segmentation: non-finite loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        model.loss_history.append(float(loss.detach()))
    return model.eval()


@torch.no_grad()
def evaluate_point_segmentation(model: PointSegmentationModel, test_scenes: list, cfg: DownstreamConfig) -> dict:
    """mIoU, mean class accuracy and overall accuracy over every labelled point of the test scenes."""
    clouds = [scene_cloud(s, cfg.points) for s in test_scenes]
    for cloud in clouds:
        if int(cloud.semantic.max()) >= model.num_classes:
            raise InputError(f"test scene {cloud.name!r} has label {int(cloud.semantic.max())}, but the model has "
                             f"{model.num_classes} classes (from the training scenes); set downstream.num_classes")
    dataset = PointCloudDataset(clouds)
    device = next(model.parameters()).device
    model.eval()
    meter = SegmentationScores(model.num_classes)
    points = 0
    for start in range(0, len(dataset), cfg.eval_batch_size):
        batch = point_batch([dataset[i] for i in range(start, min(start + cfg.eval_batch_size, len(dataset)))], cfg.points)
        logits = model.predict({k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()})
        meter.update(logits.argmax(1).cpu(), batch["semantic"])
        points += int(batch["points"].shape[0])
    out = meter.compute()
    out["num_points"] = points
    out["num_scenes"] = len(dataset)
    return out


__all__ = [
    "PointSegmentationModel", "evaluate_point_segmentation", "point_features", "scene_cloud",
    "train_point_segmentation",
]
