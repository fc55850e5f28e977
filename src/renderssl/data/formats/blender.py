"""Blender / NeRF-synthetic / instant-ngp / nerfstudio ``transforms.json`` scenes, read frame by frame.

On disk, the two public layouts this reads as published:

NeRF synthetic (``nerf_synthetic/<scene>``)::

    <scene>/transforms_train.json, transforms_val.json, transforms_test.json     (no transforms.json)
    <scene>/train/r_<i>.png, val/r_<i>.png, test/r_<i>.png   RGBA PNG (800x800), alpha = object coverage
    <scene>/test/r_<i>_depth_0000.png, r_<i>_normal_0000.png not referenced by the json: not read
    {"camera_angle_x": 0.69,                                 horizontal field of view, radians
     "frames": [{"file_path": "./train/r_0",                 no extension; relative to the json's folder
                 "rotation": 0.012,                          unused
                 "transform_matrix": 4x4 OpenGL camera-to-world}, ...]}

instant-ngp / nerfstudio::

    <scene>/transforms.json
    {
      "camera_angle_x", "camera_angle_y": ...,       optional fields of view, radians
      "fl_x", "fl_y", "cx", "cy", "w", "h": ...,     intrinsics in pixels
      "k1", "k2", "k3", "p1", "p2": ...,             OpenCV radial-tangential distortion (applied)
      "k4", "camera_model", "is_fisheye": ...,       other camera models (refused, see below)
      "aabb_scale", "scale", "offset", ...           NeRF scene-box hints: not used
      "depth_unit_scale_factor": 0.001,              optional, metres per raw depth unit
      "frames": [
        {"file_path": "./images/0001.jpg"            (extension optional; relative to the json's folder),
         "transform_matrix": 4x4 (or 3x4) OpenGL camera-to-world,
         "depth_file_path": "depth/0001.png"         (optional, uint16 z-depth, 0 = invalid),
         any intrinsic or distortion key above       (per-frame values override the global ones)},
        ...]
    }

Which json(s) a scene is: ``path`` may be a ``.json`` file (read as it is) or a scene folder. In a folder,
``options.split`` (``data.blender_split``) reads ``transforms_<split>.json``; ``split=None`` reads
``transforms.json`` when present, else every ``transforms_<split>.json`` of the folder, in the order
train, val, test, then any other split by name, as one scene whose frame names are prefixed by their
split (``train/r_0``, ``val/r_0``: NeRF synthetic reuses ``r_0`` in every split). Otherwise a frame is
named by its image's stem. ``every_k`` keeps every k-th frame of each json.

Conventions:
- ``transform_matrix`` is OpenGL (x right, y up, z back) camera-to-world -> OpenCV by negating the
  y and z camera axes (``opengl_to_opencv``).
- Intrinsics: per-frame keys override global ones. ``fl_x`` wins over ``camera_angle_x``, whose focal
  is 0.5 W / tan(0.5 camera_angle_x); ``fl_y`` defaults to ``camera_angle_y``'s focal, else fx.
  ``cx``/``cy`` default to W/2, H/2 (nerfstudio's and instant-ngp's convention: pixel centres at
  half-integers, as ours).
- Size: a scene's frames share one size, W x H: the first usable frame's ``w``, ``h`` when it declares
  both, else the header of the first image that can be opened (only that header is read when the scene
  is opened). A frame whose image has another size, or differs from its own ``w``/``h``, is skipped.
- Colour: float32 (3, H, W) in [0, 1]. RGBA images are composited over ``options.background``
  (``data.background``; default white, as NeRF synthetic is evaluated); ``background=None`` returns
  the stored RGB channels untouched; images without alpha are opaque.
- Depth PNG raw values x ``depth_unit_scale_factor`` (global or per frame; default 0.001: millimetres) -> metres,
  (1, H, W) float32, 0 = invalid.
- Distortion: the OpenCV radial-tangential model with k1, k2, k3, p1, p2 on normalised coordinates
  (x, y) = ((u - cx) / fx, (v - cy) / fy), r^2 = x^2 + y^2::

      x_d = x (1 + k1 r^2 + k2 r^4 + k3 r^6) + 2 p1 x y + p2 (r^2 + 2 x^2)
      y_d = y (1 + k1 r^2 + k2 r^4 + k3 r^6) + p1 (r^2 + 2 y^2) + 2 p2 x y

  A frame with non-zero coefficients is undistorted when it is read, into a pinhole image of the same
  size and the same K: each output pixel centre is mapped through the model and the stored image is
  sampled there, colour bilinearly (the stored pixel at the image border is repeated up to the edge),
  depth by nearest (the stored pixel containing the position); output pixels that map outside the
  stored image are 0 (black colour, invalid depth). The maps are computed once per distinct camera.
- Refused, naming the key and the json (and the frame when it is a frame's key), when the scene is
  opened or counted: non-zero ``k4`` (and ``k5``, ``k6``: fisheye / rational models), ``is_fisheye``
  true, ``camera_model`` other than OPENCV, PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL or
  PERSPECTIVE (e.g. OPENCV_FISHEYE, EQUIRECTANGULAR): such images cannot be read as pinhole images
  without their model, and reading them as pinhole would silently mis-project every pixel.

Lazy reading: :func:`open_blender` parses the json(s) and computes every frame's K and c2w; the images
of a frame are decoded by :meth:`BlenderScene.read_frame`. :func:`count_blender` counts frames from the
json(s) alone (no image is opened). :func:`read_blender` is ``open_blender(...).load()``.

Bad frames (one policy): a frame with a missing, non-finite or singular ``transform_matrix``, unusable
intrinsics or distortion values, a missing, unreadable or truncated image, a missing or unreadable
depth file, no ``depth_file_path`` while other frames of the scene have one (so one frame cannot
silently drop the scene's depth), or a size that differs from the scene's, raises an
:class:`InputError` naming the file from ``read_frame`` (training skips and counts such samples);
``load()`` skips such frames, names them in ``skipped`` and warns once. The whole scene fails only
when its json cannot be read, it uses a refused camera model, or no frame can be read.

The writer stores RGBA PNGs whose alpha = (depth > 0) when depth is present (else opaque), uint16 mm
depth PNGs, and transforms.json with camera_angle_x plus global (or per-frame) fl_x/fl_y/cx/cy/w/h.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError
from ...geometry import focal_from_fov, intrinsics_matrix, opencv_to_opengl, opengl_to_opencv
from ..scenes import Scene
from ..types import ViewSet
from .images import (
    check_same_size, composite_background, find_image, image_size, pose_problem, read_depth, read_rgba,
    require_dir, require_file, write_depth, write_rgb,
)
from .options import ReadOptions

WHITE = (1.0, 1.0, 1.0)
SPLITS = ("train", "val", "test")  # the order of the splits read together
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
DISTORTION_KEYS = ("k1", "k2", "k3", "p1", "p2")  # applied (OpenCV radial-tangential)
REFUSED_KEYS = ("k4", "k5", "k6")  # fisheye / rational-model coefficients: refused when non-zero
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "PERSPECTIVE")
DEFAULT_DEPTH_UNIT = 0.001  # metres per raw unit (millimetres)
MAX_PROBED = 16  # frames whose image headers are tried for the scene's frame size
MAX_MAPS = 8  # undistortion maps kept per scene


# ---- reading --------------------------------------------------------------------------------------
def read_blender(path, split: str | None = None, background=WHITE, every_k: int = 1, name: str | None = None) -> ViewSet:
    """Read a transforms.json scene whole (see the module docstring): every frame that can be read, the
    others skipped with a warning and listed in ``skipped``. ``path`` is a json file or a scene folder."""
    return open_blender(path, ReadOptions(every_k=every_k, background=background, split=split), name).load()


def open_blender(path, options: ReadOptions = ReadOptions(), name: str | None = None) -> "BlenderScene":
    """The scene opened for reading frame by frame (json(s) parsed now, images decoded when asked)."""
    return BlenderScene(path, options, name)


def count_blender(path, options: ReadOptions = ReadOptions()) -> int:
    """Frames of the scene, from its json(s) alone (refused camera models raise here already)."""
    check_every_k(options.every_k)
    return sum(len(frames) for _, json_path, meta, frames in parse_jsons(path, options))


@dataclass
class FrameSpec:
    """One frame as its json describes it (nothing decoded)."""

    json_path: Path
    index: int  # position in the json's "frames"
    name: str
    file_path: str | None = None
    depth_path: str | None = None
    unit: float = DEFAULT_DEPTH_UNIT
    cam: dict | None = None  # merged intrinsic keys
    distortion: tuple[float, ...] | None = None  # (k1, k2, k3, p1, p2) when any is non-zero
    c2w: Tensor | None = None  # (4, 4) OpenCV
    problem: str | None = None  # why the frame cannot be used

    @property
    def label(self) -> str:
        return f"{self.json_path} frame {self.index} ({self.file_path or '?'})"


class BlenderScene(Scene):
    """A transforms.json scene: json(s) parsed, K and c2w computed when opened; each frame's image (and
    depth) decoded, composited and undistorted by :meth:`read_frame`."""

    def __init__(self, path, options: ReadOptions = ReadOptions(), name: str | None = None):
        check_every_k(options.every_k)
        self.background = options.background
        parsed = parse_jsons(path, options)
        self.json_paths = [json_path for _, json_path, _, _ in parsed]
        self.root = self.json_paths[0].parent
        self.name = name if name is not None else self.root.name
        self.class_names: list[str] = []
        self.specs: list[FrameSpec] = []
        for prefix, json_path, meta, frames in parsed:
            self.specs += [frame_spec(json_path, meta, j, frame, prefix) for j, frame in frames]
        if not self.specs:
            raise InputError(f"{self.where}: no frames listed")
        self.frame_names = [s.name for s in self.specs]
        self.has_depth = any(s.depth_path for s in self.specs)
        self.width, self.height = self.frame_size()
        Ks = []
        for s in self.specs:
            K = torch.eye(3)
            if s.problem is None:
                try:
                    K = frame_intrinsics(s, self.width, self.height)  # (3, 3)
                except InputError as err:
                    s.problem = str(err)
            Ks.append(K)
        self.K = torch.stack(Ks)  # (V, 3, 3)
        self.c2w = torch.stack([s.c2w if s.c2w is not None else torch.eye(4) for s in self.specs])  # (V, 4, 4)
        self.maps: dict = {}

    @property
    def where(self) -> str:
        return str(self.json_paths[0]) if len(self.json_paths) == 1 else str(self.root)

    def frame_size(self) -> tuple[int, int]:
        """(W, H) of the scene's frames: declared by the first usable frame, else its image's header."""
        usable = [s for s in self.specs if s.problem is None]
        for s in usable[:1]:
            if "w" in s.cam and "h" in s.cam:
                try:
                    return int(s.cam["w"]), int(s.cam["h"])
                except (TypeError, ValueError):
                    raise InputError(f"{s.json_path}: 'w' and 'h' must be integers, got {s.cam['w']!r}, {s.cam['h']!r}") from None
        problems = []
        for s in usable[:MAX_PROBED]:
            try:
                return image_size(find_image(s.json_path.parent / s.file_path))
            except InputError as err:
                problems.append(str(err))
        if not usable:  # every frame is unusable anyway: load() names them all
            return 1, 1
        raise InputError(f"{self.where}: no readable image among the first {len(problems)} frames: " + "; ".join(problems[:3]))

    def read_frame(self, i: int) -> dict:
        s = self.specs[i]
        if s.problem is not None:
            raise InputError(s.problem)
        img_path = find_image(s.json_path.parent / s.file_path)
        rgba = read_rgba(img_path)  # (4, H, W)
        H, W = rgba.shape[-2:]
        for key, size in (("w", W), ("h", H)):
            if key in s.cam and int(s.cam[key]) != size:
                raise InputError(f"{s.json_path}: '{key}' = {s.cam[key]} but {img_path} is {W}x{H} (WxH)")
        if (W, H) != (self.width, self.height):
            raise InputError(f"{img_path} is {W}x{H} but the scene's frames are {self.width}x{self.height} (WxH); "
                             "all frames of a scene must share one size")
        frame = {"rgb": composite_background(rgba, self.background)}  # (3, H, W)
        if s.depth_path:
            depth_path = s.json_path.parent / s.depth_path
            depth = read_depth(depth_path, scale=1.0 / s.unit)  # (1, H, W) metres
            check_same_size(img_path, (W, H), depth_path, (depth.shape[-1], depth.shape[-2]))
            frame["depth"] = depth
        elif self.has_depth:
            raise InputError(f"{s.label}: no 'depth_file_path', but other frames of the scene have depth")
        if s.distortion is not None:
            pos = self.distortion_map(i)  # (H, W, 2)
            frame["rgb"] = sample_bilinear(frame["rgb"], pos)
            if "depth" in frame:
                frame["depth"] = sample_nearest(frame["depth"], pos)
        return frame

    def distortion_map(self, i: int) -> Tensor:
        """(H, W, 2) stored-image positions (u, v) of the undistorted pixel centres of frame ``i``."""
        K = self.K[i]
        key = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), self.specs[i].distortion)
        if key not in self.maps:
            if len(self.maps) >= MAX_MAPS:
                self.maps.pop(next(iter(self.maps)))
            self.maps[key] = distorted_positions(*key[:4], key[4], self.width, self.height)
        return self.maps[key]


def check_every_k(every_k: int) -> None:
    if every_k < 1:
        raise InputError(f"read_blender: every_k must be >= 1, got {every_k}")


def parse_jsons(path, options: ReadOptions) -> list[tuple[str | None, Path, dict, list]]:
    """[(frame-name prefix, json path, meta, [(index, frame) kept by every_k])] of the scene."""
    out = []
    for prefix, json_path in scene_jsons(path, options.split):
        meta = load_json(json_path)
        check_camera_model(json_path, meta, "")
        frames = list(enumerate(meta["frames"]))[:: options.every_k]
        for j, frame in frames:
            if isinstance(frame, dict):
                check_camera_model(json_path, frame, f" frame {j}")
        out.append((prefix, json_path, meta, frames))
    return out


def scene_jsons(path, split: str | None) -> list[tuple[str | None, Path]]:
    """[(frame-name prefix or None, json path)] that make the scene (see the module docstring)."""
    path = Path(path)
    if path.suffix.lower() == ".json" and not path.is_dir():
        return [(None, require_file(path, "transforms json"))]
    require_dir(path, "Blender scene folder")
    if split:
        return [(None, require_file(path / f"transforms_{split}.json", f"transforms json of split {split!r}"))]
    if (path / "transforms.json").is_file():
        return [(None, path / "transforms.json")]
    found = {p.stem[len("transforms_"):]: p for p in path.glob("transforms_*.json") if p.is_file()}
    order = [s for s in SPLITS if s in found] + sorted(s for s in found if s not in SPLITS)
    if not order:
        raise InputError(f"{path}: no transforms.json nor transforms_<split>.json (train, val, test) found")
    return [(s, found[s]) for s in order]


def load_json(json_path: Path) -> dict:
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise InputError(f"{json_path}: cannot read JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise InputError(f"{json_path}: expected an object with a 'frames' list")
    return meta


def check_camera_model(json_path: Path, obj: dict, where: str) -> None:
    """Refuse (an InputError naming the key) camera models that are not pinhole + radial-tangential."""
    supported = "only pinhole images with OpenCV radial-tangential distortion (k1, k2, k3, p1, p2) are read"
    model = obj.get("camera_model")
    if model is not None and str(model).upper() not in PINHOLE_MODELS:
        raise InputError(f"{json_path}{where}: 'camera_model' = {model!r} is not supported ({supported}; "
                         f"camera models read: {', '.join(PINHOLE_MODELS)}); undistort the images to pinhole first")
    if obj.get("is_fisheye"):
        raise InputError(f"{json_path}{where}: 'is_fisheye' = {obj['is_fisheye']!r}: fisheye images are not supported ({supported})")
    for key in REFUSED_KEYS:
        if key in obj:
            value = obj[key]
            try:
                nonzero = float(value) != 0.0
            except (TypeError, ValueError):
                raise InputError(f"{json_path}{where}: '{key}' = {value!r} is not a number") from None
            if nonzero:
                raise InputError(f"{json_path}{where}: '{key}' = {value!r} (a fisheye / rational distortion "
                                 f"coefficient) is not applied; {supported}")


def frame_spec(json_path: Path, meta: dict, j: int, frame, prefix: str | None) -> FrameSpec:
    """The frame ``j`` of ``json_path`` as a :class:`FrameSpec`; what makes it unusable goes in ``problem``."""
    spec = FrameSpec(json_path, j, name=f"{prefix}/{j}" if prefix else str(j))
    if not isinstance(frame, dict):
        spec.problem = f"{spec.label}: expected an object, got {type(frame).__name__}"
        return spec
    file_path = frame.get("file_path")
    if isinstance(file_path, str) and file_path:
        spec.file_path = file_path
        stem = Path(file_path).stem if Path(file_path).suffix.lower() in (".png", ".jpg", ".jpeg") else Path(file_path).name
        spec.name = f"{prefix}/{stem}" if prefix else stem
    depth_path = frame.get("depth_file_path")
    spec.depth_path = depth_path if isinstance(depth_path, str) and depth_path else None
    spec.cam = merge_intrinsics(meta, frame)
    try:
        if spec.file_path is None:
            raise InputError(f"{spec.label}: no 'file_path'")
        unit = float(frame.get("depth_unit_scale_factor", meta.get("depth_unit_scale_factor", DEFAULT_DEPTH_UNIT)))
        if not (math.isfinite(unit) and unit > 0):
            raise InputError(f"{spec.label}: 'depth_unit_scale_factor' = {unit} must be a positive number")
        spec.unit = unit
        spec.distortion = frame_distortion(spec, meta, frame)
        c2w_gl = frame_pose(spec, frame)  # (4, 4) OpenGL
        problem = pose_problem(c2w_gl)
        if problem:
            raise InputError(f"{spec.label}: transform_matrix has {problem}")
        spec.c2w = opengl_to_opencv(torch.from_numpy(c2w_gl)).float()  # (4, 4) OpenCV
    except (TypeError, ValueError) as e:
        spec.problem = f"{spec.label}: {e}"
    except InputError as err:
        spec.problem = str(err)
    return spec


def frame_pose(spec: FrameSpec, frame: dict) -> np.ndarray:
    try:
        m = np.array(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{spec.label}: no valid 'transform_matrix' ({type(e).__name__}: {e})") from None
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]])
    if m.shape != (4, 4):
        raise InputError(f"{spec.label}: transform_matrix has shape {m.shape}, expected 4x4")
    return m


def frame_distortion(spec: FrameSpec, meta: dict, frame: dict) -> tuple[float, ...] | None:
    """(k1, k2, k3, p1, p2) of the frame (per-frame keys override global ones), None when all are zero."""
    coeffs = []
    for key in DISTORTION_KEYS:
        value = frame.get(key, meta.get(key, 0.0))
        try:
            value = float(0.0 if value is None else value)
        except (TypeError, ValueError):
            raise InputError(f"{spec.label}: '{key}' = {value!r} is not a number") from None
        if not math.isfinite(value):
            raise InputError(f"{spec.label}: '{key}' = {value} is not finite")
        coeffs.append(value)
    return tuple(coeffs) if any(coeffs) else None


def merge_intrinsics(meta: dict, frame: dict) -> dict:
    """Global intrinsic keys overridden by the frame's; a frame's focal (fl_* or camera_angle_*)
    replaces every global focal key so that a global fl_x cannot beat a per-frame camera_angle_x."""
    cam = {k: meta[k] for k in INTRINSIC_KEYS if k in meta}
    focal = ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y")
    if any(k in frame for k in focal):
        cam = {k: v for k, v in cam.items() if k not in focal}
    cam.update({k: frame[k] for k in INTRINSIC_KEYS if k in frame})
    return cam


def frame_intrinsics(spec: FrameSpec, W: int, H: int) -> Tensor:
    """(3, 3) K of a frame of the scene's size W x H (its own ``w``/``h`` when it declares them)."""
    cam = spec.cam
    try:
        W = int(cam["w"]) if "w" in cam else W
        H = int(cam["h"]) if "h" in cam else H
        if "fl_x" in cam:
            fx = float(cam["fl_x"])
        elif "camera_angle_x" in cam:
            fx = focal_from_fov(float(cam["camera_angle_x"]), W)
        else:
            raise InputError(f"{spec.label}: no focal length ('fl_x' or 'camera_angle_x')")
        if "fl_y" in cam:
            fy = float(cam["fl_y"])
        elif "camera_angle_y" in cam and "fl_x" not in cam:
            fy = focal_from_fov(float(cam["camera_angle_y"]), H)
        else:
            fy = fx
        cx, cy = float(cam.get("cx", W / 2)), float(cam.get("cy", H / 2))
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise InputError(f"{spec.label}: invalid intrinsics ({e})") from None
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise InputError(f"{spec.label}: invalid intrinsics fx={fx} fy={fy} cx={cx} cy={cy}")
    return intrinsics_matrix(fx, fy, cx, cy)


# ---- undistortion ---------------------------------------------------------------------------------
def distort_normalised(x: Tensor, y: Tensor, coeffs) -> tuple[Tensor, Tensor]:
    """OpenCV radial-tangential distortion of normalised coordinates (module docstring)."""
    k1, k2, k3, p1, p2 = coeffs
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def distorted_positions(fx, fy, cx, cy, coeffs, W: int, H: int) -> Tensor:
    """(H, W, 2) float64 positions (u, v) in the stored (distorted) image, in pixels with centres at
    half-integers, of the centres of the undistorted W x H pinhole image with the same K."""
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    xd, yd = distort_normalised((u - cx) / fx, (v - cy) / fy, coeffs)  # (H, W) each
    return torch.stack([fx * xd + cx, fy * yd + cy], dim=-1)


def inside(pos: Tensor, W: int, H: int) -> Tensor:
    """(H', W') whether positions lie on the stored W x H image (edges included)."""
    return (pos[..., 0] >= 0) & (pos[..., 0] <= W) & (pos[..., 1] >= 0) & (pos[..., 1] <= H)


def sample_bilinear(img: Tensor, pos: Tensor) -> Tensor:
    """(C, H, W) sampled bilinearly at (H', W', 2) pixel positions -> (C, H', W'); 0 outside the image."""
    C, H, W = img.shape
    grid = torch.stack([2 * pos[..., 0] / W - 1, 2 * pos[..., 1] / H - 1], dim=-1).float()  # (H', W', 2)
    out = F.grid_sample(img[None].float(), grid[None], mode="bilinear", padding_mode="border", align_corners=False)[0]
    return out * inside(pos, W, H).to(out.dtype)  # (C, H', W')


def sample_nearest(img: Tensor, pos: Tensor) -> Tensor:
    """(C, H, W) at (H', W', 2) pixel positions, the stored pixel containing each -> (C, H', W'); 0 outside."""
    C, H, W = img.shape
    cols = pos[..., 0].floor().long().clamp(0, W - 1)  # (H', W')
    rows = pos[..., 1].floor().long().clamp(0, H - 1)
    out = img[:, rows, cols]  # (C, H', W')
    return out * inside(pos, W, H).to(out.dtype)


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


def intrinsics_json(K: Tensor) -> dict:
    return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}
