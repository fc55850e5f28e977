"""ScanNet-style RGB-D export (the layout of ScanNet's SensReader output).

On disk, for one scene::

    <scene>/color/<i>.jpg | <i>.png       8-bit colour
    <scene>/depth/<i>.png                 uint16 millimetres, 0 = invalid          (optional folder)
    <scene>/intrinsic/intrinsic_color.txt 4x4, K in the top-left 3x3 (pixels)
    <scene>/intrinsic/intrinsic_depth.txt 4x4 (optional)
    <scene>/pose/<i>.txt                  4x4 camera-to-world, OpenCV axes
    <scene>/label/<i>.png                 uint16 class + 1, 0 = unlabelled         (optional folder)
    <scene>/instance/<i>.png              uint16 instance id + 1, 0 = none         (optional folder)
    <scene>/renderssl_meta.json           {"class_names": [...]}                   (optional, ours)

Frames are the integer stems of ``color/``, sorted numerically; ``every_k`` keeps every k-th of them.

Conventions: poses are already OpenCV c2w (no change). Depth mm -> metres (/1000). Labels stored
as value + 1 -> int64 with -1 = ignore. Intrinsic files are used as they are (ScanNet's values put a
centred camera at cx ~ W/2, which is our half-integer pixel-centre convention).

Colour and depth sizes: real ScanNet has colour 1296x968 and depth 640x480. When they differ and
``intrinsic_depth.txt`` exists, the colour (and label/instance maps at colour size) is resampled to
the depth size (antialiased bilinear / nearest) and ``intrinsic_depth`` becomes K -- depth is the
registered geometry, so the RGB-D pair lives in the depth camera. Without ``intrinsic_depth.txt`` the
sizes cannot be reconciled and the reader raises an error naming both files and sizes.

:func:`open_scannet` reads poses and intrinsics and lists the frames; each frame's images are decoded
when it is read (:class:`ScanNetScene`), and :func:`read_scannet` is that scene loaded whole. A frame
that cannot be used (a pose that is non-finite, as ScanNet marks failed tracking with ``-inf``, or
non-invertible; an unreadable colour, depth or label image; a frame of another size) is skipped with a
warning and listed in the result's ``skipped`` attribute; a lazily read frame raises an InputError
naming the file, which training skips and counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ..types import ViewSet
from ..scenes import Scene
from .options import ReadOptions
from .images import (
    find_image, image_size, is_image_file, pose_problem, read_depth, read_labels, read_matrix, read_rgb, require_dir,
    resize_labels, resize_rgb, share_intrinsics, write_depth, write_labels, write_matrix, write_rgb,
)

META_FILE = "renderssl_meta.json"
DEPTH_SCALE = 1000.0  # units per metre (millimetres)
MAX_PROBED = 16  # frames whose headers are tried for the scene's frame size


# ---- reading --------------------------------------------------------------------------------------
def read_scannet(root, every_k: int = 1, load_labels: bool = True, name: str | None = None) -> ViewSet:
    """Read one ScanNet-style scene folder into a :class:`ViewSet` (see the module docstring): every frame
    that can be read, the others skipped with a warning and listed in ``skipped``."""
    return open_scannet(root, ReadOptions(every_k=every_k, load_labels=load_labels), name).load()


def open_scannet(root, options: ReadOptions = ReadOptions(), name: str | None = None) -> "ScanNetScene":
    """The scene opened for reading frame by frame (poses and intrinsics read now, images when asked)."""
    if options.every_k < 1:
        raise InputError(f"read_scannet: every_k must be >= 1, got {options.every_k}")
    return ScanNetScene(root, options.every_k, options.load_labels, name)


def count_scannet(root, options: ReadOptions = ReadOptions()) -> int:
    """Frames of the scene, from the listing of ``color/``."""
    return len(list_frames(Path(root) / "color")[::options.every_k])


class ScanNetScene(Scene):
    """A ScanNet-style scene folder: poses, intrinsics and frame list read when opened; each frame's
    images decoded by :meth:`read_frame`. A frame whose pose is unusable raises there, naming the file."""

    def __init__(self, root, every_k: int = 1, load_labels: bool = True, name: str | None = None):
        self.root = require_dir(root, "ScanNet scene folder")
        require_dir(self.root / "color", "colour folder")
        require_dir(self.root / "pose", "pose folder")
        self.stems = list_frames(self.root / "color")[::every_k]
        self.name, self.frame_names = name if name is not None else self.root.name, list(self.stems)
        self.class_names = read_class_names(self.root)
        self.K_color, self.K_depth = read_intrinsics(self.root)
        self.depth_dir = self.root / "depth" if (self.root / "depth").is_dir() else None
        self.label_dirs = {k: self.root / k for k in ("label", "instance") if load_labels and (self.root / k).is_dir()}
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
                self.pose_problems[i] = f"{path} ({problem})"
                c2w = np.eye(4)
            poses.append(torch.from_numpy(c2w).float())
        self.c2w = torch.stack(poses)  # (V, 4, 4)
        self.width, self.height, K = self.frame_size()
        self.K = K.expand(len(self.stems), 3, 3).clone()  # (V, 3, 3)

    def frame_size(self) -> tuple[int, int, torch.Tensor]:
        """(W, H, K) of the frames, from the headers of the first frame whose files can be read: colour
        at the depth size with the depth intrinsics when the two differ (as :func:`read_frame` resamples)."""
        problems = []
        for stem in self.stems[:MAX_PROBED]:
            try:
                W, H = image_size(find_image(self.root / "color" / stem))
                depth = None if self.depth_dir is None else self.depth_dir / f"{stem}.png"
                Wd, Hd = image_size(depth) if depth is not None else (W, H)
            except InputError as err:
                problems.append(str(err))
                continue
            if (Wd, Hd) != (W, H) and self.K_depth is not None:
                return Wd, Hd, self.K_depth
            return W, H, self.K_color if self.K_color is not None else self.K_depth
        raise InputError(f"{self.root}: no readable frame among the first {len(problems)}: " + "; ".join(problems[:3]))

    def read_frame(self, i: int) -> dict:
        if i in self.pose_problems:
            raise InputError(self.pose_problems[i])
        stem = self.stems[i]
        out = read_frame(self.root, stem, self.c2w[i].numpy(), self.depth_dir, self.label_dirs, self.K_color, self.K_depth)
        if tuple(out["rgb"].shape[-2:]) != (self.height, self.width):
            raise InputError(
                f"frame {stem} has size {tuple(out['rgb'].shape[-2:])} but the scene's frames are "
                f"{(self.height, self.width)} (HxW); all frames of a scene must share one size"
            )
        frame = {"rgb": out["rgb"]}
        if out["depth"] is not None:
            frame["depth"] = out["depth"]
        for key, src in (("semantic", "label"), ("instance", "instance")):
            if src in out:
                frame[key] = out[src]
        return frame


def list_frames(color_dir: Path) -> list[str]:
    """Integer stems of the colour images, sorted numerically."""
    stems = {p.stem for p in color_dir.iterdir() if is_image_file(p) and p.stem.isdigit()}
    if not stems:
        raise InputError(f"{color_dir}: no colour frames (<integer>.jpg or .png) found")
    return sorted(stems, key=int)


def read_intrinsics(root: Path) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(K_color, K_depth), each (3, 3) or None when its file is absent; at least one must exist."""
    d = root / "intrinsic"
    files = [d / "intrinsic_color.txt", d / "intrinsic_depth.txt"]
    Ks = [torch.from_numpy(read_matrix(f, shapes=((4, 4), (3, 3)))[:3, :3]).float() if f.is_file() else None for f in files]
    if Ks[0] is None and Ks[1] is None:
        raise InputError(f"{files[0]}: intrinsics not found (nor {files[1].name})")
    return Ks[0], Ks[1]


def read_frame(root, stem, c2w, depth_dir, label_dirs, K_color, K_depth) -> dict:
    """One frame's tensors, with colour brought to the depth size when they differ."""
    color_path = find_image(root / "color" / stem)
    rgb = read_rgb(color_path)  # (3, Hc, Wc)
    Hc, Wc = rgb.shape[-2:]
    out = {"name": stem, "c2w": torch.from_numpy(c2w).float(), "depth": None}
    W, H, K = Wc, Hc, K_color if K_color is not None else K_depth
    if depth_dir is not None:
        depth_path = depth_dir / f"{stem}.png"
        out["depth"] = read_depth(depth_path, DEPTH_SCALE)  # (1, Hd, Wd)
        Hd, Wd = out["depth"].shape[-2:]
        if (Hd, Wd) != (Hc, Wc):
            if K_depth is None:
                raise InputError(
                    f"{color_path} is {Wc}x{Hc} but {depth_path} is {Wd}x{Hd} (WxH), and there is no "
                    f"{root / 'intrinsic' / 'intrinsic_depth.txt'} to resample colour to the depth camera"
                )
            W, H, K = Wd, Hd, K_depth
            rgb = resize_rgb(rgb, W, H)  # (3, Hd, Wd)
    out["rgb"], out["K"] = rgb, K.clone()
    for key, d in label_dirs.items():
        out[key] = read_label_map(d / f"{stem}.png", (Wc, Hc), (W, H), color_path)  # (H, W)
    return out


def read_label_map(path: Path, color_size, target_size, color_path) -> torch.Tensor:
    """Labels at the target size, or at colour size (then resampled by nearest)."""
    labels = read_labels(path)  # (h, w)
    size = (labels.shape[1], labels.shape[0])
    if size == tuple(target_size):
        return labels
    if size == tuple(color_size):
        return resize_labels(labels, *target_size)
    raise InputError(
        f"{path} is {size[0]}x{size[1]} but {color_path} is {color_size[0]}x{color_size[1]} (WxH) "
        f"and the frame is read at {target_size[0]}x{target_size[1]}"
    )


def read_class_names(root: Path) -> list[str]:
    path = root / META_FILE
    if not path.is_file():
        return []
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise InputError(f"{path}: cannot read JSON ({e})") from None
    names = meta.get("class_names", []) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{path}: 'class_names' must be a list of strings")
    return names


# ---- writing --------------------------------------------------------------------------------------
def write_scannet(viewset: ViewSet, root, color_format: str = "png", jpg_quality: int = 95) -> Path:
    """Write ``viewset`` as a ScanNet-style scene folder; frames are named 0..V-1. Returns ``root``.

    ``color_format`` is "png" (lossless, default) or "jpg". All views must share one K, written to both
    intrinsic files (colour and depth have the same size here).
    """
    if color_format not in ("png", "jpg"):
        raise InputError(f"write_scannet: color_format must be 'png' or 'jpg', got {color_format!r}")
    root = Path(root)
    K4 = torch.eye(4)
    K4[:3, :3] = share_intrinsics(viewset.K, "ScanNet")
    write_matrix(root / "intrinsic" / "intrinsic_color.txt", K4)
    write_matrix(root / "intrinsic" / "intrinsic_depth.txt", K4)
    for i in range(len(viewset)):
        write_rgb(root / "color" / f"{i}.{color_format}", viewset.rgb[i], jpg_quality=jpg_quality)
        write_matrix(root / "pose" / f"{i}.txt", viewset.c2w[i])
        if viewset.depth is not None:
            write_depth(root / "depth" / f"{i}.png", viewset.depth[i], DEPTH_SCALE)
        if viewset.semantic is not None:
            write_labels(root / "label" / f"{i}.png", viewset.semantic[i])
        if viewset.instance is not None:
            write_labels(root / "instance" / f"{i}.png", viewset.instance[i])
    if viewset.class_names:
        (root / META_FILE).write_text(json.dumps({"class_names": list(viewset.class_names)}, indent=2))
    return root
