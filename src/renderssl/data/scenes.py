"""Scenes that are opened when they are read and frames that are decoded when they are used.

A split is a list of :class:`SceneRef`: a name, a frame count and an ``open`` callable, all cheap
(a synthetic scene's seed, a folder path plus a directory listing), so listing 100k frames of 1,500
ScanNet scenes or 10k synthetic seeds costs no decoding. :class:`SceneList` opens scenes on demand and
keeps two bounded caches per process (per DataLoader worker):

- opened scenes, by count (``data.cache_scenes``): their cameras and what it takes to read a frame
  (a synthetic layout, a folder's poses and intrinsics);
- decoded frames, by bytes (``data.cache_mb``): colour kept as stored (uint8 from image files, float32
  from the generator), depth as float32 metres, labels as int16 when they fit; converted to the
  sample's float32/int64 when a Dataset builds a sample.

So the memory of a run is bounded by these budgets whatever the size of the split, and a split small
enough to fit (the tiny presets: 480 frames of 64x64, about 90 MB) is decoded once and then served
from memory.

Opened scenes (:class:`Scene`) expose ``name``, ``frame_names``, ``class_names``, ``K`` (V, 3, 3),
``c2w`` (V, 4, 4), ``width``, ``height``, ``has_depth`` and ``frame(i)``; a :class:`ViewSet` (every
frame in memory) has the same interface, so Datasets take either.

Sources:
- :class:`SyntheticScene`: a synthetic scene is a pure function of its seed; a frame is rendered on
  demand from the scene's layout, view by view, which is exactly how ``generate_scene`` renders the
  whole scene, so both give the same bits.
- :class:`ScanNetScene`: a ScanNet-style folder read frame by frame with the eager reader's own frame
  function (same bits); poses and intrinsics are read when the scene is opened.
- other folder formats (7-Scenes, Blender, LLFF) are read whole by their reader when opened.

A frame that cannot be read (unreadable image, missing depth file, a bad pose) raises an
:class:`~renderssl.errors.InputError` naming the file; the trainer skips such samples and counts them
(:mod:`renderssl.data.unreadable`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..errors import InputError
from .types import PointCloud, ViewSet

FRAME_KEYS = ("rgb", "depth", "normals", "semantic", "instance")
LABEL_KEYS = ("semantic", "instance")


# ---- references: cheap descriptions of scenes -----------------------------------------------------
@dataclass(frozen=True)
class SceneRef:
    """A scene not yet opened: its name, its number of frames and how to open it (picklable)."""

    name: str
    num_frames: int
    open: Callable[[], object]
    points: bool = False  # it opens to a PointCloud, not posed views


def synthetic_refs(seeds, config) -> list[SceneRef]:
    """References of synthetic scenes ``seeds`` (``SyntheticConfig``)."""
    return [SceneRef(f"{config.kind}_{int(s):05d}", config.num_views, partial(SyntheticScene, int(s), config)) for s in seeds]


def folder_ref(path, every_k: int = 1) -> SceneRef:
    """Reference of a scene folder in a format the readers detect (frames counted from its listing)."""
    from .formats import detect_format

    path = Path(path)
    fmt = detect_format(path)
    return SceneRef(path.name, count_frames(path, fmt, every_k), partial(open_folder_scene, path, fmt, every_k))


def count_frames(path: Path, fmt: str, every_k: int) -> int:
    """Frames of a scene folder from its listing or pose table only (no image is decoded)."""
    if fmt == "scannet":
        from .formats.scannet import list_frames

        return len(list_frames(path / "color")[::every_k])
    if fmt == "7scenes":
        from .formats.sevenscenes import list_frames

        return len(list_frames(path)[::every_k])
    if fmt == "llff":
        from .formats.llff import POSES_FILE, read_poses_bounds

        return len(range(0, len(read_poses_bounds(path / POSES_FILE)), every_k))
    from .formats.blender import load_json, resolve_json

    return len(load_json(resolve_json(path, None))["frames"][::every_k])


def open_folder_scene(path: Path, fmt: str, every_k: int):
    """A folder scene opened: per frame for ScanNet-style folders, else read whole."""
    if fmt == "scannet":
        return ScanNetScene(path, every_k)
    from .formats import read_viewset

    return read_viewset(path, fmt, every_k=every_k)


# ---- opened scenes --------------------------------------------------------------------------------
class Scene:
    """An opened scene whose frames are decoded by :meth:`read_frame` (subclasses) when asked for."""

    name: str
    frame_names: list[str]
    class_names: list[str]
    K: Tensor  # (V, 3, 3) pixels
    c2w: Tensor  # (V, 4, 4) OpenCV camera-to-world
    width: int
    height: int
    has_depth: bool

    def __len__(self) -> int:
        return len(self.frame_names)

    def cameras(self):
        from ..geometry import Cameras

        return Cameras(self.K, self.c2w, self.width, self.height)

    def read_frame(self, i: int) -> dict:  # pragma: no cover
        """Frame ``i`` as stored: rgb (3, H, W) uint8 or float32, depth (1, H, W) float32 metres, normals
        (3, H, W), semantic / instance (H, W); keys absent when the scene lacks them."""
        raise NotImplementedError

    def load(self) -> ViewSet:
        """Every frame in memory, as a :class:`ViewSet`."""
        frames = [as_sample_dtypes(self.read_frame(i)) for i in range(len(self))]
        stacked = {k: torch.stack([f[k] for f in frames]) for k in FRAME_KEYS if k in frames[0]}
        return ViewSet(K=self.K.clone(), c2w=self.c2w.clone(), name=self.name, frame_names=list(self.frame_names),
                       class_names=list(self.class_names), **stacked)


def viewset_frame(vs: ViewSet, i: int) -> dict:
    """Frame ``i`` of an in-memory :class:`ViewSet` (the :meth:`Scene.read_frame` keys)."""
    return {k: getattr(vs, k)[i] for k in FRAME_KEYS if getattr(vs, k) is not None}


def open_scene(item):
    """An item of a split wholly in memory: a ViewSet or a PointCloud (SceneRefs are opened, lazily read
    scenes loaded). For per-scene work that needs every frame at once (point-cloud fusion)."""
    obj = item.open() if isinstance(item, SceneRef) else item
    return obj.load() if isinstance(obj, Scene) else obj


def as_sample_dtypes(frame: dict) -> dict:
    """Stored frame -> rgb/depth/normals float32 (rgb in [0, 1]), labels int64."""
    out = {}
    for key, value in frame.items():
        if key in LABEL_KEYS:
            out[key] = value.long()
        elif key == "rgb" and value.dtype == torch.uint8:
            out[key] = value.float() / 255.0  # exactly the readers' read_rgb
        else:
            out[key] = value.float()
    return out


def nbytes(frame: dict) -> int:
    return sum(v.numel() * v.element_size() for v in frame.values())


def compact(frame: dict) -> dict:
    """A frame in its smallest exact dtypes for caching (labels int16 when their values fit)."""
    out = dict(frame)
    for key in LABEL_KEYS:
        v = out.get(key)
        if v is not None and v.numel() and -32768 <= int(v.min()) and int(v.max()) <= 32767:
            out[key] = v.to(torch.int16)
    return out


class SyntheticScene(Scene):
    """Synthetic scene ``seed``: cameras from its trajectory, frames rendered one view at a time."""

    def __init__(self, seed: int, config):
        from .synthetic import CLASS_NAMES, make_scene_layout, scene_cameras

        self.seed, self.config = int(seed), config
        self.layout = make_scene_layout(self.seed, config)
        cams = scene_cameras(self.layout)
        self.K, self.c2w, self.width, self.height = cams.K, cams.c2w, cams.width, cams.height
        self.name = f"{config.kind}_{self.seed:05d}"
        self.frame_names = [f"{i:06d}" for i in range(config.num_views)]
        self.class_names = list(CLASS_NAMES)
        self.has_depth = True

    def read_frame(self, i: int) -> dict:
        from .synthetic import render_layout

        out = render_layout(self.layout, self.cameras()[i : i + 1])
        return {k: out[k][0] for k in FRAME_KEYS}


class ScanNetScene(Scene):
    """A ScanNet-style scene folder read frame by frame (layout in :mod:`.formats.scannet`)."""

    def __init__(self, root, every_k: int = 1):
        from .formats.images import pose_problem, read_matrix
        from .formats.scannet import list_frames, read_class_names, read_intrinsics

        self.root = Path(root)
        self.stems = list_frames(self.root / "color")[::every_k]
        self.name, self.frame_names = self.root.name, list(self.stems)
        self.class_names = read_class_names(self.root)
        self.K_color, self.K_depth = read_intrinsics(self.root)
        self.depth_dir = self.root / "depth" if (self.root / "depth").is_dir() else None
        self.label_dirs = {k: self.root / k for k in ("label", "instance") if (self.root / k).is_dir()}  # scannet.read_frame's keys
        self.has_depth = self.depth_dir is not None
        poses, self.pose_problems = [], {}
        for i, stem in enumerate(self.stems):
            path = self.root / "pose" / f"{stem}.txt"
            try:
                c2w = read_matrix(path)  # (4, 4)
                problem = pose_problem(c2w)
            except InputError as err:
                c2w, problem = None, str(err)
            if problem:
                self.pose_problems[i] = f"{path}: {problem}"
                c2w = torch.eye(4).numpy()
            poses.append(torch.from_numpy(c2w).float())
        self.c2w = torch.stack(poses)  # (V, 4, 4)
        self.width, self.height, K = self.frame_size()
        self.K = K.expand(len(self.stems), 3, 3).clone()  # (V, 3, 3)

    def frame_size(self) -> tuple[int, int, Tensor]:
        """(W, H, K) of the frames, from the headers of the first frame whose files can be read: colour
        at the depth size with the depth intrinsics when the two differ (as the reader resamples)."""
        from .formats.images import find_image, image_size

        problems = []
        for stem in self.stems:
            try:
                W, H = image_size(find_image(self.root / "color" / stem))
                depth = None if self.depth_dir is None else self.depth_dir / f"{stem}.png"
                Wd, Hd = image_size(depth) if depth is not None else (W, H)
            except InputError as err:
                problems.append(str(err))
                if len(problems) < 16:
                    continue
                break
            if (Wd, Hd) != (W, H) and self.K_depth is not None:
                return Wd, Hd, self.K_depth
            return W, H, self.K_color if self.K_color is not None else self.K_depth
        raise InputError(f"{self.root}: no readable frame among the first {len(problems)}: " + "; ".join(problems[:3]))

    def read_frame(self, i: int) -> dict:
        from .formats.scannet import read_frame

        if i in self.pose_problems:
            raise InputError(self.pose_problems[i])
        stem = self.stems[i]
        out = read_frame(self.root, stem, self.c2w[i].numpy(), self.depth_dir, self.label_dirs, self.K_color, self.K_depth)
        if tuple(out["rgb"].shape[-2:]) != (self.height, self.width):
            raise InputError(f"{self.root / 'color'}/{stem}: frame is {tuple(out['rgb'].shape[-2:])} but the scene is "
                             f"{(self.height, self.width)} (HxW)")
        frame = {"rgb": out["rgb"]}
        if out["depth"] is not None:
            frame["depth"] = out["depth"]
        elif self.has_depth:
            raise InputError(f"{self.depth_dir / (stem + '.png')}: depth missing")
        for key, src in (("semantic", "label"), ("instance", "instance")):
            if src in out:
                frame[key] = out[src]
        return frame


# ---- the per-process list with its caches ----------------------------------------------------------
class SceneList:
    """Scenes of a split (ViewSets, PointClouds, SceneRefs or zero-argument loader callables), opened
    on demand: at most ``cache_scenes`` opened scenes and ``cache_mb`` MB of decoded frames are kept
    (least recently used first out)."""

    def __init__(self, items, kind: type = ViewSet, cache_scenes: int = 8, cache_mb: float = 512.0):
        if isinstance(items, (ViewSet, PointCloud, SceneRef)) or callable(items):
            items = [items]
        self.items, self.kind = list(items), kind
        if not self.items:
            raise InputError(f"{kind.__name__} source list is empty")
        for i, item in enumerate(self.items):
            if not isinstance(item, (kind, SceneRef)) and not callable(item):
                raise InputError(f"source {i}: expected a {kind.__name__}, a SceneRef or a loader callable, got {type(item).__name__}")
        self.cache_scenes, self.cache_bytes = max(1, int(cache_scenes)), int(cache_mb * 2**20)
        self._scenes: OrderedDict[int, object] = OrderedDict()
        self._frames: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self._frame_bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        """Scene ``i``, opened."""
        item = self.items[i]
        if isinstance(item, self.kind):
            return item
        if i in self._scenes:
            self._scenes.move_to_end(i)
            return self._scenes[i]
        obj = item.open() if isinstance(item, SceneRef) else item()
        if not isinstance(obj, (PointCloud,) if self.kind is PointCloud else (ViewSet, Scene)):
            raise InputError(f"source {i}: loader returned {type(obj).__name__}, expected a {self.kind.__name__}")
        self._scenes[i] = obj
        while len(self._scenes) > self.cache_scenes:
            self._scenes.popitem(last=False)
        return obj

    def name(self, i: int) -> str:
        item = self.items[i]
        return item.name if isinstance(item, (SceneRef, ViewSet, PointCloud)) else self[i].name

    def frame(self, i: int, f: int) -> dict:
        """Frame ``f`` of scene ``i`` in sample dtypes (float32 images and depth, int64 labels)."""
        key = (i, f)
        if key in self._frames:
            self._frames.move_to_end(key)
            return as_sample_dtypes(self._frames[key])
        scene = self[i]
        stored = viewset_frame(scene, f) if isinstance(scene, ViewSet) else compact(scene.read_frame(f))
        if not isinstance(scene, ViewSet) and nbytes(stored) <= self.cache_bytes:  # in-memory scenes need no copy
            self._frames[key] = stored
            self._frame_bytes += nbytes(stored)
            while self._frame_bytes > self.cache_bytes:
                self._frame_bytes -= nbytes(self._frames.popitem(last=False)[1])
        return as_sample_dtypes(stored)

    def lengths(self, given=None) -> list[int]:
        """Frames per scene, from the references where possible (no scene is opened for them)."""
        if given is not None:
            if len(given) != len(self):
                raise InputError(f"lengths has {len(given)} entries for {len(self)} sources")
            return [int(n) for n in given]
        return [item.num_frames if isinstance(item, SceneRef) else len(self[i]) for i, item in enumerate(self.items)]
