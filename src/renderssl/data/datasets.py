"""Torch Datasets over in-memory scenes, each yielding one sample type (a dict of tensors).

Sources: every Dataset takes a list whose items are the objects themselves (``ViewSet`` /
``PointCloud``), :class:`~renderssl.data.scenes.SceneRef` (a scene opened when read, its frames
decoded when used) or zero-argument loader callables (e.g. ``functools.partial(read_scannet, path)``).
They are resolved on demand by a :class:`~renderssl.data.scenes.SceneList`, which keeps at most
``cache_scenes`` opened scenes and ``cache_mb`` MB of decoded frames (per DataLoader worker). Datasets
indexed by frame need each scene's length up front: SceneRefs carry it; for loader callables pass
``lengths`` to avoid loading every scene once at construction.

Sample types (shapes per sample; ``collate_*`` adds a leading batch dim B):

``ImageDataset`` -> ``collate_stacked``
    image (3, H, W) float32 [0, 1]; label () int64 (when labels exist); with ``label_maps=True`` and
    scenes as the source also semantic, instance (H, W) int64 (when the scene has them)
``RGBDFrameDataset`` -> ``collate_stacked``
    rgb (3, H, W); depth (1, H, W) metres, 0 = invalid; K (3, 3) pixels; c2w (4, 4) OpenCV;
    semantic, instance (H, W) int64 -1 = ignore (when the scene has them); scene, frame (str);
    scene_index, frame_index () int64
``MultiViewDataset`` -> ``collate_stacked``
    rgb (V, 3, H, W); depth (V, 1, H, W); K (V, 3, 3); c2w (V, 4, 4); semantic, instance (V, H, W)
    (when present); view_ids (V,) int64 (index 0 = the reference view); scene (str); scene_index ()
``PointCloudDataset`` -> ``collate_points``
    points (N, 3) float32; colors (N, 3) [0, 1], normals (N, 3), semantic, instance (N,) int64 (when
    present); name (str). Batched by concatenation: (sum N, ...) plus ``offset`` (B,) = cumulative
    point counts (end index of each cloud) and ``batch`` (sum N,) = cloud index of each point.

Batches of label maps where only some samples carry labels are filled with -1 (ignore). Randomness
(view selection) comes from a per-sample generator seeded by (seed, epoch, index): no global RNG.

Size: given ``size=(H, W)`` every frame is brought to it when read, by ``resize``
(``data.resize``; :mod:`renderssl.data.formats.images` states the exact rule):

- ``crop`` (default): the largest centred window of the target's aspect ratio, then a resize of it, so
  a 640x480 (4:3) frame for a 64x64 model becomes its central 480x480, resized: cropped, not squashed;
- ``stretch``: the whole frame resized to (H, W), its aspect ratio changed when it differs.

Colour is resized antialiased bilinear; depth, normals and label maps by the nearest pixel centre (every
output depth is an input depth: no depth is invented across an edge, holes stay holes); K follows exactly
(the crop shifts cx, cy, the resize scales fx, cx and fy, cy per axis). The first frame of each size that
is cropped, or stretched to another aspect ratio, is reported once per process (a warning naming both
sizes and the mode).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import InputError
from .formats.image_folder import ImageFiles, ImageFolder, read_image_folder
from .formats.images import RESIZE_MODES, crop_window, fit_image, fit_intrinsics, fit_nearest
from .points import viewset_to_pointcloud
from .scenes import SceneList
from .types import PointCloud, ViewSet
from .views import SourceViewCurriculum, select_target_and_sources, step_view_count

LABEL_KEYS = ("semantic", "instance", "label")


# ---- sources ----------------------------------------------------------------------------------
class FrameIndex:
    """Flat index over (scene, frame) pairs."""

    def __init__(self, lengths: list[int]):
        self.offsets = torch.cumsum(torch.tensor([0] + lengths), 0)  # (S + 1,)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, idx: int) -> tuple[int, int]:
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} frames")
        scene = int(torch.searchsorted(self.offsets, torch.tensor(idx), right=True)) - 1
        return scene, idx - int(self.offsets[scene])


def sample_generator(seed: int, epoch: int, idx: int) -> torch.Generator:
    """A generator that is a pure function of (seed, epoch, sample index)."""
    mixed = ((int(seed) * 1_000_003 + int(epoch)) * 1_000_033 + int(idx)) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def frame_depth(frame: dict, scene, require: bool, where: str) -> Tensor:
    """(1, H, W) depth of a frame; zeros (all invalid) when the scene has none and depth is not required."""
    if "depth" in frame:
        return frame["depth"]
    if require:
        raise InputError(f"{where}: scene {scene.name!r} has no depth (require_depth=True)")
    return torch.zeros_like(frame["rgb"][:1])


# ---- bringing frames to the configured size ------------------------------------------------------
IMAGE_KEYS = ("rgb", "image")  # colour: antialiased bilinear
NEAREST_KEYS = ("depth", "normals", "semantic", "instance")  # by nearest pixel centre


def check_resize_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise InputError(f"resize: {mode!r} is not one of {list(RESIZE_MODES)} (data.resize)")
    return mode


def report_resize(height: int, width: int, target_height: int, target_width: int, mode: str) -> None:
    """Say how frames of height x width are brought to the target (a warning: Python shows each distinct
    message once)."""
    if (height, width) == (target_height, target_width):
        return
    top, left, h, w = crop_window(height, width, target_height, target_width, mode)
    if (h, w) != (height, width):
        how = (f"centre-cropped to {w}x{h} (the target's aspect ratio) and resized to {target_width}x{target_height} "
               "(data.resize=crop; data.resize=stretch would squash them instead)")
    elif width * target_height != height * target_width:
        how = f"stretched to {target_width}x{target_height}, changing their aspect ratio (data.resize=stretch)"
    else:  # the same aspect ratio: nothing to say
        return
    warnings.warn(f"frames of {width}x{height} (WxH) are {how}", stacklevel=3)


def fit_frame(sample: dict, height: int, width: int, mode: str = "crop") -> dict:
    """A sample (any of rgb / image (3, H, W), depth (1, H, W), normals (3, H, W), semantic / instance
    (H, W), K (3, 3)) brought to (height, width) by ``mode`` (see the module docstring); other keys kept."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise InputError("fit_frame: the sample has no 'rgb' or 'image'")
    h, w = sample[key].shape[-2:]
    if (h, w) == (height, width):
        return sample
    report_resize(h, w, height, width, mode)
    out = dict(sample)
    for k in IMAGE_KEYS:
        if k in sample:
            out[k] = fit_image(sample[k].float(), height, width, mode)  # (3, height, width)
    for k in NEAREST_KEYS:
        if k in sample:
            if tuple(sample[k].shape[-2:]) != (h, w):
                raise InputError(f"fit_frame: '{k}' is {tuple(sample[k].shape[-2:])} but the colour is {(h, w)} (HxW)")
            out[k] = fit_nearest(sample[k], height, width, mode)  # (..., height, width)
    if "K" in sample:
        out["K"] = fit_intrinsics(sample["K"], h, w, height, width, mode)  # (3, 3)
    return out


# ---- images ---------------------------------------------------------------------------------------
class ImageDataset(Dataset):
    """Single images: from a class-per-folder image folder (path or :class:`ImageFolder`; label = class
    index), from plain image files (:class:`ImageFiles`, an image source's split; no label) or from the
    rgb of scenes (label = ``labels[scene]`` when given). ``size=(H, W)`` brings every image to that size
    by ``resize`` (module docstring) so batches stack; without it images of different sizes cannot be
    batched. ``label_maps``: samples from scenes also carry the frame's semantic / instance maps (fitted
    the same way), for evaluation."""

    def __init__(self, source, labels: Sequence[int] | None = None, size: tuple[int, int] | None = None,
                 lengths: Sequence[int] | None = None, cache_scenes: int = 64, cache_mb: float = 512.0,
                 resize: str = "crop", label_maps: bool = False):
        self.size = tuple(size) if size is not None else None
        self.resize, self.label_maps = check_resize_mode(resize), label_maps
        if isinstance(source, (str, Path)):
            source = read_image_folder(source)
        if isinstance(source, (ImageFolder, ImageFiles)):
            self.folder, self.scenes = source, None
            self.class_names = list(source.class_names) if isinstance(source, ImageFolder) else []
            if labels is not None:
                raise InputError("ImageDataset: labels come from the folder names (or there are none); do not pass labels")
            self.labels = None
        else:
            self.folder, self.scenes, self.class_names = None, SceneList(source, ViewSet, cache_scenes, cache_mb), []
            if labels is not None and len(labels) != len(self.scenes):
                raise InputError(f"ImageDataset: {len(labels)} labels for {len(self.scenes)} scenes")
            self.labels = None if labels is None else [int(x) for x in labels]
            self.index = FrameIndex(self.scenes.lengths(lengths))

    def __len__(self) -> int:
        return len(self.folder) if self.folder is not None else len(self.index)

    def __getitem__(self, idx: int) -> dict:
        if self.folder is not None:
            image, label = self.folder[idx]  # (3, H, W), int or None
            sample = {"image": image}
        else:
            scene, frame = self.index.locate(idx)
            data = self.scenes.frame(scene, frame)
            sample = {"image": data["rgb"]}  # (3, H, W)
            if self.label_maps:
                sample.update({k: data[k] for k in ("semantic", "instance") if k in data})  # (H, W)
            label = None if self.labels is None else self.labels[scene]
        if self.size is not None:
            sample = fit_frame(sample, *self.size, self.resize)  # image (3, h, w)
        sample["image"] = sample["image"].float()
        if label is not None:
            sample["label"] = torch.tensor(label, dtype=torch.int64)
        return sample


# ---- RGB-D frames ---------------------------------------------------------------------------------
class RGBDFrameDataset(Dataset):
    """Every frame of every scene as one RGB-D sample (keys in the module docstring); ``size=(H, W)``
    brings every frame to that size by ``resize`` (module docstring), K following."""

    def __init__(self, scenes, require_depth: bool = True, lengths: Sequence[int] | None = None, cache_scenes: int = 64,
                 size: tuple[int, int] | None = None, cache_mb: float = 512.0, resize: str = "crop"):
        self.scenes = SceneList(scenes, ViewSet, cache_scenes, cache_mb)
        self.require_depth = require_depth
        self.size = tuple(size) if size is not None else None  # (H, W): resample every frame, K follows
        self.resize = check_resize_mode(resize)
        self.index = FrameIndex(self.scenes.lengths(lengths))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict:
        scene, frame = self.index.locate(idx)
        sample = self._frame(scene, frame)
        return sample if self.size is None else resize_frame(sample, *self.size, self.resize)

    def _frame(self, scene: int, frame: int) -> dict:
        vs, data = self.scenes[scene], self.scenes.frame(scene, frame)
        sample = {
            "rgb": data["rgb"],  # (3, H, W)
            "depth": frame_depth(data, vs, self.require_depth, "RGBDFrameDataset"),  # (1, H, W)
            "K": vs.K[frame].float(),  # (3, 3)
            "c2w": vs.c2w[frame].float(),  # (4, 4)
            "scene": vs.name,
            "frame": vs.frame_names[frame],
            "scene_index": torch.tensor(scene, dtype=torch.int64),
            "frame_index": torch.tensor(frame, dtype=torch.int64),
        }
        for key in ("semantic", "instance"):
            if key in data:
                sample[key] = data[key]  # (H, W)
        return sample


def resize_frame(sample: dict, height: int, width: int, mode: str = "crop") -> dict:
    """An RGB-D sample brought to (height, width) by ``mode`` (crop | stretch; the module docstring):
    colour antialiased bilinear, depth and labels by nearest pixel centre (holes stay holes, no depth is
    invented across edges), K following exactly."""
    return fit_frame(sample, height, width, check_resize_mode(mode))


# ---- multi-view -----------------------------------------------------------------------------------
def select_overlapping_views(c2w: Tensor, num_views: int, generator: torch.Generator, pool: int | None = None) -> Tensor:
    """(num_views,) view indices: a random reference view, then ``num_views - 1`` views drawn at random
    from the ``pool`` (default 2 (num_views - 1)) views closest to it by a pose score

        score = |c_i - c_ref| / median pairwise centre distance + (1 - cos angle between optical axes),

    which favours nearby cameras looking the same way (i.e. overlapping views). c2w: (N, 4, 4) OpenCV.
    """
    N = c2w.shape[0]
    ref = int(torch.randint(N, (1,), generator=generator))
    if num_views == 1:
        return torch.tensor([ref])
    centres, axes = c2w[:, :3, 3].double(), c2w[:, :3, 2].double()  # (N, 3) centres, (N, 3) forward
    dist = (centres - centres[ref]).norm(dim=-1)  # (N,)
    pairwise = torch.cdist(centres, centres)  # (N, N)
    scale = pairwise[pairwise > 0].median() if bool((pairwise > 0).any()) else torch.tensor(1.0, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(axes, axes[ref : ref + 1], dim=-1)  # (N,)
    score = dist / scale + (1.0 - cos)  # (N,)
    score[ref] = float("inf")
    order = torch.argsort(score)[: N - 1]  # (N - 1,) others, best first
    pool = min(N - 1, pool if pool is not None else 2 * (num_views - 1))
    picks = order[:pool][torch.randperm(pool, generator=generator)[: num_views - 1]]  # (num_views - 1,)
    picks = picks[torch.argsort(score[picks])]
    return torch.cat([torch.tensor([ref]), picks])


@dataclass
class SceneCloudConfig:
    """The scene's fused point cloud in every multi-view sample (PonderV2's input beside its frames):
    every ``pixel_stride``-th pixel (rows and columns) of every ``frame_step``-th frame with valid depth,
    back-projected to world points with colour (and normals / semantic where the scene has them), frames
    at their stored resolution; ``max_points`` keeps a random subset (seeded per scene; 0 = all). Fused
    once per scene and kept for the ``cache`` most recently used scenes."""

    pixel_stride: int = 4
    frame_step: int = 1
    max_points: int = 0
    cache: int = 8

    def __post_init__(self):
        if self.pixel_stride < 1 or self.frame_step < 1 or self.max_points < 0 or self.cache < 0:
            raise InputError("SceneCloudConfig: pixel_stride and frame_step must be >= 1, max_points and cache >= 0")


class MultiViewDataset(Dataset):
    """``num_views`` views of one scene per sample (``samples_per_scene`` samples per scene): the multi-view
    sample type of GS³, PonderV2 and NPS.

    Views come from ``views`` (a :class:`~renderssl.data.views.ViewSelectionConfig`: GS³'s context pair by
    frame interval or measured overlap, then ``num_targets`` extra target views drawn from the scene's other
    frames, at random or between the pair by ``views.targets``; PonderV2's ``count`` random frames with
    ``views.mode="random"``; ``num_views`` is then ``views.num_context`` + ``num_targets``), or, without it, from
    :func:`select_overlapping_views` (a pose score). The generator is seeded by (seed, epoch, index), so a
    sample is a pure function of its index; :meth:`set_epoch` draws new views each epoch. ``size=(H, W)``
    brings every view to that size by ``resize`` (module docstring), K following. Each sample carries the
    scene's ``near`` and ``far`` (:func:`near_far`) and, with ``scene_cloud`` (:class:`SceneCloudConfig`),
    the scene's fused cloud as ``sample["cloud"]`` (``points``, ``colors`` and ``normals`` / ``semantic``
    where the scene has them, (N, ...)), packed with offsets by :func:`collate_stacked`.

    With ``views`` a :class:`~renderssl.data.views.SourceViewCurriculum` (NPS; GNT's sampler), a sample is
    one target frame and its source views, the sources first and the target last: the source-view count
    is drawn once per training step (:func:`~renderssl.data.views.step_view_count`, seeded by (seed, step),
    so every sample of a batch has as many views), capped at the fewest frames of any scene of the dataset
    minus one, and the curriculum follows the step the trainer announces (:meth:`set_step`; step 0, the
    easiest setting, outside training). ``near`` / ``far`` then come from the source views' depth only
    (the target's depth is what is predicted).

    ``transform``: an optional picklable callable ``(sample, generator) -> sample`` applied last, with the
    sample's own generator (the one that selected its views, continued), so a transformed sample is still a
    pure function of (seed, epoch, index) in any DataLoader worker: a recipe's per-sample augmentation,
    grid sampling and input masking (PonderV2's data pipeline). It must not modify the sample's tensors
    in place (the scene cloud is cached and shared between samples).
    """

    def __init__(self, scenes, num_views: int = 2, samples_per_scene: int = 1, seed: int = 0,
                 pool: int | None = None, require_depth: bool = False, cache_scenes: int = 64, cache_mb: float = 512.0,
                 size: tuple[int, int] | None = None, resize: str = "crop", views=None, num_targets: int = 0,
                 default_near_far: tuple[float, float] = (0.1, 100.0), scene_cloud: SceneCloudConfig | None = None,
                 transform: Callable[[dict, torch.Generator], dict] | None = None):
        self.step, self.total_steps, self._fewest_frames = 0, 1, None
        if isinstance(views, SourceViewCurriculum):
            num_views, num_targets = 2, 0  # at least one source view and the target
        elif views is not None:
            num_views = views.num_context + num_targets
        if num_views < 1 or samples_per_scene < 1 or num_targets < 0:
            raise InputError(f"MultiViewDataset: num_views and samples_per_scene must be >= 1 and num_targets >= 0, got "
                             f"{num_views}, {samples_per_scene}, {num_targets}")
        self.views, self.num_targets, self.default_near_far = views, num_targets, tuple(default_near_far)
        self.scenes = SceneList(scenes, ViewSet, cache_scenes, cache_mb)
        self.num_views, self.samples_per_scene, self.seed, self.pool = num_views, samples_per_scene, seed, pool
        self.require_depth, self.epoch = require_depth, 0
        self.size, self.resize = (tuple(size) if size is not None else None), check_resize_mode(resize)
        self.scene_cloud, self._clouds = scene_cloud, OrderedDict()
        if transform is not None and not callable(transform):
            raise InputError(f"MultiViewDataset: transform must be callable (sample, generator) -> sample, got {type(transform).__name__}")
        self.transform = transform

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_step(self, step: int, total_steps: int) -> None:
        """The training step that will consume the next samples (a source-view curriculum follows it)."""
        self.step, self.total_steps = int(step), int(total_steps)

    def __len__(self) -> int:
        return len(self.scenes) * self.samples_per_scene

    def fewest_frames(self) -> int:
        """The fewest frames of any scene (from the listings), computed once."""
        if self._fewest_frames is None:
            self._fewest_frames = min(self.scenes.num_frames(i) for i in range(len(self.scenes)))
        return self._fewest_frames

    def fused_cloud(self, scene: int, vs) -> dict:
        """The scene's fused cloud (:class:`SceneCloudConfig`) as a dict of (N, ...) tensors, cached."""
        if scene in self._clouds:
            self._clouds.move_to_end(scene)
            return self._clouds[scene]
        cfg = self.scene_cloud
        ids = list(range(0, len(vs), cfg.frame_step))
        frames = [self.scenes.frame(scene, i) for i in ids]
        keys = [k for k in ("normals", "semantic", "instance") if all(k in f for f in frames)]
        views = ViewSet(rgb=torch.stack([f["rgb"] for f in frames]), K=vs.K[ids].float(), c2w=vs.c2w[ids].float(),
                        depth=torch.stack([frame_depth(f, vs, True, "MultiViewDataset scene_cloud") for f in frames]),
                        name=vs.name, **{k: torch.stack([f[k] for f in frames]) for k in keys})
        generator = torch.Generator().manual_seed(self.seed + scene)
        cloud = viewset_to_pointcloud(views, cfg.pixel_stride, cfg.max_points or None, generator)
        if len(cloud) == 0:
            raise InputError(f"MultiViewDataset: scene {vs.name!r} has no valid depth pixel to fuse into a cloud")
        fields = {"points": cloud.points, "colors": cloud.colors, **{k: getattr(cloud, k) for k in keys}}
        if cfg.cache:
            self._clouds[scene] = fields
            while len(self._clouds) > cfg.cache:
                self._clouds.popitem(last=False)
        return fields

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} samples")
        scene = idx // self.samples_per_scene
        vs = self.scenes[scene]
        if len(vs) < self.num_views:
            raise InputError(f"MultiViewDataset: scene {vs.name!r} has {len(vs)} views, fewer than num_views={self.num_views}")
        generator = sample_generator(self.seed, self.epoch, idx)
        ids = self.select_views(scene, vs, generator)  # (V,)
        frames = []
        for i in ids:
            f = self.scenes.frame(scene, int(i))
            f = dict(f, depth=frame_depth(f, vs, self.require_depth, "MultiViewDataset"), K=vs.K[int(i)].float())
            frames.append(f if self.size is None else fit_frame(f, *self.size, self.resize))
        sample = {
            "rgb": torch.stack([f["rgb"] for f in frames]),  # (V, 3, H, W)
            "depth": torch.stack([f["depth"] for f in frames]),  # (V, 1, H, W)
            "K": torch.stack([f["K"] for f in frames]),  # (V, 3, 3)
            "c2w": vs.c2w[ids].float(),  # (V, 4, 4)
            "view_ids": ids.long(),  # (V,)
            "scene": vs.name,
            "scene_index": torch.tensor(scene, dtype=torch.int64),
        }
        sources = sample["depth"][:-1] if isinstance(self.views, SourceViewCurriculum) else sample["depth"]
        sample["near"], sample["far"] = near_far(sources, self.default_near_far)
        for key in ("semantic", "instance"):
            if all(key in f for f in frames):
                sample[key] = torch.stack([f[key] for f in frames])  # (V, H, W)
        if self.scene_cloud is not None:
            sample["cloud"] = self.fused_cloud(scene, vs)  # (N, 3) points, colors, ...
        if self.transform is not None:
            sample = self.transform(sample, generator)
        return sample

    def select_views(self, scene: int, vs, generator: torch.Generator) -> Tensor:
        """(V,) frame indices: the context views first, then the targets."""
        if self.views is None:
            return select_overlapping_views(vs.c2w, self.num_views, generator, self.pool)
        if isinstance(self.views, SourceViewCurriculum):  # the sources, then the target
            count = min(step_view_count(self.views, self.step, self.total_steps, self.seed), self.fewest_frames() - 1)
            return select_target_and_sources(self.views, vs.c2w, self.step, self.total_steps, generator, count=count)
        from .views import select_context, select_targets

        depth = None
        if self.views.mode == "overlap":  # the measured overlap needs every frame's depth
            depth = torch.stack([frame_depth(self.scenes.frame(scene, i), vs, True, "MultiViewDataset") for i in range(len(vs))])
        context = select_context(self.views, len(vs), generator, K=vs.K, c2w=vs.c2w, depth=depth)  # (C,)
        if not self.num_targets:
            return context
        return torch.cat([context, select_targets(self.views, len(vs), context, self.num_targets, generator)])  # (C + T,)


def near_far(depth: Tensor, default: tuple[float, float], margin: float = 0.1) -> tuple[Tensor, Tensor]:
    """() near and far of a sample's views: the 1st and 99th percentiles of their valid depth (depth
    (V, 1, H, W), 0 = invalid) widened by ``margin`` (x 0.9 and x 1.1; our choice), else ``default``."""
    valid = depth[depth > 0]
    if valid.numel() == 0:
        return torch.tensor(float(default[0])), torch.tensor(float(default[1]))
    q = torch.quantile(valid.float()[:: max(1, valid.numel() // 100_000)], torch.tensor([0.01, 0.99]))  # (2,)
    return q[0] * (1 - margin), q[1] * (1 + margin)


# ---- point clouds ---------------------------------------------------------------------------------
class PointCloudDataset(Dataset):
    """One point cloud per sample (keys in the module docstring); batch with :func:`collate_points`.

    ``transform``: optional callable sample dict -> sample dict (e.g. augmentation with its own seeded
    generator)."""

    def __init__(self, clouds, transform: Callable[[dict], dict] | None = None, cache_scenes: int = 64):
        self.clouds = SceneList(clouds, PointCloud, cache_scenes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.clouds)

    def __getitem__(self, idx: int) -> dict:
        pc = self.clouds[idx]
        if len(pc) == 0:
            raise InputError(f"PointCloudDataset: cloud {idx} ({pc.name!r}) is empty")
        sample = {"points": pc.points.float(), "name": pc.name}  # (N, 3)
        for key in ("colors", "normals"):
            if getattr(pc, key) is not None:
                sample[key] = getattr(pc, key).float()  # (N, 3)
        for key in ("semantic", "instance"):
            if getattr(pc, key) is not None:
                sample[key] = getattr(pc, key).long()  # (N,)
        return self.transform(sample) if self.transform is not None else sample


# ---- collate --------------------------------------------------------------------------------------
def label_fill_shape(sample: dict) -> tuple[int, ...]:
    """The shape of a missing label entry of ``sample``: (…, H, W) for images, (N,) for points."""
    if "rgb" in sample:
        return tuple(sample["rgb"].shape[:-3]) + tuple(sample["rgb"].shape[-2:])
    if "image" in sample:
        return ()  # a missing class label
    return (sample["points"].shape[0],)


def fill_missing_labels(samples: list[dict]) -> list[dict]:
    """Add -1 (ignore) label entries where only some samples carry a label key; other keys must agree."""
    keys = set().union(*samples)
    out = []
    for i, s in enumerate(samples):
        missing = keys - set(s)
        bad = [k for k in missing if k not in LABEL_KEYS]
        if bad:
            raise InputError(f"collate: sample {i} lacks {sorted(bad)} that other samples in the batch have")
        s = dict(s)
        for k in missing:
            s[k] = torch.full(label_fill_shape(s), -1, dtype=torch.int64)
        out.append(s)
    return out


def collate_stacked(samples: list[dict]) -> dict:
    """Stack samples of ImageDataset / RGBDFrameDataset / MultiViewDataset along a new batch dim;
    strings become lists. Different shapes raise an :class:`InputError` naming the key."""
    if not samples:
        raise InputError("collate: empty batch")
    samples = fill_missing_labels(samples)
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise InputError(
                    f"collate: '{key}' has different shapes in one batch {sorted(shapes)}; "
                    "resize (ImageDataset(size=...)) or batch scenes of one image size"
                )
            batch[key] = torch.stack(values)  # (B, ...)
        elif isinstance(values[0], dict) and "points" in values[0]:
            batch[key] = collate_points(values)  # one cloud per sample, packed: (sum N, ...), offset (B,)
        else:
            batch[key] = values
    return batch


def collate_points(samples: list[dict]) -> dict:
    """Concatenate point-cloud samples: per-point keys (sum N, ...), ``offset`` (B,) cumulative counts,
    ``batch`` (sum N,) cloud index per point, string keys as lists."""
    if not samples:
        raise InputError("collate: empty batch")
    samples = fill_missing_labels(samples)
    counts = torch.tensor([s["points"].shape[0] for s in samples], dtype=torch.int64)  # (B,)
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        batch[key] = torch.cat(values) if isinstance(values[0], Tensor) else values  # (sum N, ...)
    batch["offset"] = torch.cumsum(counts, 0)  # (B,)
    batch["batch"] = torch.repeat_interleave(torch.arange(len(samples)), counts)  # (sum N,)
    return batch
