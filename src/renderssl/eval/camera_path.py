"""A rendered camera path through a scene (``renderssl evaluate RUN --video`` for NPS runs): poses
interpolated between the scene's consecutive frames, each rendered by the generalizable NeRF from the
frames nearest it, written as an animated GIF (and an MP4 when imageio's ffmpeg backend is importable).

Mechanism:

1. Keyframes: the scene's frames in their stored order (a capture's trajectory), every ``stride``-th
   one, ``stride`` the smallest that keeps the path within ``max_frames`` poses (our choice: the path
   then always spans the whole capture; the last frame is a keyframe when the stride lands on it).
2. In-between poses (:func:`interpolate_cameras`): ``per_pair`` poses strictly between each pair of
   consecutive keyframes at t = j / (per_pair + 1), j = 1 .. per_pair: camera centres linearly,
   rotations by slerp (:func:`slerp_rotations`, unit quaternions on the shorter arc, so the rotation at
   t turns by t times the pair's relative angle about its axis), intrinsics K linearly (frames of one
   capture share K; our choice for those that do not). The keyframes' own poses are kept exactly.
3. Rendering (:func:`render_camera_path`): each pose from its ``num_sources`` nearest frames by camera
   centre among all the scene's frames (ties: the lower frame index; the frame at a keyframe pose is
   among its own sources, as it would be when filming through the capture), every pixel by
   :meth:`~renderssl.models.nerf.generalizable_nerf.GeneralizableNeRF.render_image` (deterministic
   disparity-bin midpoints), ``batch`` poses at a time; colours clamped to [0, 1].
4. Files: ``path.gif`` by Pillow (``fps`` frames per second, looping); ``path.mp4`` by imageio when
   ``imageio`` and its ffmpeg plugin (``imageio-ffmpeg``) import, else one line saying so (nothing is
   downloaded).

Defaults (our choices; GNT / NPS render videos but publish no protocol): 4 poses per pair, at most 120
frames, 10 fps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..geometry.rotations import quat_to_rotmat, rotmat_to_quat

PER_PAIR, MAX_FRAMES, FPS = 4, 120, 10
MP4_NEEDS = "MP4 needs imageio with its ffmpeg plugin (pip install imageio-ffmpeg); wrote the GIF only"


def check_poses(c2w: Tensor, K: Tensor | None = None, what: str = "c2w") -> None:
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4) or len(c2w) < 1:
        raise InputError(f"camera path: {what} must be (N >= 1, 4, 4), got {tuple(c2w.shape)}")
    if K is not None and K.shape != (len(c2w), 3, 3):
        raise InputError(f"camera path: K must be (N, 3, 3) with N = {len(c2w)} poses, got {tuple(K.shape)}")


def slerp_rotations(R0: Tensor, R1: Tensor, t: Tensor) -> Tensor:
    """Rotations (..., 3, 3) at fractions t (...) of the way from R0 (..., 3, 3) to R1 (..., 3, 3), by
    spherical linear interpolation of their unit quaternions on the shorter arc (t = 0: R0, t = 1: R1)."""
    q0, q1 = rotmat_to_quat(R0), rotmat_to_quat(R1)  # (..., 4) wxyz each
    dot = (q0 * q1).sum(-1, keepdim=True)  # (..., 1)
    q1 = torch.where(dot < 0, -q1, q1)  # the shorter arc
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)  # (..., 1) half the relative rotation angle
    t = t[..., None].to(q0.dtype)  # (..., 1)
    sin = torch.sin(theta)
    small = sin < 1e-6  # nearly equal rotations: linear interpolation (normalised in quat_to_rotmat)
    safe = torch.where(small, torch.ones_like(sin), sin)
    w0 = torch.where(small, 1 - t, torch.sin((1 - t) * theta) / safe)  # (..., 1)
    w1 = torch.where(small, t, torch.sin(t * theta) / safe)  # (..., 1)
    return quat_to_rotmat(w0 * q0 + w1 * q1)  # (..., 3, 3)


def keyframe_stride(num_frames: int, per_pair: int, max_frames: int) -> int:
    """The smallest stride s such that every s-th frame as keyframes gives a path of <= max_frames poses."""
    if per_pair < 0 or max_frames < 1:
        raise InputError(f"camera path: per_pair must be >= 0 and max_frames >= 1, got {per_pair}, {max_frames}")
    for stride in range(1, max(num_frames, 1) + 1):
        keys = len(range(0, num_frames, stride))
        if (keys - 1) * (per_pair + 1) + 1 <= max_frames:
            return stride
    return max(num_frames, 1)


def interpolate_cameras(c2w: Tensor, K: Tensor, per_pair: int = PER_PAIR) -> tuple[Tensor, Tensor, Tensor]:
    """Keyframes c2w (N, 4, 4), K (N, 3, 3) -> the path c2w (M, 4, 4), K (M, 3, 3) with M = (N - 1)
    (per_pair + 1) + 1, and the (N,) indices of the keyframes on it (module docstring, step 2)."""
    check_poses(c2w, K)
    if per_pair < 0:
        raise InputError(f"camera path: per_pair must be >= 0, got {per_pair}")
    N = len(c2w)
    if N == 1:
        return c2w.clone(), K.clone(), torch.zeros(1, dtype=torch.long)
    t = torch.arange(per_pair + 1, dtype=c2w.dtype, device=c2w.device) / (per_pair + 1)  # (P + 1,) in [0, 1)
    a, b = c2w[:-1, None], c2w[1:, None]  # (N - 1, 1, 4, 4) each
    tt = t[None].expand(N - 1, -1)  # (N - 1, P + 1)
    R = slerp_rotations(a[..., :3, :3].expand(-1, per_pair + 1, -1, -1), b[..., :3, :3].expand(-1, per_pair + 1, -1, -1), tt)
    centres = a[..., :3, 3] + tt[..., None] * (b[..., :3, 3] - a[..., :3, 3])  # (N - 1, P + 1, 3)
    path = torch.zeros(N - 1, per_pair + 1, 4, 4, dtype=c2w.dtype, device=c2w.device)
    path[..., :3, :3], path[..., :3, 3], path[..., 3, 3] = R, centres, 1.0
    path[:, 0] = c2w[:-1]  # the keyframes exactly
    Ks = K[:-1, None] + tt[..., None, None] * (K[1:, None] - K[:-1, None])  # (N - 1, P + 1, 3, 3)
    path_c2w = torch.cat([path.flatten(0, 1), c2w[-1:]])  # (M, 4, 4)
    path_K = torch.cat([Ks.flatten(0, 1), K[-1:]])  # (M, 3, 3)
    return path_c2w, path_K, torch.arange(N) * (per_pair + 1)


def camera_path(c2w: Tensor, K: Tensor, per_pair: int = PER_PAIR, max_frames: int = MAX_FRAMES) -> tuple[Tensor, Tensor, Tensor]:
    """The path through a scene's frames c2w (N, 4, 4), K (N, 3, 3): every ``stride``-th frame as keyframes
    (:func:`keyframe_stride`) interpolated by :func:`interpolate_cameras` -> path c2w, K and the frame
    index of each keyframe (not its position on the path)."""
    check_poses(c2w, K)
    stride = keyframe_stride(len(c2w), per_pair, max_frames)
    keys = torch.arange(0, len(c2w), stride)  # (N',)
    path_c2w, path_K, _ = interpolate_cameras(c2w[keys], K[keys], per_pair)
    return path_c2w, path_K, keys


def nearest_frames(frame_c2w: Tensor, query_c2w: Tensor, count: int) -> Tensor:
    """(M, count) int64: for each query camera (M, 4, 4) the ``count`` frames (N, 4, 4) with the nearest camera
    centres, nearest first, ties by the lower frame index."""
    if count < 1 or count > len(frame_c2w):
        raise InputError(f"nearest_frames: count must be in 1..{len(frame_c2w)} (the frames), got {count}")
    dist = torch.cdist(query_c2w[:, :3, 3].double(), frame_c2w[:, :3, 3].double())  # (M, N)
    return torch.sort(dist, dim=1, stable=True).indices[:, :count]  # (M, count)


@torch.no_grad()
def render_camera_path(model, rgb: Tensor, K: Tensor, c2w: Tensor, path_K: Tensor, path_c2w: Tensor, near: float,
                       far: float, num_sources: int, num_samples: int, chunk: int = 4096, batch: int = 4) -> Tensor:
    """Each path pose (path_K (M, 3, 3), path_c2w (M, 4, 4)) rendered by ``model`` (a GeneralizableNeRF) from its
    ``num_sources`` nearest frames rgb (N, 3, H, W), K (N, 3, 3), c2w (N, 4, 4), samples between ``near`` and
    ``far`` (already widened as the recipe does) -> (M, 3, H, W) in [0, 1]."""
    check_poses(c2w, K)
    check_poses(path_c2w, path_K, "path_c2w")
    if rgb.dim() != 4 or rgb.shape[:2] != (len(c2w), 3):
        raise InputError(f"camera path: rgb must be (N, 3, H, W) with N = {len(c2w)}, got {tuple(rgb.shape)}")
    num_sources = min(num_sources, len(c2w))
    ids = nearest_frames(c2w, path_c2w, num_sources)  # (M, C)
    frames = []
    for start in range(0, len(path_c2w), batch):
        sel = ids[start:start + batch]  # (b, C)
        sources = model.encode_sources(rgb[sel], K[sel].float(), c2w[sel].float())  # rgb (b, C, 3, H, W)
        b = len(sel)
        lo, hi = torch.full((b,), float(near)), torch.full((b,), float(far))  # (b,)
        out, _ = model.render_image(sources, path_K[start:start + b].float(), path_c2w[start:start + b].float(), lo, hi,
                                    num_samples, chunk)  # (b, 3, H, W)
        frames.append(out.clamp(0, 1))
    return torch.cat(frames)  # (M, 3, H, W)


def frames_uint8(frames: Tensor) -> np.ndarray:
    """(M, 3, H, W) in [0, 1] -> (M, H, W, 3) uint8."""
    if frames.dim() != 4 or frames.shape[1] != 3 or len(frames) < 1:
        raise InputError(f"camera path: frames must be (M >= 1, 3, H, W), got {tuple(frames.shape)}")
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_gif(frames: Tensor, path, fps: int = FPS) -> Path:
    """An animated, looping GIF of frames (M, 3, H, W) in [0, 1] at ``fps`` frames per second (Pillow)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames_uint8(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0,
                   optimize=False, disposal=1)
    return path


def write_mp4(frames: Tensor, path, fps: int = FPS) -> Path | None:
    """``path`` (an H.264 MP4 by imageio's ffmpeg plugin) or None when that plugin is not importable."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the backend imageio writes MP4 with)
    except ImportError:
        return None
    path = Path(path)
    data = frames_uint8(frames)
    H, W = data.shape[1:3]
    if H % 2 or W % 2:  # yuv420p needs even sizes: pad by edge replication
        data = np.pad(data, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    imageio.mimwrite(path, list(data), fps=fps, macro_block_size=1)
    return path


__all__ = ["MAX_FRAMES", "MP4_NEEDS", "PER_PAIR", "camera_path", "interpolate_cameras", "keyframe_stride", "nearest_frames",
           "render_camera_path", "slerp_rotations", "write_gif", "write_mp4"]
