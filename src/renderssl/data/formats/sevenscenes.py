"""Microsoft 7-Scenes, as the dataset is published, read frame by frame.

On disk, the dataset root holds one folder per scene and each scene one folder per sequence::

    <root>/<scene>/seq-XX/frame-NNNNNN.color.png | .color.jpg   8-bit colour, 640x480
    <root>/<scene>/seq-XX/frame-NNNNNN.depth.png                uint16 millimetres; 65535 (and 0) = invalid
    <root>/<scene>/seq-XX/frame-NNNNNN.pose.txt                 4x4 camera-to-world, OpenCV axes
    <seq>/camera-intrinsics.txt    (optional, ours) 3x3 K, or "fx fy cx cy"; also looked for in the
                                   parent (scene) folder

What is a scene here: one sequence. A sequence folder is recognised by its ``frame-*.pose.txt``
files (:func:`is_sequence`). The dataset root, a scene folder (``<scene>/seq-XX/``) or a sequence folder
are all accepted as ``data.source`` and as scene folders inside a source: a root or a scene folder
stands for its sequences (:func:`sequence_folders`: a scene folder's sub-folders named ``seq-<digits>``,
as published, that are sequences, in name order; for a root, those of each scene folder, scenes in name
order), each one scene. A sequence whose folder is named ``seq-<digits>`` is named ``<scene>/seq-XX``
after its parent folder too (:func:`sequence_name`), so the sequences of a root have unique names (every
scene has a ``seq-01``); a sequence folder named otherwise is named after its folder (and is found as a
scene folder of a source in its own right, not under a scene folder). The expansion happens where a
source's scene folders are listed (:func:`renderssl.data.build.scene_folders`, through
:func:`renderssl.data.formats.expand_scene_folder`); :func:`renderssl.data.formats.detect_format` refuses
a root or scene folder as one scene, naming its sequences.

Frames are the ``frame-NNNNNN`` stems that have a colour image, sorted by number; ``every_k`` keeps
every k-th of them. A sequence has depth when any of its frames has a depth file (from the listing);
then every frame must have one.

Conventions: poses are OpenCV c2w (no change). Depth mm -> metres, 65535 -> 0 (invalid). Real
7-Scenes ships no intrinsics file: its documented Kinect calibration is used then, fx = fy = 585,
cx = 320, cy = 240 for 640x480 images (principal point at the image centre, which is our
half-integer pixel-centre convention). Other image sizes without an intrinsics file are an error
(for the whole sequence). Note that the real dataset's depth is not registered to its colour camera;
the reader does not correct for that.

Lazily read (:func:`open_sevenscenes` -> :class:`SevenScenesScene`): the frame list, the poses and the
frame size (from the header of the first readable colour image) are read when the sequence is opened,
each frame's colour (kept as uint8, as stored) and depth decoded by ``read_frame``;
:func:`count_sevenscenes` counts frames from the listing alone; :func:`read_sevenscenes` is the sequence
loaded whole (:meth:`~renderssl.data.scenes.Scene.load`). One policy for bad frames: a frame whose
pose file is missing, unreadable, non-finite or non-invertible, whose colour image is unreadable or
truncated or of another size than the sequence's, or (in a sequence with depth) whose depth file is
missing, unreadable or of another size than its colour image, raises an InputError naming the file
from ``read_frame``: training skips and counts it, ``load()`` skips it with one warning and lists it in
the result's ``skipped``. It never drops depth from the other frames.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError
from ...geometry import intrinsics_matrix
from ..scenes import Scene
from ..types import ViewSet
from .images import (
    _to_8bit, check_same_size, find_image, image_size, open_image, pose_problem, read_depth, read_matrix,
    require_dir, share_intrinsics, write_depth, write_matrix, write_rgb,
)
from .options import ReadOptions

INTRINSICS_FILE = "camera-intrinsics.txt"
DEFAULT_SIZE = (640, 480)  # (W, H) of real 7-Scenes frames
DEFAULT_FX_FY_CX_CY = (585.0, 585.0, 320.0, 240.0)
DEPTH_SCALE = 1000.0
INVALID_DEPTH = 65535
MAX_PROBED = 16  # frames whose headers are tried for the sequence's frame size
_FRAME = re.compile(r"^(frame-\d+)\.color\.(png|jpg|jpeg)$", re.IGNORECASE)
_DEPTH = re.compile(r"^(frame-\d+)\.depth\.png$", re.IGNORECASE)
_SEQUENCE_NAME = re.compile(r"^seq-\d+$", re.IGNORECASE)


# ---- the published layout: root, scene and sequence folders --------------------------------------
def is_sequence(path) -> bool:
    """Whether ``path`` is a sequence folder (it holds ``frame-*.pose.txt`` files)."""
    path = Path(path)
    return path.is_dir() and next(path.glob("frame-*.pose.txt"), None) is not None


def sequence_folders(path) -> list[Path]:
    """The sequences a scene folder or a dataset root stands for, in name order: a folder's sub-folders
    named ``seq-<digits>`` that are sequences (a scene folder) or, when it has none, those of each of its
    sub-folders (the root, scenes in name order). ``[]`` for anything else, a sequence folder included.
    Only folders named ``seq-<digits>`` are looked into and sequence folders are not listed, so asking
    about a large folder of other scenes lists each scene folder once and no image folder."""
    path = Path(path)
    if not path.is_dir() or is_sequence(path):
        return []
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    sequences = _sequences_in(subdirs)
    if sequences:
        return sequences
    return [s for d in subdirs if not is_sequence(d) for s in _sequences_in(sorted(d.iterdir()))]


def _sequences_in(paths) -> list[Path]:
    return [p for p in paths if _SEQUENCE_NAME.match(p.name) and is_sequence(p)]


def sequence_name(path) -> str:
    """``<scene>/seq-XX`` for a sequence folder named ``seq-<digits>`` (as published), else the folder's name."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if _SEQUENCE_NAME.match(path.name) and path.parent.name else path.name


# ---- reading --------------------------------------------------------------------------------------
def read_sevenscenes(root, every_k: int = 1, name: str | None = None) -> ViewSet:
    """Read one 7-Scenes sequence folder (``seq-XX``) into a :class:`ViewSet`: every frame that can be
    read, the others skipped with one warning and listed in ``skipped``."""
    return open_sevenscenes(root, ReadOptions(every_k=every_k), name).load()


def open_sevenscenes(root, options: ReadOptions = ReadOptions(), name: str | None = None) -> "SevenScenesScene":
    """The sequence opened for reading frame by frame (poses and frame size read now, images when asked)."""
    if options.every_k < 1:
        raise InputError(f"read_sevenscenes: every_k must be >= 1, got {options.every_k}")
    return SevenScenesScene(root, options.every_k, name)


def count_sevenscenes(root, options: ReadOptions = ReadOptions()) -> int:
    """Frames of the sequence, from its listing."""
    root = require_dir(root, "7-Scenes sequence folder")
    return len(list_frames(root)[0][::options.every_k])


class SevenScenesScene(Scene):
    """A 7-Scenes sequence folder: frame list, poses and frame size read when opened; each frame's
    colour and depth decoded by :meth:`read_frame`, which raises an InputError naming the file of a
    frame that cannot be used (see the module docstring)."""

    def __init__(self, root, every_k: int = 1, name: str | None = None):
        self.root = require_dir(root, "7-Scenes sequence folder")
        stems, depth_stems = list_frames(self.root)
        self.stems = stems[::every_k]
        self.name = name if name is not None else sequence_name(self.root)
        self.frame_names, self.class_names = list(self.stems), []
        self.has_depth = bool(depth_stems)  # a sequence with depth files: every frame needs one
        poses, self.pose_problems = [], {}
        for i, stem in enumerate(self.stems):
            path = self.root / f"{stem}.pose.txt"
            try:
                c2w = read_matrix(path)  # (4, 4)
                problem = pose_problem(c2w)
                if problem:
                    self.pose_problems[i] = f"{path} ({problem})"
            except InputError as err:
                self.pose_problems[i] = str(err)
            poses.append(torch.eye(4) if i in self.pose_problems else torch.from_numpy(c2w).float())
        self.c2w = torch.stack(poses)  # (V, 4, 4)
        self.width, self.height = self.frame_size()
        K = read_intrinsics(self.root, self.width, self.height)  # (3, 3)
        self.K = K.expand(len(self.stems), 3, 3).clone()  # (V, 3, 3)

    def frame_size(self) -> tuple[int, int]:
        """(W, H) from the header of the first colour image that can be read."""
        problems = []
        for stem in self.stems[:MAX_PROBED]:
            try:
                return image_size(find_image(self.root / f"{stem}.color"))
            except InputError as err:
                problems.append(str(err))
        raise InputError(f"{self.root}: no readable colour image among the first {len(problems)} frames: " + "; ".join(problems[:3]))

    def read_frame(self, i: int) -> dict:
        if i in self.pose_problems:
            raise InputError(self.pose_problems[i])
        stem = self.stems[i]
        color_path = find_image(self.root / f"{stem}.color")
        rgb = read_rgb8(color_path)  # (3, H, W) uint8
        H, W = rgb.shape[-2:]
        if (W, H) != (self.width, self.height):
            raise InputError(f"{color_path} is {W}x{H} but the sequence's frames are {self.width}x{self.height} (WxH); "
                             "all frames of a sequence must share one size")
        frame = {"rgb": rgb}
        if self.has_depth:
            depth_path = self.root / f"{stem}.depth.png"
            if not depth_path.is_file():
                raise InputError(f"{depth_path}: depth image not found (the sequence's other frames have depth)")
            depth = read_depth(depth_path, DEPTH_SCALE, invalid=INVALID_DEPTH)  # (1, h, w) metres
            check_same_size(color_path, (W, H), depth_path, (depth.shape[-1], depth.shape[-2]))
            frame["depth"] = depth
        return frame


def read_rgb8(path) -> Tensor:
    """Colour image -> (3, H, W) uint8 as stored: the bytes :func:`~.images.read_rgb` divides by 255, so
    ``read_rgb8(p).float() / 255`` (what a Dataset does with it) equals ``read_rgb(p)`` bit for bit."""
    arr = np.asarray(_to_8bit(open_image(path), path).convert("RGB"))  # (H, W, 3) uint8
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def list_frames(root: Path) -> tuple[list[str], set[str]]:
    """(``frame-NNNNNN`` stems that have a colour image, sorted by number; stems that have a depth file)."""
    stems, depth = set(), set()
    for p in root.iterdir():
        if m := _FRAME.match(p.name):
            stems.add(m.group(1))
        elif m := _DEPTH.match(p.name):
            depth.add(m.group(1))
    if not stems:
        raise InputError(f"{root}: no frames (frame-NNNNNN.color.png or .jpg) found")
    return sorted(stems, key=lambda s: int(s.split("-")[1])), depth


def read_intrinsics(root: Path, width: int, height: int) -> torch.Tensor:
    """(3, 3) K from camera-intrinsics.txt (sequence or scene folder), else the 7-Scenes default."""
    for path in (root / INTRINSICS_FILE, root.parent / INTRINSICS_FILE):
        if path.is_file():
            m = read_matrix(path, shapes=((3, 3), (4,)))
            if not np.isfinite(m).all():
                raise InputError(f"{path}: non-finite intrinsics")
            if m.shape == (4,):
                return intrinsics_matrix(*m.tolist())
            return torch.from_numpy(m).float()
    if (width, height) != DEFAULT_SIZE:
        raise InputError(
            f"{root / INTRINSICS_FILE}: not found, and the 7-Scenes default intrinsics only apply to "
            f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]} images (these are {width}x{height})"
        )
    return intrinsics_matrix(*DEFAULT_FX_FY_CX_CY)


# ---- writing --------------------------------------------------------------------------------------
def write_sevenscenes(viewset: ViewSet, root, color_format: str = "png", jpg_quality: int = 95) -> Path:
    """Write ``viewset`` as a 7-Scenes sequence folder (frames frame-000000...), plus
    camera-intrinsics.txt (3x3). All views must share one K. Returns ``root``."""
    if color_format not in ("png", "jpg"):
        raise InputError(f"write_sevenscenes: color_format must be 'png' or 'jpg', got {color_format!r}")
    root = Path(root)
    write_matrix(root / INTRINSICS_FILE, share_intrinsics(viewset.K, "7-Scenes"))
    for i in range(len(viewset)):
        stem = root / f"frame-{i:06d}"
        write_rgb(f"{stem}.color.{color_format}", viewset.rgb[i], jpg_quality=jpg_quality)
        write_matrix(f"{stem}.pose.txt", viewset.c2w[i])
        if viewset.depth is not None:
            write_depth(f"{stem}.depth.png", viewset.depth[i], DEPTH_SCALE, invalid=INVALID_DEPTH)
    return root
