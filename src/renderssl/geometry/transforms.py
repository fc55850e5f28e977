"""One similarity transform applied to points and cameras together (data augmentation).

x' = s * A x + t with A orthogonal (a rotation, or a reflection when flipping) and s > 0.
Cameras follow so that every point keeps its pixel: c2w' = T c2w (camera axes rotate with the scene,
centres move with the points); z-depth scales by s. Orthographic focal lengths divide by s. With a reflection the camera frame becomes
left-handed, which projection handles exactly since it only uses the inverse of c2w.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Cameras, rigid_inverse


@dataclass
class SimilarityTransform:
    A: Tensor  # (3, 3) orthogonal
    t: Tensor  # (3,)
    scale: float = 1.0

    @property
    def matrix(self) -> Tensor:
        """(4, 4) homogeneous matrix [s A | t]."""
        T = torch.eye(4, dtype=self.A.dtype, device=self.A.device)
        T[:3, :3] = self.scale * self.A
        T[:3, 3] = self.t
        return T

    def apply_points(self, points: Tensor) -> Tensor:
        """(..., 3) -> (..., 3)."""
        return self.scale * points @ self.A.T.to(points) + self.t.to(points)

    def apply_normals(self, normals: Tensor) -> Tensor:
        """Unit normals (..., 3) -> (..., 3) (orthogonal A: normals rotate like directions)."""
        return normals @ self.A.T.to(normals)

    def apply_c2w(self, c2w: Tensor) -> Tensor:
        """Camera-to-world (..., 4, 4) -> (..., 4, 4) with orthonormal axes and moved centre."""
        out = c2w.clone()
        A = self.A.to(c2w)
        out[..., :3, :3] = A @ c2w[..., :3, :3]
        out[..., :3, 3] = self.scale * c2w[..., :3, 3] @ A.T + self.t.to(c2w)
        return out

    def apply_cameras(self, cameras: Cameras) -> Cameras:
        K = cameras.K
        if cameras.model == "ortho":  # camera-plane coordinates scale by s: focal lengths shrink by s
            K = K.clone()
            K[..., 0, 0] /= self.scale
            K[..., 1, 1] /= self.scale
        return Cameras(K, self.apply_c2w(cameras.c2w), cameras.width, cameras.height, cameras.model)

    def apply_depth(self, depth: Tensor) -> Tensor:
        return depth * self.scale

    def inverse(self) -> "SimilarityTransform":
        inv = rigid_inverse(self.matrix)
        A_inv = inv[:3, :3] * self.scale  # = A^T
        return SimilarityTransform(A_inv, inv[:3, 3], 1.0 / self.scale)


def random_similarity(
    generator: torch.Generator,
    max_angle: float = 3.141592653589793,
    axis: tuple[float, float, float] | None = (0.0, 0.0, 1.0),
    scale_range: tuple[float, float] = (1.0, 1.0),
    flip_prob: float = 0.0,
    translation_std: float = 0.0,
) -> SimilarityTransform:
    """A random augmentation: rotation about ``axis`` (any axis if None) by up to ``max_angle``,
    uniform scale in ``scale_range``, an x-flip with ``flip_prob``, Gaussian translation."""
    from .rotations import axis_angle_to_rotmat

    u = torch.rand(4, generator=generator)
    if axis is None:
        direction = torch.nn.functional.normalize(torch.randn(3, generator=generator), dim=0)
    else:
        direction = torch.tensor(axis, dtype=torch.float32)
    angle = (2 * u[0] - 1) * max_angle
    A = axis_angle_to_rotmat(direction * angle)
    if u[1] < flip_prob:
        A = A @ torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    scale = float(scale_range[0] + (scale_range[1] - scale_range[0]) * u[2])
    t = torch.randn(3, generator=generator) * translation_std
    return SimilarityTransform(A, t, scale)
