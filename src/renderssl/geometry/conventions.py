"""Pose conventions of common datasets, converted to OpenCV camera-to-world at load time.

- OpenGL / Blender / NeRF ``transforms.json``: camera x right, y up, z backward.
- LLFF ``poses_bounds.npy``: per image a 3x5 matrix [R | t | (h, w, f)] whose rotation columns are
  (down, right, backward).
- OpenCV (ours): x right, y down, z forward.
"""

import torch
from torch import Tensor

_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """OpenGL/Blender camera-to-world (..., 4, 4) -> OpenCV camera-to-world. Its own inverse."""
    return c2w @ _FLIP_YZ.to(c2w)


opencv_to_opengl = opengl_to_opencv


def llff_to_opencv(poses: Tensor) -> tuple[Tensor, Tensor]:
    """LLFF poses (..., 3, 5) -> (OpenCV c2w (..., 4, 4), hwf (..., 3) = height, width, focal)."""
    down, right, back, t = poses[..., 0], poses[..., 1], poses[..., 2], poses[..., 3]
    c2w = torch.zeros(poses.shape[:-2] + (4, 4), dtype=poses.dtype, device=poses.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, down, -back, t
    c2w[..., 3, 3] = 1.0
    return c2w, poses[..., 4]


def opencv_to_llff(c2w: Tensor, hwf: Tensor) -> Tensor:
    """OpenCV camera-to-world (..., 4, 4) + hwf (..., 3) -> LLFF poses (..., 3, 5)."""
    right, down, fwd, t = c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3]
    return torch.stack([down, right, -fwd, t, hwf], dim=-1)
