"""Microsoft 7-Scenes sequences.

On disk, for one sequence::

    <seq>/frame-NNNNNN.color.png | .color.jpg   8-bit colour
    <seq>/frame-NNNNNN.depth.png                uint16 millimetres; 65535 (and 0) = invalid  (optional)
    <seq>/frame-NNNNNN.pose.txt                 4x4 camera-to-world, OpenCV axes
    <seq>/camera-intrinsics.txt                 (optional, ours) 3x3 K, or "fx fy cx cy"; also looked
                                                for in the parent (scene) folder

Conventions: poses are OpenCV c2w (no change). Depth mm -> metres, 65535 -> 0 (invalid). Real
7-Scenes ships no intrinsics file: its documented Kinect calibration is used then, fx = fy = 585,
cx = 320, cy = 240 for 640x480 images (principal point at the image centre, which is our
half-integer pixel-centre convention). Other image sizes without an intrinsics file are an error.
Note that the real dataset's depth is not registered to its colour camera; the reader does not
correct for that.

Colour and depth of different sizes are an error naming both files. Frames with non-finite or
non-invertible poses are skipped with a warning and listed in the result's ``skipped`` attribute.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ...errors import InputError
from ...geometry import intrinsics_matrix
from ..types import ViewSet
from .images import (
    SkipLog, attach_skipped, check_same_size, find_image, no_valid_frames, pose_problem, read_depth, read_matrix,
    read_rgb, require_dir, share_intrinsics, stack_or_none, write_depth, write_matrix, write_rgb,
)

INTRINSICS_FILE = "camera-intrinsics.txt"
DEFAULT_SIZE = (640, 480)  # (W, H) of real 7-Scenes frames
DEFAULT_FX_FY_CX_CY = (585.0, 585.0, 320.0, 240.0)
DEPTH_SCALE = 1000.0
INVALID_DEPTH = 65535
_FRAME = re.compile(r"^(frame-\d+)\.color\.(png|jpg|jpeg)$", re.IGNORECASE)


# ---- reading --------------------------------------------------------------------------------------
def read_sevenscenes(root, every_k: int = 1, name: str | None = None) -> ViewSet:
    """Read one 7-Scenes sequence folder (``seq-XX``) into a :class:`ViewSet`."""
    root = require_dir(root, "7-Scenes sequence folder")
    if every_k < 1:
        raise InputError(f"read_sevenscenes: every_k must be >= 1, got {every_k}")
    frames = list_frames(root)[::every_k]
    log = SkipLog(root)
    rgbs, depths, c2ws, names = [], [], [], []
    for stem in frames:
        pose_path = root / f"{stem}.pose.txt"
        c2w = read_matrix(pose_path)  # (4, 4)
        problem = pose_problem(c2w)
        if problem:
            log.skip(str(pose_path), problem)
            continue
        rgb, depth = read_frame_images(root, stem)
        if rgbs and rgb.shape != rgbs[0].shape:
            raise InputError(f"{root}: frame {stem} is {tuple(rgb.shape[-2:])} but {names[0]} is {tuple(rgbs[0].shape[-2:])} (HxW)")
        rgbs.append(rgb)
        depths.append(depth)
        c2ws.append(torch.from_numpy(c2w).float())
        names.append(stem)
    skipped = log.report()
    if not rgbs:
        raise no_valid_frames(root, skipped)
    H, W = rgbs[0].shape[-2:]
    K = read_intrinsics(root, W, H)  # (3, 3)
    vs = ViewSet(
        rgb=torch.stack(rgbs),  # (V, 3, H, W)
        K=K.expand(len(rgbs), 3, 3).clone(),  # (V, 3, 3)
        c2w=torch.stack(c2ws),  # (V, 4, 4)
        depth=stack_or_none(depths),  # (V, 1, H, W)
        name=name if name is not None else root.name,
        frame_names=names,
    )
    return attach_skipped(vs, skipped)


def list_frames(root: Path) -> list[str]:
    """``frame-NNNNNN`` stems that have a colour image, sorted by number."""
    stems = {m.group(1) for p in root.iterdir() if (m := _FRAME.match(p.name))}
    if not stems:
        raise InputError(f"{root}: no frames (frame-NNNNNN.color.png or .jpg) found")
    return sorted(stems, key=lambda s: int(s.split("-")[1]))


def read_frame_images(root: Path, stem: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rgb (3, H, W), depth (1, H, W) or None when the frame has no depth file)."""
    color_path = find_image(root / f"{stem}.color")
    rgb = read_rgb(color_path)
    depth_path = root / f"{stem}.depth.png"
    if not depth_path.exists():
        return rgb, None
    depth = read_depth(depth_path, DEPTH_SCALE, invalid=INVALID_DEPTH)
    check_same_size(color_path, rgb.shape[:0:-1], depth_path, depth.shape[:0:-1])
    return rgb, depth


def read_intrinsics(root: Path, width: int, height: int) -> torch.Tensor:
    """(3, 3) K from camera-intrinsics.txt (sequence or scene folder), else the 7-Scenes default."""
    for path in (root / INTRINSICS_FILE, root.parent / INTRINSICS_FILE):
        if path.is_file():
            m = read_matrix(path, shapes=((3, 3), (4,)))
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
