"""Fixed 2D sine-cosine position embeddings, laid out as facebookresearch/mae does.

For a (gh, gw) patch grid the first half of the channels encodes the column index and the second half
the row index (MAE's ``meshgrid(grid_w, grid_h)`` quirk), each half as [sin(pos * omega), cos(pos *
omega)] with omega_i = 1 / 10000^(i / (D/4)). A leading all-zero row is the class-token slot.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(M,) positions -> (M, dim) embedding, dim even."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.reshape(-1, 1).double() * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> Tensor:
    """(1 [+1] + gh*gw, dim) float32 embedding of a row-major patch grid; dim divisible by 4."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)  # (gh*gw, dim)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
