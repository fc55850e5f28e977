"""Batched cameras in the OpenCV convention.

``Cameras`` holds intrinsics ``K`` (..., 3, 3) in pixels and camera-to-world poses ``c2w`` (..., 4, 4)
for any leading batch shape (e.g. (B, V) = scenes x views) sharing one image size.

Pixel convention: pixel (row i, column j) covers [j, j+1) x [i, i+1); its centre is (j + 0.5, i + 0.5).
A centred camera therefore has cx = W / 2, cy = H / 2 (as gsplat and OpenCV's calibration with
half-pixel offsets). Depth is z-depth along the optical axis, never distance along the ray.

Models: ``pinhole`` (u = fx x / z + cx) and ``ortho`` (u = fx x + cx, rays parallel to +z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError, check_finite

CAMERA_MODELS = ("pinhole", "ortho")


def intrinsics_matrix(fx, fy, cx, cy, dtype=torch.float32) -> Tensor:
    """(..., 3, 3) intrinsics from broadcastable focal lengths and principal points (pixels)."""
    fx, fy, cx, cy = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=dtype) for v in (fx, fy, cx, cy)))
    K = torch.zeros(fx.shape + (3, 3), dtype=dtype)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = fx, fy, cx, cy, 1.0
    return K


def focal_from_fov(fov_radians: float, size: int) -> float:
    """Focal length in pixels that spans ``fov_radians`` over ``size`` pixels."""
    return 0.5 * size / math.tan(0.5 * fov_radians)


def rigid_inverse(m: Tensor) -> Tensor:
    """Inverse of (..., 4, 4) [A | t] with invertible A (rotation, scaled rotation or reflection)."""
    A, t = m[..., :3, :3], m[..., :3, 3:]
    A_inv = torch.linalg.inv(A)
    out = torch.zeros_like(m)
    out[..., :3, :3] = A_inv
    out[..., :3, 3:] = -A_inv @ t
    out[..., 3, 3] = 1.0
    return out


@dataclass
class Cameras:
    K: Tensor  # (..., 3, 3) pixels
    c2w: Tensor  # (..., 4, 4) OpenCV camera-to-world
    width: int
    height: int
    model: str = "pinhole"

    def __post_init__(self):
        if self.model not in CAMERA_MODELS:
            raise InputError(f"Cameras.model: unknown camera model {self.model!r}; expected one of {CAMERA_MODELS}")
        if self.K.shape[-2:] != (3, 3) or self.c2w.shape[-2:] != (4, 4):
            raise InputError(f"Cameras: expected K (..., 3, 3) and c2w (..., 4, 4), got {tuple(self.K.shape)} and {tuple(self.c2w.shape)}")
        if self.K.shape[:-2] != self.c2w.shape[:-2]:
            raise InputError(f"Cameras: K batch shape {tuple(self.K.shape[:-2])} != c2w batch shape {tuple(self.c2w.shape[:-2])}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise InputError(f"Cameras: image size must be positive, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)
        check_finite("Cameras.K", self.K)
        check_finite("Cameras.c2w", self.c2w)

    # ---- shape handling -------------------------------------------------------------------------
    @property
    def batch_shape(self) -> torch.Size:
        return self.K.shape[:-2]

    @property
    def device(self) -> torch.device:
        return self.K.device

    @property
    def dtype(self) -> torch.dtype:
        return self.K.dtype

    def __len__(self) -> int:
        return self.batch_shape[0] if len(self.batch_shape) else 1

    def __getitem__(self, idx) -> "Cameras":
        return Cameras(self.K[idx], self.c2w[idx], self.width, self.height, self.model)

    def reshape(self, *shape) -> "Cameras":
        return Cameras(self.K.reshape(*shape, 3, 3), self.c2w.reshape(*shape, 4, 4), self.width, self.height, self.model)

    def to(self, device=None, dtype=None) -> "Cameras":
        return Cameras(self.K.to(device=device, dtype=dtype), self.c2w.to(device=device, dtype=dtype), self.width, self.height, self.model)

    @staticmethod
    def stack(cams: list["Cameras"], dim: int = 0) -> "Cameras":
        first = cams[0]
        if any((c.width, c.height, c.model) != (first.width, first.height, first.model) for c in cams):
            raise InputError("Cameras.stack: all cameras must share width, height and model")
        return Cameras(torch.stack([c.K for c in cams], dim), torch.stack([c.c2w for c in cams], dim), first.width, first.height, first.model)

    # ---- poses ------------------------------------------------------------------------------------
    @property
    def w2c(self) -> Tensor:
        """(..., 4, 4) world-to-camera."""
        return rigid_inverse(self.c2w)

    @property
    def centers(self) -> Tensor:
        """(..., 3) camera centres in world coordinates."""
        return self.c2w[..., :3, 3]

    def resized(self, width: int, height: int) -> "Cameras":
        """The same cameras for an image resampled to ``width`` x ``height`` (pixel-centre aware)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.clone()
        K[..., 0, :] *= sx
        K[..., 1, :] *= sy
        return Cameras(K, self.c2w, width, height, self.model)

    # ---- projection -----------------------------------------------------------------------------
    def world_to_camera(self, points: Tensor) -> Tensor:
        """World points (..., N, 3) -> camera coordinates (..., N, 3)."""
        w2c = self.w2c
        return points @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]

    def camera_to_pixels(self, xyz_cam: Tensor) -> Tensor:
        """Camera coordinates (..., N, 3) -> pixel coordinates (..., N, 2) (continuous)."""
        fx, fy = self.K[..., None, 0, 0], self.K[..., None, 1, 1]
        cx, cy = self.K[..., None, 0, 2], self.K[..., None, 1, 2]
        x, y, z = xyz_cam.unbind(-1)
        if self.model == "pinhole":
            x, y = x / z, y / z
        return torch.stack([fx * x + cx, fy * y + cy], dim=-1)

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """World points (..., N, 3) -> (pixels (..., N, 2), z-depth (..., N))."""
        cam = self.world_to_camera(points)
        return self.camera_to_pixels(cam), cam[..., 2]

    def pixel_centers(self) -> Tensor:
        """(H, W, 2) pixel-centre coordinates (u, v) = (j + 0.5, i + 0.5)."""
        v, u = torch.meshgrid(
            torch.arange(self.height, dtype=self.dtype, device=self.device) + 0.5,
            torch.arange(self.width, dtype=self.dtype, device=self.device) + 0.5,
            indexing="ij",
        )
        return torch.stack([u, v], dim=-1)

    def pixels_to_camera(self, uv: Tensor, depth: Tensor | None = None) -> Tensor:
        """Pixels (..., N, 2) [+ z-depth (..., N)] -> camera points (..., N, 3) (z = depth or 1)."""
        fx, fy = self.K[..., None, 0, 0], self.K[..., None, 1, 1]
        cx, cy = self.K[..., None, 0, 2], self.K[..., None, 1, 2]
        x, y = (uv[..., 0] - cx) / fx, (uv[..., 1] - cy) / fy
        z = torch.ones_like(x) if depth is None else depth
        if self.model == "pinhole":
            x, y = x * z, y * z
        return torch.stack([x, y, z], dim=-1)

    def rays_at(self, uv: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor]:
        """Rays through pixel coordinates uv (..., N, 2) -> (origins, directions), each (..., N, 3).

        With ``normalize=False`` directions have unit z in the camera frame, so the ray parameter t
        equals z-depth; with ``normalize=True`` they are unit vectors and t is distance along the ray.
        """
        R, t = self.c2w[..., None, :3, :3], self.c2w[..., None, :3, 3]  # (..., 1, 3, 3), (..., 1, 3)
        if self.model == "pinhole":
            dirs_cam = self.pixels_to_camera(uv)  # (..., N, 3), z = 1
            origins = t.expand(dirs_cam.shape)
        else:
            xy0 = self.pixels_to_camera(uv, torch.zeros_like(uv[..., 0]))  # (..., N, 3), z = 0
            origins = (R @ xy0[..., None]).squeeze(-1) + t
            dirs_cam = torch.zeros_like(xy0)
            dirs_cam[..., 2] = 1.0
        dirs = (R @ dirs_cam[..., None]).squeeze(-1)
        if normalize:
            dirs = torch.nn.functional.normalize(dirs, dim=-1)
        return origins, dirs

    def rays(self, normalize: bool = True) -> tuple[Tensor, Tensor]:
        """Rays through every pixel centre -> (origins, directions), each (..., H, W, 3)."""
        uv = self.pixel_centers().reshape(-1, 2).expand(self.batch_shape + (-1, 2))  # (..., H*W, 2)
        o, d = self.rays_at(uv, normalize=normalize)
        shape = self.batch_shape + (self.height, self.width, 3)
        return o.reshape(shape), d.reshape(shape)

    def backproject_depth(self, depth: Tensor) -> Tensor:
        """z-depth (..., H, W) or (..., 1, H, W) -> world points (..., H, W, 3).

        Invalid pixels (depth 0) back-project to the camera's principal ray at z = 0; mask them with
        ``depth > 0``.
        """
        if depth.shape[-3:] == (1, self.height, self.width) and depth.dim() == len(self.batch_shape) + 3:
            depth = depth.squeeze(-3)
        if depth.shape != self.batch_shape + (self.height, self.width):
            raise InputError(
                f"backproject_depth: depth shape {tuple(depth.shape)} does not match cameras "
                f"{tuple(self.batch_shape)} x ({self.height}, {self.width})"
            )
        uv = self.pixel_centers().reshape(-1, 2).expand(self.batch_shape + (-1, 2))
        cam = self.pixels_to_camera(uv, depth.reshape(self.batch_shape + (-1,)))  # (..., HW, 3)
        world = cam @ self.c2w[..., :3, :3].transpose(-1, -2) + self.c2w[..., None, :3, 3]
        return world.reshape(self.batch_shape + (self.height, self.width, 3))
