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
- folder scenes: every format's ``open_<format>`` (:data:`renderssl.data.formats.OPENERS`) reads poses,
  intrinsics and the frame list when the scene is opened and decodes a frame in ``read_frame``; its
  eager ``read_<format>`` is the same scene loaded whole (:meth:`Scene.load`).

A frame that cannot be read (unreadable image, missing depth file, a bad pose) raises an
:class:`~renderssl.errors.InputError` naming the file; the trainer skips such samples and counts them
(:mod:`renderssl.data.unreadable`).
"""

from __future__ import annotations

import dataclasses
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
    """A scene not yet opened: its name, its number of frames and how to open it (picklable).

    ``frames`` restricts it to those frame indices of the opened scene (a split by frames within
    scenes, :mod:`renderssl.data.build`); ``num_frames`` is then their number."""

    name: str
    num_frames: int
    opener: Callable[[], object]
    points: bool = False  # it opens to a PointCloud, not posed views
    frames: tuple[int, ...] | None = None
    size: tuple[int, int] | None = None  # (H, W) every frame is brought to when read (data.height, data.width)
    resize: str = "crop"  # how (data.resize): crop to the aspect ratio then resize, or stretch

    def open(self):
        scene = self.opener()
        if self.frames is not None:
            scene = FrameSubset(scene, list(self.frames), self.name)
        if self.size is not None and not self.points and (scene.height, scene.width) != tuple(self.size):
            scene = FittedScene(scene, self.size, self.resize)
        return scene

    def subset(self, frames, name: str) -> "SceneRef":
        """This scene restricted to ``frames`` (indices into its frames), named ``name``."""
        picked = tuple(int(f) for f in frames) if self.frames is None else tuple(self.frames[int(f)] for f in frames)
        return dataclasses.replace(self, name=name, num_frames=len(picked), frames=picked)


def synthetic_refs(seeds, config) -> list[SceneRef]:
    """References of synthetic scenes ``seeds`` (``SyntheticConfig``)."""
    return [SceneRef(f"{config.kind}_{int(s):05d}", config.num_views, partial(SyntheticScene, int(s), config)) for s in seeds]


def folder_ref(path, options=None) -> SceneRef:
    """Reference of a scene folder in a format the readers detect (frames counted from its listing)."""
    from .formats import OPENERS, detect_format
    from .formats.options import ReadOptions

    path, options = Path(path), options or ReadOptions()
    fmt = detect_format(path)
    opener, counter = OPENERS[fmt]
    return SceneRef(path.name, counter(path, options), partial(opener, path, options))


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

    def load(self, max_bad_fraction: float = 1.0) -> ViewSet:
        """Every readable frame in memory, as a :class:`ViewSet` whose ``skipped`` lists the frames that
        could not be read ('file (problem)'), with one warning. An :class:`InputError` naming them when
        no frame can be read or more than ``max_bad_fraction`` of them cannot."""
        from .formats.images import SkipLog, attach_skipped, no_valid_frames

        log, kept, frames = SkipLog(self.where), [], []
        for i in range(len(self)):
            try:
                frames.append(as_sample_dtypes(self.read_frame(i)))
                kept.append(i)
            except InputError as err:
                log.items.append(str(err))
        skipped = log.report()
        if not frames:
            raise no_valid_frames(self.where, skipped)
        if len(skipped) > max_bad_fraction * len(self):
            raise InputError(f"{self.where}: {len(skipped)} of {len(self)} frames cannot be read, more than "
                             f"{max_bad_fraction:g} of them: " + ", ".join(skipped[:5]))
        stacked = {k: torch.stack([f[k] for f in frames]) for k in FRAME_KEYS if k in frames[0]}
        vs = ViewSet(K=self.K[kept].clone(), c2w=self.c2w[kept].clone(), name=self.name,
                     frame_names=[self.frame_names[i] for i in kept], class_names=list(self.class_names), **stacked)
        return attach_skipped(vs, skipped)

    @property
    def where(self) -> str:
        """What to name in messages about this scene (its folder or file)."""
        return str(getattr(self, "root", self.name))


class FrameSubset(Scene):
    """Frames ``frames`` of an opened scene (a Scene or a ViewSet), as a scene of their own."""

    def __init__(self, scene, frames: list[int], name: str):
        self.scene, self.frames, self.name = scene, frames, name
        self.frame_names = [scene.frame_names[f] for f in frames]
        self.class_names = list(scene.class_names)
        self.K, self.c2w = scene.K[frames], scene.c2w[frames]  # (V, 3, 3), (V, 4, 4)
        self.width, self.height = scene.width, scene.height
        self.has_depth = scene.depth is not None if isinstance(scene, ViewSet) else scene.has_depth

    def read_frame(self, i: int) -> dict:
        f = self.frames[i]
        return viewset_frame(self.scene, f) if isinstance(self.scene, ViewSet) else self.scene.read_frame(f)

    @property
    def where(self) -> str:
        return self.scene.where if isinstance(self.scene, Scene) else self.name


class FittedScene(Scene):
    """An opened scene (a Scene or a ViewSet) whose frames are brought to ``size`` (H, W) when read, by
    ``resize`` (crop: the centred window of the target's aspect ratio, then an antialiased resize; stretch:
    the resize only), with K following exactly; depth and labels by nearest pixel."""

    def __init__(self, scene, size: tuple[int, int], resize: str = "crop"):
        from .formats.images import fit_intrinsics

        self.scene, self.resize = scene, resize
        self.height, self.width = int(size[0]), int(size[1])
        self.name, self.frame_names = scene.name, list(scene.frame_names)
        self.class_names = list(scene.class_names)
        self.K = fit_intrinsics(scene.K, scene.height, scene.width, self.height, self.width, resize)  # (V, 3, 3)
        self.c2w = scene.c2w
        self.has_depth = scene.depth is not None if isinstance(scene, ViewSet) else scene.has_depth

    def read_frame(self, i: int) -> dict:
        from .datasets import fit_frame

        frame = viewset_frame(self.scene, i) if isinstance(self.scene, ViewSet) else self.scene.read_frame(i)
        frame = dict(frame, rgb=frame["rgb"].float() / 255.0 if frame["rgb"].dtype == torch.uint8 else frame["rgb"])
        return fit_frame(frame, self.height, self.width, self.resize)

    @property
    def where(self) -> str:
        return self.scene.where if isinstance(self.scene, Scene) else self.name


def viewset_frame(vs: ViewSet, i: int) -> dict:
    """Frame ``i`` of an in-memory :class:`ViewSet` (the :meth:`Scene.read_frame` keys)."""
    return {k: getattr(vs, k)[i] for k in FRAME_KEYS if getattr(vs, k) is not None}


def open_scene(item, max_bad_fraction: float = 1.0):
    """An item of a split wholly in memory: a ViewSet or a PointCloud (SceneRefs are opened, lazily read
    scenes loaded, stopping when more than ``max_bad_fraction`` of their frames cannot be read). For
    per-scene work that needs every frame at once (point-cloud fusion)."""
    obj = item.open() if isinstance(item, SceneRef) else item
    return obj.load(max_bad_fraction) if isinstance(obj, Scene) else obj


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


# ---- the per-process caches and the list that uses them --------------------------------------------
class SceneCache:
    """Opened scenes (at most ``max_scenes``) and decoded frames (at most ``max_mb`` MB), least recently
    used first out, keyed by scene name, so SceneLists over overlapping scene lists (a comparison's label
    subsets and runs) can share one and decode each frame once."""

    def __init__(self, max_scenes: int = 64, max_mb: float = 512.0):
        self.max_scenes, self.max_bytes = max(1, int(max_scenes)), int(max_mb * 2**20)
        self.scenes: OrderedDict = OrderedDict()
        self.frames: OrderedDict = OrderedDict()
        self.frame_bytes = 0

    def scene(self, key, open_scene: Callable[[], object]):
        if key in self.scenes:
            self.scenes.move_to_end(key)
            return self.scenes[key]
        obj = self.scenes[key] = open_scene()
        while len(self.scenes) > self.max_scenes:
            self.scenes.popitem(last=False)
        return obj

    def frame(self, key, read: Callable[[], dict]) -> dict:
        if key in self.frames:
            self.frames.move_to_end(key)
            return self.frames[key]
        stored = read()
        if nbytes(stored) <= self.max_bytes:
            self.frames[key] = stored
            self.frame_bytes += nbytes(stored)
            while self.frame_bytes > self.max_bytes:
                self.frame_bytes -= nbytes(self.frames.popitem(last=False)[1])
        return stored


class SceneList:
    """Scenes of a split (ViewSets, PointClouds, SceneRefs or zero-argument loader callables), opened
    on demand through a :class:`SceneCache` (its own, or ``cache`` shared with other lists)."""

    def __init__(self, items, kind: type = ViewSet, cache_scenes: int = 64, cache_mb: float = 512.0,
                 cache: SceneCache | None = None):
        if isinstance(items, (ViewSet, PointCloud, SceneRef)) or callable(items):
            items = [items]
        self.items, self.kind = list(items), kind
        if not self.items:
            raise InputError(f"{kind.__name__} source list is empty")
        for i, item in enumerate(self.items):
            if not isinstance(item, (kind, SceneRef)) and not callable(item):
                raise InputError(f"source {i}: expected a {kind.__name__}, a SceneRef or a loader callable, got {type(item).__name__}")
        self.cache = cache if cache is not None else SceneCache(cache_scenes, cache_mb)

    def __len__(self) -> int:
        return len(self.items)

    def key(self, i: int):
        """The cache key of scene ``i``: a reference's name, else this list and the index."""
        item = self.items[i]
        return item.name if isinstance(item, SceneRef) else (id(self), i)

    def __getitem__(self, i: int):
        """Scene ``i``, opened."""
        item = self.items[i]
        if isinstance(item, self.kind):
            return item
        return self.cache.scene(self.key(i), lambda: self.open(i))

    def open(self, i: int):
        item = self.items[i]
        obj = item.open() if isinstance(item, SceneRef) else item()
        if not isinstance(obj, (PointCloud,) if self.kind is PointCloud else (ViewSet, Scene)):
            raise InputError(f"source {i}: loader returned {type(obj).__name__}, expected a {self.kind.__name__}")
        return obj

    def num_frames(self, i: int) -> int:
        """Frames of scene ``i`` (a reference's listing count, else the opened scene's length)."""
        item = self.items[i]
        return item.num_frames if isinstance(item, SceneRef) else len(self[i])

    def name(self, i: int) -> str:
        item = self.items[i]
        return item.name if isinstance(item, (SceneRef, ViewSet, PointCloud)) else self[i].name

    def frame(self, i: int, f: int) -> dict:
        """Frame ``f`` of scene ``i`` in sample dtypes (float32 images and depth, int64 labels)."""
        scene = self[i]
        if isinstance(scene, ViewSet):  # in memory already: no second copy
            return as_sample_dtypes(viewset_frame(scene, f))
        return as_sample_dtypes(self.cache.frame((self.key(i), f), lambda: compact(scene.read_frame(f))))

    def lengths(self, given=None) -> list[int]:
        """Frames per scene, from the references where possible (no scene is opened for them)."""
        if given is not None:
            if len(given) != len(self):
                raise InputError(f"lengths has {len(given)} entries for {len(self)} sources")
            return [int(n) for n in given]
        return [item.num_frames if isinstance(item, SceneRef) else len(self[i]) for i, item in enumerate(self.items)]
