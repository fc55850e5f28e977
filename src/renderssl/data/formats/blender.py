"""Blender / NeRF-synthetic / nerfstudio ``transforms.json`` scenes.

On disk::

    <root>/transforms.json   (or transforms_<split>.json, or any .json path given directly)
    {
      "camera_angle_x": 0.69,                          horizontal field of view, radians
      "camera_angle_y": ...,                           optional vertical field of view
      "fl_x", "fl_y", "cx", "cy", "w", "h": ...,       optional nerfstudio intrinsics (pixels)
      "depth_unit_scale_factor": 0.001,                optional, metres per raw depth unit
      "frames": [
        {"file_path": "./train/r_0"   (extension optional; relative to the json's folder),
         "transform_matrix": 4x4 OpenGL camera-to-world,
         "depth_file_path": "depth/r_0.png"          (optional, uint16 z-depth, 0 = invalid),
         "fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x": ...   (optional per-frame overrides)},
        ...]
    }

Conventions:
- ``transform_matrix`` is OpenGL (x right, y up, z back) camera-to-world -> OpenCV by negating the
  y and z camera axes (``opengl_to_opencv``).
- Intrinsics: per-frame keys override global ones. ``fl_x`` wins over ``camera_angle_x``, whose focal
  is 0.5 W / tan(0.5 camera_angle_x); ``fl_y`` defaults to ``camera_angle_y``'s focal, else fx.
  ``cx``/``cy`` default to W/2, H/2 (nerfstudio's convention: pixel centres at half-integers, as ours).
  ``w``/``h``, when given, must match the image file.
- RGBA images are composited over ``background`` (default white, as NeRF-synthetic is evaluated);
  ``background=None`` returns the stored RGB channels untouched.
- Depth PNG raw values x ``depth_unit_scale_factor`` (default 0.001: millimetres) -> metres.
  Distortion coefficients (k1.., p1..) are not applied; non-zero ones trigger a warning.

Frames with non-finite or non-invertible poses are skipped with a warning and listed in ``skipped``.
The writer stores RGBA PNGs whose alpha = (depth > 0) when depth is present (else opaque), uint16 mm
depth PNGs, and transforms.json with camera_angle_x plus global (or per-frame) fl_x/fl_y/cx/cy/w/h.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ...geometry import focal_from_fov, intrinsics_matrix, opencv_to_opengl, opengl_to_opencv
from ..types import ViewSet
from .images import (
    SkipLog, attach_skipped, check_same_size, composite_background, find_image, no_valid_frames, pose_problem,
    read_depth, read_rgba, require_file, stack_or_none, write_depth, write_rgb,
)

WHITE = (1.0, 1.0, 1.0)
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
DEFAULT_DEPTH_UNIT = 0.001  # metres per raw unit (millimetres)


# ---- reading --------------------------------------------------------------------------------------
def read_blender(path, split: str | None = None, background=WHITE, every_k: int = 1, name: str | None = None) -> ViewSet:
    """Read a transforms.json scene. ``path`` is the json file or its folder (then
    ``transforms_<split>.json`` if ``split`` is given, else ``transforms.json``)."""
    json_path = resolve_json(path, split)
    meta = load_json(json_path)
    frames = meta["frames"][::every_k]
    base = json_path.parent
    unit = float(meta.get("depth_unit_scale_factor", DEFAULT_DEPTH_UNIT))
    warn_distortion(json_path, meta)
    log = SkipLog(json_path)
    views = []
    for i, frame in enumerate(frames):
        c2w_gl = frame_pose(json_path, i, frame)  # (4, 4) OpenGL
        problem = pose_problem(c2w_gl)
        if problem:
            log.skip(f"{json_path} frame {i} ({frame.get('file_path', '?')})", problem)
            continue
        views.append(read_frame(json_path, base, frame, meta, c2w_gl, background, unit))
    skipped = log.report()
    if not views:
        raise no_valid_frames(json_path, skipped)
    first = views[0]
    for v in views[1:]:
        if v["rgb"].shape != first["rgb"].shape:
            raise InputError(f"{v['path']} is {tuple(v['rgb'].shape[-2:])} but {first['path']} is {tuple(first['rgb'].shape[-2:])} (HxW); all frames must share one size")
    vs = ViewSet(
        rgb=torch.stack([v["rgb"] for v in views]),  # (V, 3, H, W)
        K=torch.stack([v["K"] for v in views]),  # (V, 3, 3)
        c2w=torch.stack([v["c2w"] for v in views]),  # (V, 4, 4) OpenCV
        depth=stack_or_none([v["depth"] for v in views]),  # (V, 1, H, W)
        name=name if name is not None else base.name,
        frame_names=[v["path"].stem for v in views],
    )
    return attach_skipped(vs, skipped)


def resolve_json(path, split: str | None) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / (f"transforms_{split}.json" if split else "transforms.json")
    return require_file(path, "transforms json")


def load_json(json_path: Path) -> dict:
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise InputError(f"{json_path}: cannot read JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise InputError(f"{json_path}: expected an object with a 'frames' list")
    return meta


def warn_distortion(json_path: Path, meta: dict) -> None:
    coeffs = {k: meta[k] for k in DISTORTION_KEYS if meta.get(k)}
    if coeffs:
        warnings.warn(f"{json_path}: lens distortion {coeffs} is ignored (pinhole model)", stacklevel=3)


def frame_pose(json_path: Path, i: int, frame) -> np.ndarray:
    try:
        m = np.array(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{json_path}: frame {i} has no valid 'transform_matrix' ({e})") from None
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]])
    if m.shape != (4, 4):
        raise InputError(f"{json_path}: frame {i} transform_matrix has shape {m.shape}, expected 4x4")
    return m


def read_frame(json_path, base, frame, meta, c2w_gl, background, unit) -> dict:
    if "file_path" not in frame:
        raise InputError(f"{json_path}: a frame has no 'file_path'")
    img_path = find_image(base / frame["file_path"])
    rgb = composite_background(read_rgba(img_path), background)  # (3, H, W)
    H, W = rgb.shape[-2:]
    K = frame_intrinsics(json_path, merge_intrinsics(meta, frame), img_path, W, H)  # (3, 3)
    depth = None
    if frame.get("depth_file_path"):
        depth_path = base / frame["depth_file_path"]
        depth = read_depth(depth_path, scale=1.0 / unit)  # (1, H, W) metres
        check_same_size(img_path, (W, H), depth_path, depth.shape[:0:-1])
    c2w = opengl_to_opencv(torch.from_numpy(c2w_gl).float())  # (4, 4) OpenCV
    return {"rgb": rgb, "K": K, "c2w": c2w, "depth": depth, "path": img_path}


def merge_intrinsics(meta: dict, frame: dict) -> dict:
    """Global intrinsic keys overridden by the frame's; a frame's focal (fl_* or camera_angle_*)
    replaces every global focal key so that a global fl_x cannot beat a per-frame camera_angle_x."""
    cam = {k: meta[k] for k in INTRINSIC_KEYS if k in meta}
    focal = ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y")
    if any(k in frame for k in focal):
        cam = {k: v for k, v in cam.items() if k not in focal}
    cam.update({k: frame[k] for k in INTRINSIC_KEYS if k in frame})
    return cam


def frame_intrinsics(json_path, cam: dict, img_path, W: int, H: int) -> torch.Tensor:
    """(3, 3) K from merged global + per-frame keys (see the module docstring)."""
    for key, size in (("w", W), ("h", H)):
        if key in cam and int(cam[key]) != size:
            raise InputError(f"{json_path}: '{key}' = {cam[key]} but {img_path} is {W}x{H} (WxH)")
    if "fl_x" in cam:
        fx = float(cam["fl_x"])
    elif "camera_angle_x" in cam:
        fx = focal_from_fov(float(cam["camera_angle_x"]), W)
    else:
        raise InputError(f"{json_path}: no focal length ('fl_x' or 'camera_angle_x') for {img_path}")
    if "fl_y" in cam:
        fy = float(cam["fl_y"])
    elif "camera_angle_y" in cam and "fl_x" not in cam:
        fy = focal_from_fov(float(cam["camera_angle_y"]), H)
    else:
        fy = fx
    cx, cy = float(cam.get("cx", W / 2)), float(cam.get("cy", H / 2))
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise InputError(f"{json_path}: invalid intrinsics fx={fx} fy={fy} cx={cx} cy={cy} for {img_path}")
    return intrinsics_matrix(fx, fy, cx, cy)


# ---- writing --------------------------------------------------------------------------------------
def write_blender(viewset: ViewSet, root, json_name: str = "transforms.json") -> Path:
    """Write ``viewset`` as images/<i>.png (RGBA), depth/<i>.png and ``root/json_name``. Returns the json path."""
    root = Path(root)
    V, H, W = len(viewset), viewset.height, viewset.width
    K = viewset.K.double()
    shared = bool(torch.allclose(K, K[:1].expand_as(K), atol=1e-9, rtol=0))
    meta = {"camera_angle_x": 2.0 * math.atan(0.5 * W / float(K[0, 0, 0])), "w": W, "h": H}
    if shared:
        meta.update(intrinsics_json(K[0]))
    if viewset.depth is not None:
        meta["depth_unit_scale_factor"] = DEFAULT_DEPTH_UNIT
    frames = []
    for i in range(V):
        image_rel = f"images/{i:06d}.png"
        alpha = None if viewset.depth is None else (viewset.depth[i] > 0).float()  # (1, H, W)
        write_rgb(root / image_rel, viewset.rgb[i], alpha=alpha)
        c2w_gl = opencv_to_opengl(viewset.c2w[i].double())  # (4, 4) OpenGL
        frame = {"file_path": image_rel, "transform_matrix": c2w_gl.tolist()}
        if not shared:
            frame.update(intrinsics_json(K[i]))
            frame["camera_angle_x"] = 2.0 * math.atan(0.5 * W / float(K[i, 0, 0]))
        if viewset.depth is not None:
            frame["depth_file_path"] = f"depth/{i:06d}.png"
            write_depth(root / frame["depth_file_path"], viewset.depth[i], 1.0 / DEFAULT_DEPTH_UNIT)
        frames.append(frame)
    meta["frames"] = frames
    root.mkdir(parents=True, exist_ok=True)
    json_path = root / json_name
    json_path.write_text(json.dumps(meta, indent=2))
    return json_path


def intrinsics_json(K: torch.Tensor) -> dict:
    return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}
