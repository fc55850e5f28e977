"""Rotations: quaternions (wxyz, as gsplat) <-> rotation matrices, random rotations.

All functions are batched over leading dimensions and differentiable.
"""

import math

import torch
from torch import Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Unit quaternion (..., 4) wxyz -> rotation matrix (..., 3, 3). Input need not be normalised."""
    w, x, y, z = torch.unbind(torch.nn.functional.normalize(quats, dim=-1), dim=-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def rotmat_to_quat(rotmats: Tensor) -> Tensor:
    """Rotation matrix (..., 3, 3) -> unit quaternion (..., 4) wxyz with w >= 0.

    Uses the numerically stable branch (largest of w, x, y, z) per element, vectorised.
    """
    m = rotmats
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * q_i^2 for each component, from the trace identities.
    q_abs_sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
    q_abs = torch.sqrt(torch.clamp(q_abs_sq, min=1e-12))  # (..., 4) = 2|q_i|
    # Candidate quaternions, each computed from the branch where component i is largest.
    cands = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], q_abs[..., 1] ** 2, m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], q_abs[..., 2] ** 2, m[..., 2, 1] + m[..., 1, 2]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 2, 0] + m[..., 0, 2], m[..., 2, 1] + m[..., 1, 2], q_abs[..., 3] ** 2], -1),
        ],
        dim=-2,
    )  # (..., 4, 4)
    cands = cands / (2.0 * q_abs[..., None].clamp(min=0.1))
    best = q_abs.argmax(dim=-1)  # (...,)
    q = torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of wxyz quaternions (..., 4)."""
    aw, ax, ay, az = torch.unbind(a, -1)
    bw, bx, by, bz = torch.unbind(b, -1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def random_quats(n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> Tensor:
    """Uniformly distributed unit quaternions (n, 4) wxyz (Shoemake's method)."""
    u1, u2, u3 = torch.rand(3, n, generator=generator, dtype=dtype)
    a, b = torch.sqrt(1 - u1), torch.sqrt(u1)
    x, y = a * torch.sin(2 * math.pi * u2), a * torch.cos(2 * math.pi * u2)
    z, w = b * torch.sin(2 * math.pi * u3), b * torch.cos(2 * math.pi * u3)
    return torch.stack([w, x, y, z], dim=-1)


def axis_angle_to_rotmat(axis_angle: Tensor) -> Tensor:
    """Rodrigues: axis-angle (..., 3) -> rotation matrix (..., 3, 3)."""
    angle = axis_angle.norm(dim=-1, keepdim=True)  # (..., 1)
    half = 0.5 * angle
    # sin(half)/angle with its limit 1/2 at angle = 0.
    scale = torch.where(angle > 1e-8, torch.sin(half) / angle.clamp(min=1e-8), 0.5 - angle**2 / 48)
    quats = torch.cat([torch.cos(half), axis_angle * scale], dim=-1)
    return quat_to_rotmat(quats)


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """OpenCV camera-to-world (..., 4, 4) at ``eye`` looking at ``target`` (z forward, y down).

    ``up`` is the world up direction (default +z). Image y points against it.
    """
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)  # forward
    x = torch.nn.functional.normalize(torch.cross(z, up, dim=-1), dim=-1)  # right
    y = torch.cross(z, x, dim=-1)  # down
    c2w = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = x, y, z, eye
    c2w[..., 3, 3] = 1.0
    return c2w
