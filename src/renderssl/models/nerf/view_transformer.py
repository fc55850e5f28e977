"""The view transformer: subtraction vector attention over the source views of each sample (GNT, NPS).

GNT (VITA-Group/GNT, ``gnt/transformer_network.py``: ``Transformer2D`` with ``Attention2D``, stored as
``view_crosstrans``/``view_trans``) aggregates, for every 3D sample of a target ray, the tokens of that
sample seen in the V source views (colour and CNN features sampled on the epipolar line) into one
feature. NPS (Sec. 3.1) keeps it unchanged.

Mechanism (one block, pre-LayerNorm with eps 1e-6, as GNT):

    x   = LN(query)                                              (N, S, dim)
    q   = q_fc(x);  k = k_fc(tokens);  v = v_fc(tokens)          (N, S, dim), (N, S, V, dim) x 2
    pos = pos_fc(ray_diff)                                       4 -> dim/8 -> dim, ReLU between
    a   = softmax_V(attn_fc(k - q + pos))                        dim -> dim/8 -> dim; softmax over the
                                                                 views *separately per channel*
    out = out_fc(sum_v (v + pos) * a)                            (N, S, dim)
    y   = query + Dropout(out);  y = y + FeedForward(LN(y))       fc1 -> ReLU -> Dropout -> fc2 -> Dropout

- Only the query is layer-normed; the view tokens enter the projections as they are (GNT).
- ``ff_hidden`` = GNT's ``ff_hid_dim`` = 4 x dim (``int(netwidth * 4)`` in GNT); dropout 0.1 on the
  attention weights, after the output projection and in the feed-forward (GNT), configurable.
- Masked views (``mask`` False: the sample projects outside the view or behind it) are excluded: GNT
  fills their logits with -1e9 before the softmax; here they are filled with -inf and their weights and
  contributions are then set to exactly zero, so a masked view's tokens and ray_diff cannot change the
  output (even when non-finite).
- **A sample that no view sees** (our choice; GNT's -1e9 fill gives it a uniform average over all the
  views, i.e. over garbage): all its weights are zero and its attention branch output is exactly zero
  (not even ``out_fc``'s bias), so the residual passes the query through to the feed-forward. Never NaN.
- Difference from GNT (our choice): GNT computes ``v = v_fc(k_fc(tokens))`` (the value projection applied
  to the projected keys, a product of two bias-free linear maps); here ``v = v_fc(tokens)``, the
  standard value projection of the same expressiveness.
- The attention weights (N, S, V, dim) are returned *before* dropout (each channel sums to one over the
  unmasked views, also in training).

Parameter names follow GNT's where they name what they are: ``attn_norm``, ``ff_norm``, ``attn.q_fc``,
``attn.k_fc``, ``attn.v_fc``, ``attn.pos_fc``, ``attn.attn_fc``, ``attn.out_fc``, ``ff.fc1``, ``ff.fc2``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import InputError
from ..dropout import Dropout
from .ray_transformer import FeedForward, check_block_args

RAY_DIFF_DIM = 4  # GNT's relative-direction feature: unit (query dir - source dir) (3) and their dot (1)


def check_view_inputs(where: str, dim: int | None, tokens: Tensor, ray_diff: Tensor, mask: Tensor) -> None:
    """Raise :class:`InputError` unless tokens (N, S, V, dim), ray_diff (N, S, V, 4), mask (N, S, V) bool agree."""
    if tokens.dim() != 4 or (dim is not None and tokens.shape[-1] != dim):
        raise InputError(f"{where}: tokens must be (N, S, V, {dim or 'C'}), got {tuple(tokens.shape)}")
    lead = tuple(tokens.shape[:3])
    if tuple(ray_diff.shape) != lead + (RAY_DIFF_DIM,):
        raise InputError(f"{where}: ray_diff must be (N, S, V, 4) = {lead + (RAY_DIFF_DIM,)}, got {tuple(ray_diff.shape)}")
    if tuple(mask.shape) != lead:
        raise InputError(f"{where}: mask must be (N, S, V) = {lead}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise InputError(f"{where}: mask must be a bool tensor (True = the view sees the sample), got {mask.dtype}")


class SubtractionVectorAttention(nn.Module):
    """GNT's ``Attention2D``: per-channel attention over V views with logits from ``k - q + pos``."""

    def __init__(self, dim: int, dropout: float = 0.1):
        super().__init__()
        if dim < 8:
            raise InputError(f"SubtractionVectorAttention: dim must be >= 8 (its MLPs are dim/8 wide), got {dim}")
        self.q_fc = nn.Linear(dim, dim, bias=False)
        self.k_fc = nn.Linear(dim, dim, bias=False)
        self.v_fc = nn.Linear(dim, dim, bias=False)
        self.pos_fc = nn.Sequential(nn.Linear(RAY_DIFF_DIM, dim // 8), nn.ReLU(), nn.Linear(dim // 8, dim))
        self.attn_fc = nn.Sequential(nn.Linear(dim, dim // 8), nn.ReLU(), nn.Linear(dim // 8, dim))
        self.out_fc = nn.Linear(dim, dim)
        self.dp = Dropout(dropout)

    def forward(self, x: Tensor, tokens: Tensor, ray_diff: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, S, dim) normed query, tokens (N, S, V, dim), ray_diff (N, S, V, 4), mask (N, S, V) bool
        -> out (N, S, dim) (exactly 0 where no view sees the sample), weights (N, S, V, dim)."""
        q = self.q_fc(x)  # (N, S, dim)
        k = self.k_fc(tokens)  # (N, S, V, dim)
        v = self.v_fc(tokens)  # (N, S, V, dim)
        pos = self.pos_fc(ray_diff)  # (N, S, V, dim)
        logits = self.attn_fc(k - q[:, :, None, :] + pos)  # (N, S, V, dim)
        visible = mask[..., None]  # (N, S, V, 1)
        seen = mask.any(dim=-1)[..., None, None]  # (N, S, 1, 1)
        logits = logits.masked_fill(~visible, float("-inf"))
        logits = logits.masked_fill(~seen, 0.0)  # no all -inf column: an unseen sample gets finite logits
        weights = torch.softmax(logits, dim=2).masked_fill(~(visible & seen), 0.0)  # (N, S, V, dim)
        values = ((v + pos) * self.dp(weights)).masked_fill(~visible, 0.0)  # (N, S, V, dim)
        out = self.out_fc(values.sum(dim=2))  # (N, S, dim)
        out = self.dp(out).masked_fill(~seen[:, :, 0], 0.0)  # (N, S, dim)
        return out, weights


class ViewTransformer(nn.Module):
    """One pre-LN view-transformer block: the query of each sample attends over its V source-view tokens."""

    def __init__(self, dim: int, ff_hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        ff_hidden = check_block_args("ViewTransformer", ff_hidden, dim, dropout)
        self.dim = dim
        self.attn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ff_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SubtractionVectorAttention(dim, dropout)
        self.ff = FeedForward(dim, ff_hidden, dropout)

    def forward(
        self, query: Tensor, tokens: Tensor, ray_diff: Tensor, mask: Tensor, return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """query (N, S, dim), tokens (N, S, V, dim), ray_diff (N, S, V, 4), mask (N, S, V) bool (True =
        the view sees the sample) -> (N, S, dim); with ``return_weights`` also the weights (N, S, V, dim)."""
        check_view_inputs("ViewTransformer", self.dim, tokens, ray_diff, mask)
        if tuple(query.shape) != tuple(tokens.shape[:2]) + (self.dim,):
            raise InputError(f"ViewTransformer: query must be (N, S, dim) = {tuple(tokens.shape[:2]) + (self.dim,)}, got {tuple(query.shape)}")
        out, weights = self.attn(self.attn_norm(query), tokens, ray_diff, mask)  # (N, S, dim), (N, S, V, dim)
        x = query + out
        x = x + self.ff(self.ff_norm(x))  # (N, S, dim)
        return (x, weights) if return_weights else x
