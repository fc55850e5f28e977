"""NPS's task heads: a light ray transformer on the trunk's per-sample features, per downstream task.

NPS (Sec. 3.3): "For each unique downstream task, NPS's architecture is designed to be augmented with a
task-specific ray transformer block, which is more lightweight compared to the rendering ray
transformer", fine-tuned end to end with the trunk on novel view synthesis plus the task. The paper gives
no further detail; the rest is our choice:

- Input: the trunk's per-sample features (N, S, dim) after its last block
  (``GeneralizableNeRFTransformer``'s ``NeRFTransformerOutput.features``) and, for depth, the sample
  distances t (N, S).
- ``blocks`` ray-transformer blocks (``models/nerf/ray_transformer.py``: pre-LN multi-head
  self-attention across the samples, feed-forward; default 1 block against the trunk's 8, ``heads`` 4 as
  GNT's, feed-forward width ``ff_hidden`` default 4 x dim, dropout 0.1 as the trunk).
- No positional encoding of the points is added: the trunk's features already carry PE(points) and
  PE(view_dirs) through its query MLPs (GNT's ``q_fcs``), and the ray attention is order-free.
- ``kind="classes"``: LayerNorm -> mean over samples -> Linear(dim, num_classes): logits (N, K), the
  trunk's colour head with K outputs (the colour is a mean over samples too, not a volume rendering).
- ``kind="depth"``: the attention-weighted depth sum_s t_s a_s, a = the head's last block's attention
  averaged over heads, row 0, exactly as the trunk reads its depth (GNT's ``ret_alpha``); returns (N,).
  Chosen over a regressed value: it lies in [min t, max t] by construction, needs no scale for the scene's
  depth range, and the depth loss trains the attention the trunk's depth already comes from. The depth is
  in the units of t: z-depth for renderssl's rays (``GeneralizableNeRF`` parameterises them by z-depth).
  Only the attention weights of the last block reach that output, so the last block is built as its
  attention-weights part only (``readout``: ``attn_norm``, ``q_fc``, ``k_fc``), the same numbers as a full
  block's weights without parameters that would get no gradient (DDP without ``find_unused_parameters``
  rejects those): ``blocks`` = 1 is that readout alone on the trunk's features.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ...errors import InputError
from ..nerf.ray_transformer import RayTransformer, attention_weights

KINDS = ("classes", "depth")


@dataclass
class RayTaskHeadConfig:
    kind: str = "classes"  # "classes" (logits (N, K)) or "depth" ((N,) attention-weighted t)
    num_classes: int = 0  # K, needed for kind="classes"
    blocks: int = 1  # ray-transformer blocks (our choice: 1, "more lightweight" than the trunk's 8)
    heads: int = 4  # GNT's ray-transformer heads
    ff_hidden: int | None = None  # feed-forward width; None = 4 x the trunk's dim (GNT's ratio)
    dropout: float = 0.1  # GNT's

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"ray_task_head.kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind == "classes" and int(self.num_classes) < 1:
            raise InputError(f"ray_task_head.num_classes must be >= 1 for kind='classes', got {self.num_classes}")
        for name in ("blocks", "heads"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"ray_task_head.{name} must be >= 1, got {getattr(self, name)}")
        if self.ff_hidden is not None and int(self.ff_hidden) < 1:
            raise InputError(f"ray_task_head.ff_hidden must be >= 1, got {self.ff_hidden}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise InputError(f"ray_task_head.dropout must be in [0, 1), got {self.dropout}")


class RayAttentionReadout(nn.Module):
    """The attention-weights part of a ray-transformer block: softmax(q_fc(LN x) k_fc(LN x)^T / sqrt(d))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.q_fc = nn.Linear(dim, dim, bias=False)
        self.k_fc = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, S, dim) -> attention (N, heads, S, S)."""
        x = self.attn_norm(x)
        return attention_weights(self.q_fc(x), self.k_fc(x), self.heads)  # (N, h, S, S)


class RayTaskHead(nn.Module):
    """Task ray-transformer block(s) on (N, S, dim) trunk features -> logits (N, K) or depth (N,)."""

    def __init__(self, cfg: RayTaskHeadConfig, dim: int):
        super().__init__()
        if int(dim) < 1 or dim % cfg.heads:
            raise InputError(f"RayTaskHead: dim must be >= 1 and divisible by heads {cfg.heads}, got {dim}")
        self.cfg, self.dim = cfg, dim
        full = cfg.blocks if cfg.kind == "classes" else cfg.blocks - 1
        self.blocks = nn.ModuleList(RayTransformer(dim, cfg.heads, cfg.ff_hidden, cfg.dropout) for _ in range(full))
        if cfg.kind == "classes":
            self.norm = nn.LayerNorm(dim)
            self.class_fc = nn.Linear(dim, cfg.num_classes)
        else:
            self.readout = RayAttentionReadout(dim, cfg.heads)

    def forward(self, features: Tensor, t: Tensor | None = None, return_weights: bool = False):
        """features (N, S, dim), t (N, S) (needed for kind="depth") -> logits (N, K) or depth (N,);
        with ``return_weights`` also the last block's attention, mean over heads, row 0 (N, S)."""
        if features.dim() != 3 or features.shape[-1] != self.dim:
            raise InputError(f"RayTaskHead: features must be (N, S, {self.dim}), got {tuple(features.shape)}")
        if self.cfg.kind == "depth":
            if t is None:
                raise InputError("RayTaskHead: t (N, S) sample distances are needed for kind='depth'")
            if tuple(t.shape) != tuple(features.shape[:2]):
                raise InputError(f"RayTaskHead: t must be (N, S) = {tuple(features.shape[:2])}, got {tuple(t.shape)}")
        x, attn = features, None
        for block in self.blocks:
            x, attn = block(x, return_attention=True)  # (N, S, dim), (N, h, S, S)
        if self.cfg.kind == "classes":
            out = self.class_fc(self.norm(x).mean(dim=1))  # (N, K)
        else:
            attn = self.readout(x)  # (N, h, S, S)
        weights = attn.mean(dim=1)[:, 0]  # (N, S)
        if self.cfg.kind == "depth":
            out = (weights * t).sum(dim=-1)  # (N,)
        return (out, weights) if return_weights else out
