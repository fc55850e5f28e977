"""LLFF forward-facing captures (``poses_bounds.npy``, as written by LLFF's imgs2poses), read frame by
frame, as the public copies (``nerf_llff_data``) are laid out.

On disk::

    <root>/poses_bounds.npy   float (N, 17): per image a 3x5 matrix flattened row-major, then near, far
    <root>/images/            N images at full resolution, in sorted file-name order (png/jpg)
    <root>/images_<n>/        the same images downsampled by an integer factor n (published: images_4/,
                              images_8/); any subset of these folders may exist

The 3x5 matrix is [down | right | back | t | (h, w, f)]: the first three columns are the camera's
down, right and backward axes in world coordinates, t its centre, and (h, w, f) the full-resolution
image height, width and focal length in pixels.

Which image folder is read (the scene's ``llff_factor``, 1 = ``images/``, and ``image_dir``):
- ``options.llff_factor`` (``data.llff_factor``) given: that folder (``images/`` for 1, else
  ``images_<n>/``); an error naming the folders that exist when it is absent.
- None (the default): chosen from the folders' image sizes (the header of each folder's first readable
  image): the most downsampled folder whose images are still at least ``options.target_size`` (H, W)
  (``data.height`` x ``data.width``) in both dimensions, so the later resize to the configured size only
  shrinks (for a centre crop to the target aspect ratio as for a stretch, both dimensions at least the
  target's is exactly what that takes); when no folder is that large, the largest one; without a
  target size (the eager API), the largest one (``images/`` when it exists). Ties go to the smaller
  factor.
:func:`read_llff` keeps its signature: ``factor`` (default 1, ``images/``) is that explicit choice.

Conventions:
- Pose: LLFF (down, right, back) -> OpenCV c2w columns (right, down, forward) via ``llff_to_opencv``.
- K: fx = fy = f, cx = w/2, cy = h/2 at the (h, w) of the pose file (a centred pinhole in our
  half-integer pixel-centre convention), then scaled to the size of the images actually read
  (x by W_img / w, y by H_img / h) -- for ``images_<n>`` that is 1/n. Scales differing by more than
  1% between x and y are an error for the scene (the images do not belong to these poses), as is a
  folder whose image count differs from the number of poses (images are matched to rows by order).
- near/far bounds (metres along the view axis) are kept as ``near_far`` (V, 2), on the opened scene
  and on a loaded result.

Lazily read (:func:`open_llff` -> :class:`LLFFScene`): the pose table, the folder choice, the image list
and the frame size (one image header) are read when the scene is opened; each image is decoded (kept as
uint8, as stored) by ``read_frame``; :func:`count_llff` counts the rows of ``poses_bounds.npy`` (its
header only). One policy for bad frames: a row whose pose is non-finite or non-invertible (or whose hwf
or bounds are non-finite), an unreadable or truncated image, or an image of another size than the
folder's raises an InputError naming the file from ``read_frame``: training skips and counts it,
``load()`` skips it with one warning and lists it in the result's ``skipped``.

The writer needs a centred pinhole with fx = fy (LLFF stores only one focal); near/far come from the
0.1 / 99.9 percentiles of each view's valid depth unless given.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...errors import InputError
from ...geometry import llff_to_opencv, opencv_to_llff
from ..scenes import Scene
from ..types import ViewSet
from .images import image_size, is_image_file, pose_problem, require_dir, require_file, to_uint8, write_rgb
from .options import ReadOptions
from .sevenscenes import read_rgb8

POSES_FILE = "poses_bounds.npy"
NEAR_FAR_PERCENTILES = (0.1, 99.9)
MAX_PROBED = 16  # images whose headers are tried for a folder's image size
_FOLDER = re.compile(r"^images(?:_(\d+))?$")


# ---- reading --------------------------------------------------------------------------------------
def read_llff(root, factor: int = 1, every_k: int = 1, name: str | None = None) -> ViewSet:
    """Read an LLFF scene; ``factor`` > 1 reads ``images_<factor>/`` with K scaled to its size. Every
    frame that can be read; the others skipped with one warning and listed in ``skipped``."""
    if factor is None or factor < 1:
        raise InputError(f"read_llff: factor must be >= 1, got {factor}")
    return open_llff(root, ReadOptions(every_k=every_k, llff_factor=factor), name).load()


def open_llff(root, options: ReadOptions = ReadOptions(), name: str | None = None) -> "LLFFScene":
    """The scene opened for reading frame by frame, from the image folder the options pick (module docstring)."""
    if options.every_k < 1 or (options.llff_factor is not None and options.llff_factor < 1):
        raise InputError(f"read_llff: factor and every_k must be >= 1, got {options.llff_factor} and {options.every_k}")
    return LLFFScene(root, options, name)


def count_llff(root, options: ReadOptions = ReadOptions()) -> int:
    """Frames of the scene: the rows of ``poses_bounds.npy`` (read from its header), every k-th."""
    path = require_file(Path(require_dir(root, "LLFF scene folder")) / POSES_FILE, "poses_bounds.npy")
    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: cannot read numpy array ({e})") from None
    if len(shape) != 2 or shape[1] != 17 or shape[0] == 0:
        raise InputError(f"{path}: expected shape (N, 17) with N >= 1, got {shape}")
    return len(range(0, shape[0], options.every_k))


class LLFFScene(Scene):
    """An LLFF scene: poses, bounds, the chosen image folder (``llff_factor``, ``image_dir``) and its
    image list read when opened; each image decoded by :meth:`read_frame`."""

    def __init__(self, root, options: ReadOptions = ReadOptions(), name: str | None = None):
        self.root = require_dir(root, "LLFF scene folder")
        self.poses_path = self.root / POSES_FILE
        table = read_poses_bounds(self.poses_path)  # (N, 17)
        self.llff_factor, self.image_dir, size = choose_image_folder(self.root, options.llff_factor, options.target_size)
        images = list_images(self.image_dir)
        if len(images) != len(table):
            raise InputError(f"{self.poses_path} has {len(table)} poses but {self.image_dir} has {len(images)} images")
        rows = list(range(0, len(table), options.every_k))
        self.images = [images[i] for i in rows]
        self.name = name if name is not None else self.root.name
        self.frame_names, self.class_names, self.has_depth = [p.stem for p in self.images], [], False
        poses = torch.from_numpy(table[rows, :15].reshape(-1, 3, 5))  # (V, 3, 5) float64
        c2w, hwf = llff_to_opencv(poses)  # (V, 4, 4), (V, 3)
        self.pose_problems = {}
        for i, row in enumerate(rows):
            problem = pose_problem(c2w[i].numpy()) or (None if np.isfinite(table[row, 12:]).all() else "non-finite hwf or bounds")
            if problem:
                self.pose_problems[i] = f"{self.poses_path} row {row}, the pose of {self.images[i].name} ({problem})"
        good = [i for i in range(len(rows)) if i not in self.pose_problems]
        self.width, self.height = size if size is not None else folder_size(self.image_dir, [self.images[i] for i in good] or self.images)
        self.c2w = c2w.float()  # (V, 4, 4)
        self.c2w[list(self.pose_problems)] = torch.eye(4)
        self.K = torch.eye(3).repeat(len(rows), 1, 1)  # (V, 3, 3); identity for rows that cannot be used
        if good:
            self.K[good] = llff_intrinsics(hwf[good], self.width, self.height, self.poses_path, self.image_dir)
        self.near_far = torch.from_numpy(table[rows, 15:17]).float()  # (V, 2)

    def read_frame(self, i: int) -> dict:
        if i in self.pose_problems:
            raise InputError(self.pose_problems[i])
        path = self.images[i]
        rgb = read_rgb8(path)  # (3, H, W) uint8
        H, W = rgb.shape[-2:]
        if (W, H) != (self.width, self.height):
            raise InputError(f"{path} is {W}x{H} but the images of {self.image_dir} are {self.width}x{self.height} "
                             "(WxH); all images of a folder must share one size")
        return {"rgb": rgb}

    def load(self, max_bad_fraction: float = 1.0) -> ViewSet:
        """:meth:`Scene.load`, with ``near_far`` (V, 2) and ``llff_factor`` on the result."""
        vs = super().load(max_bad_fraction)
        kept, j = [], 0
        for i, frame in enumerate(self.frame_names):  # the loaded frames, in order, are a subsequence
            if j < len(vs.frame_names) and vs.frame_names[j] == frame:
                kept.append(i)
                j += 1
        vs.near_far, vs.llff_factor = self.near_far[kept].clone(), self.llff_factor
        return vs


def image_folders(root: Path) -> dict[int, Path]:
    """{factor: folder} of ``images/`` (factor 1) and ``images_<n>/`` under ``root``."""
    out = {}
    for p in root.iterdir():
        m = _FOLDER.match(p.name)
        if m and p.is_dir():
            out[int(m.group(1) or 1)] = p
    return dict(sorted(out.items()))


def choose_image_folder(root: Path, factor: int | None, target_size) -> tuple[int, Path, tuple[int, int] | None]:
    """(factor, folder, its (W, H) or None when not probed): the folder the module docstring describes."""
    folders = image_folders(root)
    have = ", ".join(f"{p.name}/" for p in folders.values()) or "none"
    if factor is not None:
        if factor not in folders:
            wanted = "images" if factor == 1 else f"images_{factor}"
            raise InputError(f"{root / wanted}: LLFF image folder not found (data.llff_factor={factor}; the scene has {have})")
        return factor, folders[factor], None
    if not folders:
        raise InputError(f"{root}: no LLFF image folder (images/ or images_<n>/) found")
    sizes = {}
    for f, folder in folders.items():
        images = list_images(folder)
        if images:
            try:
                sizes[f] = folder_size(folder, images)
            except InputError:
                continue  # a folder without one readable image is not a candidate
    if not sizes:
        raise InputError(f"{root}: no readable image in the LLFF image folders ({have})")
    pixels = {f: w * h for f, (w, h) in sizes.items()}
    largest = max(sizes, key=lambda f: (pixels[f], -f))
    if target_size is None:
        return largest, folders[largest], sizes[largest]
    H, W = (int(v) for v in target_size)
    large_enough = [f for f, (w, h) in sizes.items() if w >= W and h >= H]
    pick = min(large_enough, key=lambda f: (pixels[f], f)) if large_enough else largest
    return pick, folders[pick], sizes[pick]


def folder_size(folder: Path, images: list[Path]) -> tuple[int, int]:
    """(W, H) of a folder's images, from the header of the first one that can be read."""
    problems = []
    for p in images[:MAX_PROBED]:
        try:
            return image_size(p)
        except InputError as err:
            problems.append(str(err))
    raise InputError(f"{folder}: no readable image among the first {len(problems)}: " + "; ".join(problems[:3]))


def read_poses_bounds(path: Path) -> np.ndarray:
    path = require_file(path, "poses_bounds.npy")
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: cannot read numpy array ({e})") from None
    if table.ndim != 2 or table.shape[1] != 17 or len(table) == 0:
        raise InputError(f"{path}: expected shape (N, 17) with N >= 1, got {table.shape}")
    return table.astype(np.float64)


def list_images(image_dir: Path) -> list[Path]:
    return sorted((p for p in image_dir.iterdir() if is_image_file(p)), key=lambda p: p.name)


def llff_intrinsics(hwf: torch.Tensor, width: int, height: int, poses_path, image_dir) -> torch.Tensor:
    """(V, 3) (h, w, f) -> (V, 3, 3) K for images of ``width`` x ``height``."""
    h, w, f = hwf.double().unbind(-1)  # (V,) each
    sx, sy = width / w, height / h  # (V,)
    if bool(((sx - sy).abs() > 0.01 * sx).any()):
        raise InputError(
            f"{poses_path}: poses are for {int(w[0])}x{int(h[0])} images but {image_dir} holds "
            f"{width}x{height} images, a different aspect ratio"
        )
    K = torch.zeros(len(hwf), 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1] = f * sx, f * sy
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = 0.5 * w * sx, 0.5 * h * sy, 1.0
    return K.float()


# ---- writing --------------------------------------------------------------------------------------
def write_llff(viewset: ViewSet, root, factor: int = 2, near_far=None) -> Path:
    """Write ``viewset`` as images/, images_<factor>/ (if factor > 1, PIL box resize) and poses_bounds.npy.

    ``near_far``: None (depth percentiles), a (near, far) pair, or a (V, 2) array. Returns ``root``.
    """
    root = Path(root)
    V, H, W = len(viewset), viewset.height, viewset.width
    focal = check_llff_intrinsics(viewset.K, W, H)  # (V,)
    bounds = resolve_near_far(viewset, near_far)  # (V, 2)
    hwf = torch.stack([torch.full((V,), float(H)), torch.full((V,), float(W)), focal], dim=-1).double()  # (V, 3)
    poses = opencv_to_llff(viewset.c2w.double(), hwf)  # (V, 3, 5)
    table = np.concatenate([poses.reshape(V, 15).numpy(), bounds.double().numpy()], axis=1)  # (V, 17)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / POSES_FILE, table)
    small = (max(1, round(W / factor)), max(1, round(H / factor)))
    for i in range(V):
        write_rgb(root / "images" / f"{i:06d}.png", viewset.rgb[i])
        if factor > 1:
            out = root / f"images_{factor}" / f"{i:06d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint8(viewset.rgb[i]).transpose(1, 2, 0)).resize(small, Image.Resampling.BOX).save(out)
    return root


def check_llff_intrinsics(K: torch.Tensor, W: int, H: int) -> torch.Tensor:
    """The (V,) focal lengths, after checking that every K is a centred pinhole with fx = fy."""
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    ok = torch.isclose(fx, fy, atol=1e-4, rtol=1e-6) & ((cx - W / 2).abs() < 1e-3) & ((cy - H / 2).abs() < 1e-3)
    if not bool(ok.all()):
        i = int((~ok).nonzero()[0])
        raise InputError(
            f"write_llff: LLFF stores one focal length and a centred principal point, but view {i} has "
            f"fx={float(fx[i]):g} fy={float(fy[i]):g} cx={float(cx[i]):g} cy={float(cy[i]):g} for a {W}x{H} image"
        )
    return fx.double()


def resolve_near_far(viewset: ViewSet, near_far) -> torch.Tensor:
    """(V, 2) near/far bounds: given, or depth percentiles per view (all views' depth where a view has none)."""
    V = len(viewset)
    if near_far is not None:
        nf = torch.as_tensor(near_far, dtype=torch.float64)
        if nf.shape == (2,):
            nf = nf.expand(V, 2)
        if nf.shape != (V, 2) or not bool(torch.isfinite(nf).all()):
            raise InputError(f"write_llff: near_far must be a finite (near, far) pair or ({V}, 2), got shape {tuple(nf.shape)}")
        return nf.clone()
    if viewset.depth is None or not bool((viewset.depth > 0).any()):
        raise InputError("write_llff: the ViewSet has no valid depth; pass near_far=(near, far)")
    depth = viewset.depth.detach().double().cpu().numpy().reshape(V, -1)  # (V, H*W)
    fallback = np.percentile(depth[depth > 0], NEAR_FAR_PERCENTILES)  # (2,); numpy: no size limit
    rows = [np.percentile(d[d > 0], NEAR_FAR_PERCENTILES) if (d > 0).any() else fallback for d in depth]
    return torch.from_numpy(np.stack(rows))  # (V, 2)
