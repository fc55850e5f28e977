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

Frames whose pose is non-finite (ScanNet marks failed tracking with ``-inf``) or non-invertible are
skipped with a warning; the result's ``skipped`` attribute lists them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...errors import InputError
from ..types import ViewSet
from .images import (
    SkipLog, attach_skipped, find_image, is_image_file, no_valid_frames, pose_problem, read_depth,
    read_labels, read_matrix, read_rgb, require_dir, resize_labels, resize_rgb, share_intrinsics, stack_or_none,
    write_depth, write_labels, write_matrix, write_rgb,
)

META_FILE = "renderssl_meta.json"
DEPTH_SCALE = 1000.0  # units per metre (millimetres)


# ---- reading --------------------------------------------------------------------------------------
def read_scannet(root, every_k: int = 1, load_labels: bool = True, name: str | None = None) -> ViewSet:
    """Read one ScanNet-style scene folder into a :class:`ViewSet` (see the module docstring)."""
    root = require_dir(root, "ScanNet scene folder")
    if every_k < 1:
        raise InputError(f"read_scannet: every_k must be >= 1, got {every_k}")
    color_dir = require_dir(root / "color", "colour folder")
    pose_dir = require_dir(root / "pose", "pose folder")
    depth_dir = root / "depth" if (root / "depth").is_dir() else None
    label_dirs = {k: root / k for k in ("label", "instance") if load_labels and (root / k).is_dir()}

    frames = list_frames(color_dir)[::every_k]
    K_color, K_depth = read_intrinsics(root)
    log = SkipLog(root)
    views = []
    for stem in frames:
        c2w = read_matrix(pose_dir / f"{stem}.txt")  # (4, 4)
        problem = pose_problem(c2w)
        if problem:
            log.skip(str(pose_dir / f"{stem}.txt"), problem)
            continue
        views.append(read_frame(root, stem, c2w, depth_dir, label_dirs, K_color, K_depth))
    skipped = log.report()
    if not views:
        raise no_valid_frames(root, skipped)
    check_consistent_sizes(views)
    vs = ViewSet(
        rgb=torch.stack([v["rgb"] for v in views]),  # (V, 3, H, W)
        K=torch.stack([v["K"] for v in views]),  # (V, 3, 3)
        c2w=torch.stack([v["c2w"] for v in views]),  # (V, 4, 4)
        depth=stack_or_none([v["depth"] for v in views]),  # (V, 1, H, W)
        semantic=stack_or_none([v.get("label") for v in views]),  # (V, H, W)
        instance=stack_or_none([v.get("instance") for v in views]),  # (V, H, W)
        name=name if name is not None else root.name,
        frame_names=[v["name"] for v in views],
        class_names=read_class_names(root),
    )
    return attach_skipped(vs, skipped)


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


def check_consistent_sizes(views: list[dict]) -> None:
    first = views[0]
    for v in views[1:]:
        if v["rgb"].shape != first["rgb"].shape:
            raise InputError(
                f"frame {v['name']} has size {tuple(v['rgb'].shape[-2:])} but frame {first['name']} has "
                f"{tuple(first['rgb'].shape[-2:])} (HxW); all frames of a scene must share one size"
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
