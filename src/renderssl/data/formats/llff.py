"""LLFF forward-facing captures (``poses_bounds.npy``, as written by LLFF's imgs2poses).

On disk::

    <root>/poses_bounds.npy   float (N, 17): per image a 3x5 matrix flattened row-major, then near, far
    <root>/images/            N images at full resolution, in sorted file-name order (png/jpg)
    <root>/images_<n>/        the same images downsampled by an integer factor n (optional)

The 3x5 matrix is [down | right | back | t | (h, w, f)]: the first three columns are the camera's
down, right and backward axes in world coordinates, t its centre, and (h, w, f) the full-resolution
image height, width and focal length in pixels.

Conventions:
- Pose: LLFF (down, right, back) -> OpenCV c2w columns (right, down, forward) via ``llff_to_opencv``.
- K: fx = fy = f, cx = w/2, cy = h/2 at the (h, w) of the pose file (a centred pinhole in our
  half-integer pixel-centre convention), then scaled to the size of the images actually read
  (x by W_img / w, y by H_img / h) -- for ``images_<n>`` that is 1/n. Scales differing by more than
  1% between x and y are an error (the images do not belong to these poses).
- near/far bounds (metres along the view axis) are returned on the result as ``near_far`` (V, 2).

Frames with non-finite or non-invertible poses are skipped with a warning and listed in ``skipped``.
The writer needs a centred pinhole with fx = fy (LLFF stores only one focal); near/far come from the
0.1 / 99.9 percentiles of each view's valid depth unless given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...errors import InputError
from ...geometry import llff_to_opencv, opencv_to_llff
from ..types import ViewSet
from .images import (
    SkipLog, attach_skipped, is_image_file, no_valid_frames, pose_problem, read_rgb, require_dir, require_file,
    to_uint8, write_rgb,
)

POSES_FILE = "poses_bounds.npy"
NEAR_FAR_PERCENTILES = (0.1, 99.9)


# ---- reading --------------------------------------------------------------------------------------
def read_llff(root, factor: int = 1, every_k: int = 1, name: str | None = None) -> ViewSet:
    """Read an LLFF scene; ``factor`` > 1 reads ``images_<factor>/`` with K scaled to its size."""
    root = require_dir(root, "LLFF scene folder")
    if factor < 1 or every_k < 1:
        raise InputError(f"read_llff: factor and every_k must be >= 1, got {factor} and {every_k}")
    table = read_poses_bounds(root / POSES_FILE)  # (N, 17)
    image_dir = require_dir(root / ("images" if factor == 1 else f"images_{factor}"), "LLFF image folder")
    images = list_images(image_dir)
    if len(images) != len(table):
        raise InputError(f"{root / POSES_FILE} has {len(table)} poses but {image_dir} has {len(images)} images")
    poses = torch.from_numpy(table[:, :15].reshape(-1, 3, 5))  # (N, 3, 5) float64
    c2w_all, hwf_all = llff_to_opencv(poses)  # (N, 4, 4), (N, 3)
    log = SkipLog(root / POSES_FILE)
    keep = []
    for i in range(0, len(table), every_k):
        problem = pose_problem(c2w_all[i].numpy())
        if problem or not np.isfinite(table[i, 12:]).all():
            log.skip(f"{images[i].name} (row {i})", problem or "non-finite hwf or bounds")
            continue
        keep.append(i)
    skipped = log.report()
    if not keep:
        raise no_valid_frames(root, skipped)
    rgb = read_images([images[i] for i in keep])  # (V, 3, H, W)
    K = llff_intrinsics(hwf_all[keep], rgb.shape[-1], rgb.shape[-2], root / POSES_FILE, image_dir)  # (V, 3, 3)
    vs = ViewSet(
        rgb=rgb,
        K=K,
        c2w=c2w_all[keep].float(),  # (V, 4, 4)
        name=name if name is not None else root.name,
        frame_names=[images[i].stem for i in keep],
    )
    vs.near_far = torch.from_numpy(table[keep, 15:17]).float()  # (V, 2)
    return attach_skipped(vs, skipped)


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


def read_images(paths: list[Path]) -> torch.Tensor:
    rgbs = []
    for p in paths:
        rgb = read_rgb(p)  # (3, H, W)
        if rgbs and rgb.shape != rgbs[0].shape:
            raise InputError(f"{p} is {tuple(rgb.shape[-2:])} but {paths[0]} is {tuple(rgbs[0].shape[-2:])} (HxW); all images must share one size")
        rgbs.append(rgb)
    return torch.stack(rgbs)  # (V, 3, H, W)


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
