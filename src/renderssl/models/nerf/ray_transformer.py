"""The ray transformer: multi-head self-attention across the samples of each ray (GNT, NPS).

GNT (VITA-Group/GNT, ``gnt/transformer_network.py``) builds it from its class ``Transformer`` and stores
it as ``view_selftrans``/``ray_trans``; it is a *ray* transformer (it mixes the S samples of one ray,
never the views), so it is named for that here. NPS (Sec. 3.1, 3.3) keeps it unchanged and adds lighter
task copies of it (``models/heads/ray_task_head.py``).

Mechanism (one block, pre-LayerNorm, GNT's ``attn_mode="qk"``, the only mode its configs use):

    x = x + Dropout(out_fc(softmax(Q K^T / sqrt(d_head)) V))     Q, K, V = q_fc, k_fc, v_fc(LN(x))
    x = x + FeedForward(LN(x))                                    fc1 -> ReLU -> Dropout -> fc2 -> Dropout

- ``heads`` heads of ``dim / heads`` channels (GNT: 4 heads); q/k/v projections without bias, the output
  projection with bias (GNT); LayerNorm eps 1e-6 (GNT).
- Feed-forward hidden width ``ff_hidden`` (GNT: 4 x dim = 256 for netwidth 64; NPS's "latent dimension of
  768 for the MLP layer" is this width, see ``transformer.py``), ReLU, dropout after the activation and
  after the second linear (GNT); dropout also on the attention weights (GNT), default 0.1 everywhere.
- No positional term inside the attention: the samples' positions reach the features through the trunk's
  query MLP (GNT); GNT's unused ``pos``/``gate`` modes are not implemented.
- The attention weights (N, heads, S, S) can be returned; they are the weights *before* dropout (so each
  row sums to one, also in training). GNT returns the post-dropout weights averaged over heads, row 0,
  which the trunk reads as depth weights; here the caller takes row 0 itself (``transformer.py``).

Parameter names follow GNT's where they name what they are: ``attn_norm``, ``ff_norm``, ``attn.q_fc``,
``attn.k_fc``, ``attn.v_fc``, ``attn.out_fc``, ``ff.fc1``, ``ff.fc2``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import InputError
from ..dropout import Dropout


class FeedForward(nn.Module):
    """GNT's feed-forward: fc1 -> ReLU -> Dropout -> fc2 -> Dropout (shared by both transformers)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dp = Dropout(dropout)
        self.activ = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.dp(self.fc2(self.dp(self.activ(self.fc1(x)))))


def check_block_args(where: str, ff_hidden: int | None, dim: int, dropout: float) -> int:
    """The feed-forward width (4 dim by default) of a transformer block, after checking the block's arguments."""
    ff_hidden = 4 * dim if ff_hidden is None else int(ff_hidden)
    if ff_hidden < 1:
        raise InputError(f"{where}: ff_hidden must be >= 1, got {ff_hidden}")
    if not 0.0 <= float(dropout) < 1.0:
        raise InputError(f"{where}: dropout must be in [0, 1), got {dropout}")
    return ff_hidden


def attention_weights(q: Tensor, k: Tensor, heads: int) -> Tensor:
    """softmax(Q K^T / sqrt(d_head)) per head: q, k (N, S, dim) -> (N, heads, S, S), rows sum to one."""
    q = q.unflatten(-1, (heads, -1)).transpose(1, 2)  # (N, h, S, d)
    k = k.unflatten(-1, (heads, -1)).transpose(1, 2)  # (N, h, S, d)
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (N, h, S, S)


class RaySelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention over the S samples of each ray."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise InputError(f"RaySelfAttention: dim {dim} is not divisible by heads {heads}")
        self.heads, self.dim_head = heads, dim // heads
        self.q_fc = nn.Linear(dim, dim, bias=False)
        self.k_fc = nn.Linear(dim, dim, bias=False)
        self.v_fc = nn.Linear(dim, dim, bias=False)
        self.out_fc = nn.Linear(dim, dim)
        self.dp = Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, S, dim) -> out (N, S, dim), attention (N, heads, S, S) before dropout."""
        attn = attention_weights(self.q_fc(x), self.k_fc(x), self.heads)  # (N, h, S, S)
        v = self.v_fc(x).unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)  # (N, h, S, d)
        out = (self.dp(attn) @ v).transpose(1, 2).flatten(-2)  # (N, S, dim)
        return self.dp(self.out_fc(out)), attn


class RayTransformer(nn.Module):
    """One pre-LN ray-transformer block: self-attention across samples, then a feed-forward."""

    def __init__(self, dim: int, heads: int = 4, ff_hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads)):
            if int(value) < 1:
                raise InputError(f"RayTransformer: {name} must be >= 1, got {value}")
        ff_hidden = check_block_args("RayTransformer", ff_hidden, dim, dropout)
        self.dim = dim
        self.attn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ff_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RaySelfAttention(dim, heads, dropout)
        self.ff = FeedForward(dim, ff_hidden, dropout)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (N, S, dim) -> (N, S, dim); with ``return_attention`` also the weights (N, heads, S, S)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise InputError(f"RayTransformer: x must be (N, S, {self.dim}), got {tuple(x.shape)}")
        out, attn = self.attn(self.attn_norm(x))  # (N, S, dim), (N, h, S, S)
        x = x + out
        x = x + self.ff(self.ff_norm(x))  # (N, S, dim)
        return (x, attn) if return_attention else x
