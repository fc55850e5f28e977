"""Shared file io for the format readers and writers: images, depth and label PNGs, matrix text
files, pose validation and the bookkeeping of skipped frames; and the resizing that brings frames to
the configured size (``data.resize``: centre crop to the aspect ratio then resize, or stretch; K
follows exactly, see "bringing frames to a target size" below).

Every function here turns a PIL/numpy/OS failure into an :class:`InputError` naming the file, so
readers never surface a deep traceback.

On-disk encodings (converted here, once):
- colour: 8-bit RGB/RGBA PNG or JPEG  <->  float32 (3, H, W) in [0, 1] (value / 255).
- depth: 16-bit single-channel PNG of integer units (millimetres by default, ``scale`` = units per
  metre)  <->  float32 (1, H, W) metres; a raw value equal to ``invalid`` (0, or 65535 for 7-Scenes)
  reads as depth 0 (= invalid, our convention). Writing rounds to the nearest unit, so a round trip
  is exact to half a unit (0.5 mm); depths beyond the 16-bit range are written as invalid, with a warning.
- label maps: 16-bit PNG storing ``label + 1`` so that 0 = unlabelled  <->  int64 (H, W) with -1 = ignore.
- matrices: whitespace-separated text, one row per line (``%.9g``: float32 values round-trip exactly).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ...errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
UINT16_MAX = 65535


# ---- paths ----------------------------------------------------------------------------------------
def require_dir(path, what: str = "folder") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: {what} not found" if not path.exists() else f"{path}: expected a {what}, found a file")
    return path


def require_file(path, what: str = "file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    return path


def find_image(stem_path) -> Path:
    """``stem_path`` as given if it exists, else with the first image extension that exists."""
    p = Path(stem_path)
    if p.is_file():
        return p
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    raise InputError(f"{p}: image not found (also tried the extensions {', '.join(IMAGE_EXTENSIONS)})")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


# ---- images ---------------------------------------------------------------------------------------
def open_image(path) -> Image.Image:
    """A fully decoded PIL image; missing or corrupt files raise :class:`InputError`."""
    path = require_file(path, "image")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header."""
    path = require_file(path, "image")
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def read_rgb(path) -> Tensor:
    """Colour image -> (3, H, W) float32 in [0, 1]; any alpha channel is dropped."""
    im = open_image(path)
    arr = np.asarray(_to_8bit(im, path).convert("RGB"))  # (H, W, 3) uint8
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def read_rgba(path) -> Tensor:
    """Colour image -> (4, H, W) float32 in [0, 1]; alpha is 1 where the file has none."""
    im = open_image(path)
    arr = np.asarray(_to_8bit(im, path).convert("RGBA"))  # (H, W, 4) uint8
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def _to_8bit(im: Image.Image, path) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey used as colour: keep the top 8 bits
        arr = np.asarray(im).astype(np.int64)
        scale = 257 if arr.max(initial=0) > 255 else 1
        return Image.fromarray(np.clip(arr // scale, 0, 255).astype(np.uint8))
    if im.mode == "F":
        raise InputError(f"{path}: float image cannot be read as colour")
    return im


def composite_background(rgba: Tensor, background) -> Tensor:
    """(4, H, W) -> (3, H, W) composited over a constant ``background`` colour; None keeps RGB as is."""
    if background is None:
        return rgba[:3]
    bg = torch.as_tensor(background, dtype=rgba.dtype).reshape(-1, 1, 1)
    if bg.shape[0] not in (1, 3):
        raise InputError(f"background must be one grey value or an (r, g, b) triple in [0, 1], got {background!r}")
    bg = bg.expand(3, 1, 1)  # (3, 1, 1)
    alpha = rgba[3:4]  # (1, H, W)
    return rgba[:3] * alpha + bg * (1.0 - alpha)


def write_rgb(path, rgb: Tensor, alpha: Tensor | None = None, jpg_quality: int = 95) -> None:
    """(3, H, W) [0, 1] (+ alpha (1, H, W) or (H, W)) -> 8-bit PNG/JPEG chosen by the suffix."""
    arr = to_uint8(rgb).transpose(1, 2, 0)  # (H, W, 3)
    if alpha is not None:
        a = to_uint8(alpha.reshape(1, *rgb.shape[-2:]))[0]  # (H, W)
        arr = np.concatenate([arr, a[..., None]], axis=-1)  # (H, W, 4)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        if alpha is not None:
            raise InputError(f"{path}: JPEG cannot store an alpha channel")
        Image.fromarray(arr).save(path, quality=int(jpg_quality))
    elif suffix == ".png":
        Image.fromarray(arr).save(path)
    else:
        raise InputError(f"{path}: unsupported image extension {suffix!r}; use .png or .jpg")


def to_uint8(img: Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> uint8 numpy (C, H, W), rounded to the nearest level."""
    return (img.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def resize_rgb(rgb: Tensor, width: int, height: int) -> Tensor:
    """(C, H, W) -> (C, height, width), antialiased bilinear on pixel centres (align_corners=False)."""
    if rgb.shape[-2:] == (height, width):
        return rgb
    out = torch.nn.functional.interpolate(rgb[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp(0, 1)


def resize_nearest(x: Tensor, width: int, height: int) -> Tensor:
    """(..., H, W) -> (..., height, width) by the nearest pixel centre: output pixel (i, j) takes input
    pixel (floor((i + 0.5) H / height), floor((j + 0.5) W / width)), so every output value is an input
    value (labels stay labels, depth is never interpolated across an edge, holes stay holes)."""
    if x.shape[-2:] == (height, width):
        return x
    H, W = x.shape[-2:]
    rows = ((torch.arange(height) + 0.5) * H / height).floor().long().clamp(max=H - 1)  # (height,)
    cols = ((torch.arange(width) + 0.5) * W / width).floor().long().clamp(max=W - 1)  # (width,)
    return x[..., rows, :][..., cols]


def resize_labels(labels: Tensor, width: int, height: int) -> Tensor:
    """(H, W) int64 -> (height, width) by nearest pixel centre (:func:`resize_nearest`)."""
    return resize_nearest(labels, width, height)


# ---- bringing frames to a target size: centre crop to the aspect ratio, or stretch ------------------
#
# ``crop`` (the default, ``data.resize``): the largest centred window of the target's aspect ratio,
# then a resize of that window. With W x H in and w x h out the window is
#     too wide  (W h > H w): width  round(H w / h), height H, left = (W - width) // 2, top 0
#     too tall  (W h < H w): height round(W h / w), width  W, top = (H - height) // 2, left 0
# (round half up, integer pixel offsets, so the crop is a plain slice and K follows exactly). The window
# is then resized to w x h with per-axis scales sx = w / width, sy = h / height (equal up to the rounding
# of the window). ``stretch``: the window is the whole frame (sx, sy differ for another aspect ratio).
# With pixel centres at half-integers a continuous pixel coordinate u maps to (u - left) sx, so
#     fx' = fx sx,  cx' = (cx - left) sx,  fy' = fy sy,  cy' = (cy - top) sy
# and a 3D point projects to the same place of the scene in the new image as in the old one.
RESIZE_MODES = ("crop", "stretch")


def crop_window(height: int, width: int, target_height: int, target_width: int, mode: str = "crop") -> tuple[int, int, int, int]:
    """(top, left, window height, window width) of a height x width frame brought to the target by
    ``mode`` (see above; ``stretch``: the whole frame)."""
    if mode not in RESIZE_MODES:
        raise InputError(f"resize mode {mode!r} is not one of {list(RESIZE_MODES)} (data.resize)")
    if mode == "stretch" or width * target_height == height * target_width:
        return 0, 0, height, width
    if width * target_height > height * target_width:  # too wide: keep the full height
        w = min(width, max(1, int(math.floor(height * target_width / target_height + 0.5))))
        return 0, (width - w) // 2, height, w
    h = min(height, max(1, int(math.floor(width * target_height / target_width + 0.5))))
    return (height - h) // 2, 0, h, width


def fit_intrinsics(K: Tensor, height: int, width: int, target_height: int, target_width: int, mode: str = "crop") -> Tensor:
    """(..., 3, 3) pixel intrinsics of a height x width frame -> those of the frame brought to
    target_height x target_width by ``mode`` (crop shifts cx, cy; the resize scales rows 0 and 1)."""
    top, left, h, w = crop_window(height, width, target_height, target_width, mode)
    K = K.clone()
    K[..., 0, 2] -= left
    K[..., 1, 2] -= top
    K[..., 0, :] *= target_width / w
    K[..., 1, :] *= target_height / h
    return K


def fit_image(img: Tensor, target_height: int, target_width: int, mode: str = "crop") -> Tensor:
    """(C, H, W) colour in [0, 1] -> (C, target_height, target_width): crop window, antialiased bilinear."""
    top, left, h, w = crop_window(*img.shape[-2:], target_height, target_width, mode)
    return resize_rgb(img[..., top:top + h, left:left + w], target_width, target_height)


def fit_nearest(x: Tensor, target_height: int, target_width: int, mode: str = "crop") -> Tensor:
    """(..., H, W) depth, normals or labels -> (..., target_height, target_width): crop window, nearest."""
    top, left, h, w = crop_window(*x.shape[-2:], target_height, target_width, mode)
    return resize_nearest(x[..., top:top + h, left:left + w], target_width, target_height)


# ---- depth and labels -----------------------------------------------------------------------------
def read_uint16(path) -> np.ndarray:
    """A single-channel 8/16-bit PNG -> (H, W) uint16 array."""
    im = open_image(path)
    if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
        raise InputError(f"{path}: expected a single-channel 16-bit PNG, got PIL mode {im.mode!r}")
    arr = np.asarray(im)
    if arr.min(initial=0) < 0 or arr.max(initial=0) > UINT16_MAX:
        raise InputError(f"{path}: values outside the 16-bit range")
    return arr.astype(np.uint16)


def write_uint16(path, arr: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint16)).save(path)


def read_depth(path, scale: float = 1000.0, invalid: int = 0) -> Tensor:
    """16-bit depth PNG of ``scale`` units per metre -> (1, H, W) float32 metres, 0 = invalid.

    Raw values equal to ``invalid`` and 0 both read as 0.
    """
    raw = read_uint16(path)  # (H, W)
    depth = torch.from_numpy(raw.astype(np.float32)) / float(scale)
    depth[torch.from_numpy((raw == invalid) | (raw == 0))] = 0.0
    return depth[None]


def write_depth(path, depth: Tensor, scale: float = 1000.0, invalid: int = 0) -> None:
    """(1, H, W) or (H, W) metres (0 = invalid) -> 16-bit PNG of ``scale`` units per metre."""
    d = depth.detach().reshape(depth.shape[-2:]).double().cpu().numpy() * float(scale)  # (H, W)
    units = np.round(d)
    valid = np.isfinite(units) & (units > 0)
    overflow = valid & (units >= UINT16_MAX)
    if overflow.any():
        warnings.warn(f"{path}: {int(overflow.sum())} depth value(s) beyond {UINT16_MAX / scale:g} m written as invalid", stacklevel=3)
    valid &= ~overflow
    raw = np.full(d.shape, invalid, dtype=np.uint16)
    raw[valid] = units[valid].astype(np.uint16)
    write_uint16(path, raw)


def read_labels(path) -> Tensor:
    """16-bit label PNG storing ``label + 1`` (0 = unlabelled) -> (H, W) int64 with -1 = ignore."""
    return torch.from_numpy(read_uint16(path).astype(np.int64)) - 1


def write_labels(path, labels: Tensor) -> None:
    """(H, W) int64 with -1 = ignore -> 16-bit PNG of ``label + 1``."""
    lab = labels.detach().cpu().numpy().astype(np.int64)
    if lab.min(initial=0) < -1 or lab.max(initial=0) > UINT16_MAX - 1:
        raise InputError(f"{path}: labels must lie in [-1, {UINT16_MAX - 1}] to fit a 16-bit PNG")
    lab = np.where(lab < 0, 0, lab + 1)
    write_uint16(path, lab)


def check_same_size(path_a, size_a, path_b, size_b) -> None:
    """Raise naming both files when two images that must align differ in size ((W, H) tuples)."""
    if tuple(size_a) != tuple(size_b):
        raise InputError(
            f"{path_a} is {size_a[0]}x{size_a[1]} but {path_b} is {size_b[0]}x{size_b[1]} (WxH); "
            "they must have the same size"
        )


# ---- matrices and poses ---------------------------------------------------------------------------
def read_matrix(path, shapes=((4, 4),)) -> np.ndarray:
    """A whitespace-separated text matrix -> float64 array of one of ``shapes`` (by element count).

    Non-numeric tokens such as ``-inf`` / ``nan`` parse (real ScanNet has ``-inf`` poses); validation
    is the caller's job.
    """
    path = require_file(path, "matrix file")
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise InputError(f"{path}: cannot read numbers ({e})") from None
    for shape in shapes:
        if values.size == int(np.prod(shape)):
            return values.reshape(shape)
    raise InputError(f"{path}: expected {' or '.join(str(int(np.prod(s))) for s in shapes)} numbers, found {values.size}")


def write_matrix(path, m) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.asarray(torch.as_tensor(m).detach().cpu().double())
    path.write_text("\n".join(" ".join(f"{float(v):.9g}" for v in row) for row in m) + "\n")


def pose_problem(c2w: np.ndarray) -> str | None:
    """Why a (4, 4) camera-to-world cannot be used (non-finite or non-invertible), or None."""
    if not np.isfinite(c2w).all():
        return "non-finite values"
    if abs(np.linalg.det(c2w[:3, :3])) < 1e-8:
        return "non-invertible rotation"
    return None


def share_intrinsics(K: Tensor, fmt: str) -> Tensor:
    """The one (3, 3) K of a ViewSet whose views must share intrinsics (single-file formats)."""
    if not torch.allclose(K, K[:1].expand_as(K), atol=1e-6, rtol=0):
        raise InputError(f"{fmt} writer: this format stores one intrinsics matrix, but the views' K differ")
    return K[0]


# ---- skipped frames -------------------------------------------------------------------------------
class SkipLog:
    """Collects frames a reader dropped (bad pose, unreadable file, wrong size) and reports them once."""

    def __init__(self, where):
        self.where = where
        self.items: list[str] = []

    def skip(self, name: str, reason: str) -> None:
        self.items.append(f"{name} ({reason})")

    def report(self) -> list[str]:
        if self.items:
            head = ", ".join(self.items[:3]) + (", ..." if len(self.items) > 3 else "")
            warnings.warn(f"{self.where}: skipped {len(self.items)} frame(s) that cannot be used: {head}", stacklevel=3)
        return list(self.items)


def attach_skipped(viewset, skipped: list[str]):
    """Record the dropped frames on the result as ``viewset.skipped`` (list of 'file (reason)')."""
    viewset.skipped = skipped
    return viewset


def skipped_frames(viewset) -> list[str]:
    """Frames a reader skipped when building ``viewset`` (empty for ViewSets not from a reader)."""
    return list(getattr(viewset, "skipped", []))


def no_valid_frames(where, skipped: list[str]) -> InputError:
    extra = f"; all {len(skipped)} frame(s) were skipped: " + ", ".join(skipped[:3]) if skipped else ""
    return InputError(f"{where}: no valid frames{extra}")


def stack_or_none(items: list[Tensor | None]) -> Tensor | None:
    if not items or any(x is None for x in items):
        return None
    return torch.stack(items)
