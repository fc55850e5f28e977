"""The generalizable NeRF transformer trunk (GNT; NPS's backbone): interleaved view and ray transformers.

GNT (VITA-Group/GNT, ``gnt/transformer_network.py``, class ``GNT``) renders a target ray from the
projections of its S samples into V source views; NPS (Sec. 3.1-3.2) uses it unchanged, scaled up. Inputs,
flattened over the N target rays (the projector's output): ``rgb_feat`` (N, S, V, 3 + C) sampled colour
and CNN features, ``ray_diff`` (N, S, V, 4), ``mask`` (N, S, V) bool, ``points`` (N, S, 3) world positions,
``view_dirs`` (N, 3) target-ray directions, ``t`` (N, S) sample distances along the ray.

Mechanism:

1. tokens = ``rgbfeat_fc``(rgb_feat): Linear(3 + C, dim) - ReLU - Linear(dim, dim), per (sample, view).
2. q0 = max over views of the tokens, per channel. GNT takes the max over *all* V views (masked ones
   included, whose projected colour/features are zeros or border samples); our choice: the max over the
   unmasked views only, and q0 = 0 for a sample that no view sees.
3. ``depth`` blocks; block i: ``ViewTransformer`` (q attends over the sample's view tokens); if i is even,
   q = ``query_mlps[i]``([q, PE(points), PE(view_dirs)]) with Linear(dim + 2 * pe_dim, dim) - ReLU -
   Linear(dim, dim) (GNT's ``q_fcs``; odd blocks hold an Identity, so indices match GNT's); then a
   ``RayTransformer`` over the S samples of the ray.
4. Colour: ``norm`` (LayerNorm, torch's default eps 1e-5 as GNT) -> mean over samples -> ``rgb_fc``
   Linear(dim, 3). **No sigmoid and no volume rendering** (GNT): the colour is unbounded; the loss (MSE
   to [0, 1] pixels) keeps it in range.
5. Depth (GNT's ``ret_alpha``): a = the last ray transformer's attention averaged over heads, row 0 (what
   the first sample, the nearest one, attends to), a (N, S), each row sums to one; depth = sum_s t_s a_s.
   It is a convex combination of the sample distances, so it lies in [min t, max t]. It is only as
   meaningful as the emergent attention (GNT, NPS Sec. 1: "emergence of depth awareness"). Computed from
   the weights before dropout (GNT's are after dropout; ours sum to one in training too).

Positional encoding (GNT's ``Embedder``: include_input, log_sampling, max_freq_log2 = L - 1, L = 10):
PE(x) = [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)], each term 3-d, ordered by
frequency then sin before cos: 3 + 6 L = 63 dims for L = 10. No pi factor (GNT). The points are encoded
in world units as given (GNT; the data's scene scale matters). ``view_dirs`` are normalised here (GNT
normalises ``ray_d`` too).

Output (:class:`NeRFTransformerOutput`): ``rgb`` (N, 3), ``depth`` (N,), ``ray_weights`` (N, S) the a
above, ``features`` (N, S, dim) the per-sample features after the last block (before ``norm``), for the
task heads (``models/heads/ray_task_head.py``).

Sizes (:class:`NeRFTransformerConfig`, ``preset``):
- ``"gnt"``: GNT's ``gnt_full.txt``: netwidth (``dim``) 64, ``trans_depth`` 8, 4 heads, ff_hidden 4 x 64
  = 256, dropout 0.1, 10 frequencies, 32 CNN feature channels: 882,691 parameters.
- ``"nps"``: NPS's paper model (Sec. 4, Training details: "8 blocks for both view transformer and ray
  transformer, and a latent dimension of 768 for the MLP layer", 1.9M parameters). Reading "the MLP
  layer" as the feed-forward hidden width (768 = 12 x 64) at GNT's width 64 gives 1,939,459 parameters,
  matching the stated 1.9M (our reading; NPS's supplement is not public). A width of 768 would be far
  larger (~120M), so it is not the reading.
- ``"tiny"``: CPU minutes (our choice): dim 32, 2 blocks, 4 heads, ff_hidden 64, 6 frequencies.
Explicit fields override the preset's values.

GNT -> renderssl parameter names: ``rgbfeat_fc`` -> ``rgbfeat_fc``; ``view_trans.i`` ->
``view_transformers.i``; ``ray_trans.i`` -> ``ray_transformers.i``; ``q_fcs.i`` -> ``query_mlps.i``;
``norm``, ``rgb_fc`` unchanged; inside the blocks GNT's names are kept (see the two transformer modules).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from ..encoders.presets import apply_preset
from .ray_transformer import RayTransformer
from .view_transformer import ViewTransformer, check_view_inputs

PRESETS = {
    "tiny": dict(dim=32, depth=2, heads=4, ff_hidden=64, pe_frequencies=6),
    "gnt": dict(dim=64, depth=8, heads=4, ff_hidden=256, pe_frequencies=10),
    "nps": dict(dim=64, depth=8, heads=4, ff_hidden=768, pe_frequencies=10),
}


def positional_encoding(x: Tensor, num_frequencies: int) -> Tensor:
    """GNT's Embedder: (..., D) -> (..., D (1 + 2 L)): [x, sin(2^0 x), cos(2^0 x), ..., cos(2^(L-1) x)]."""
    if num_frequencies == 0:
        return x
    freqs = 2.0 ** torch.arange(num_frequencies, dtype=x.dtype, device=x.device)  # (L,)
    angles = x[..., None, :] * freqs[:, None]  # (..., L, D)
    periodic = torch.stack([angles.sin(), angles.cos()], dim=-2)  # (..., L, 2, D)
    return torch.cat([x, periodic.flatten(-3)], dim=-1)  # (..., D (1 + 2 L))


@dataclass
class NeRFTransformerConfig:
    preset: str | None = "gnt"  # fills dim / depth / heads / ff_hidden / pe_frequencies left at None
    dim: int | None = None  # GNT's netwidth
    depth: int | None = None  # GNT's trans_depth: view + ray transformer blocks
    heads: int | None = None  # ray-transformer heads (GNT: 4)
    ff_hidden: int | None = None  # feed-forward hidden width of both transformers (GNT: 4 x dim)
    pe_frequencies: int | None = None  # GNT: 10 (PE of 63 dims)
    feature_channels: int = 32  # C of rgb_feat (3 + C): GNT's coarse_feat_dim
    dropout: float = 0.1  # GNT: attention and feed-forward dropout

    def __post_init__(self):
        apply_preset(self, PRESETS, "nerf_transformer", ("dim", "depth", "heads", "ff_hidden", "pe_frequencies"))
        for name in ("dim", "depth", "heads", "ff_hidden"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"nerf_transformer.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim < 8:
            raise InputError(f"nerf_transformer.dim must be >= 8 (the view attention's MLPs are dim/8 wide), got {self.dim}")
        if self.dim % self.heads:
            raise InputError(f"nerf_transformer.dim {self.dim} is not divisible by heads {self.heads}")
        if int(self.pe_frequencies) < 0 or int(self.feature_channels) < 0:
            raise InputError("nerf_transformer.pe_frequencies and feature_channels must be >= 0, "
                             f"got {self.pe_frequencies} and {self.feature_channels}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise InputError(f"nerf_transformer.dropout must be in [0, 1), got {self.dropout}")

    @property
    def pe_dim(self) -> int:
        """Dims of PE of a 3-vector: 3 (1 + 2 L) (63 for GNT)."""
        return 3 * (1 + 2 * self.pe_frequencies)

    @property
    def in_channels(self) -> int:
        """Channels of ``rgb_feat``: 3 colour + ``feature_channels``."""
        return 3 + self.feature_channels


@dataclass
class NeRFTransformerOutput:
    rgb: Tensor  # (N, 3) unbounded colour
    depth: Tensor  # (N,) sum_s t_s ray_weights_s
    ray_weights: Tensor  # (N, S) last ray attention, mean over heads, row 0; sums to one
    features: Tensor  # (N, S, dim) per-sample features after the last block


class GeneralizableNeRFTransformer(nn.Module):
    """GNT's transformer: view tokens -> ``depth`` x (view transformer, query MLP on even blocks, ray
    transformer) -> colour, attention depth and per-sample features."""

    def __init__(self, cfg: NeRFTransformerConfig | None = None):
        super().__init__()
        cfg = NeRFTransformerConfig() if cfg is None else cfg
        self.cfg = cfg
        dim = cfg.dim
        self.rgbfeat_fc = nn.Sequential(nn.Linear(cfg.in_channels, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.view_transformers = nn.ModuleList(
            ViewTransformer(dim, cfg.ff_hidden, cfg.dropout) for _ in range(cfg.depth))
        self.query_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(dim + 2 * cfg.pe_dim, dim), nn.ReLU(), nn.Linear(dim, dim)) if i % 2 == 0
            else nn.Identity() for i in range(cfg.depth))
        self.ray_transformers = nn.ModuleList(
            RayTransformer(dim, cfg.heads, cfg.ff_hidden, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim)
        self.rgb_fc = nn.Linear(dim, 3)

    def check_inputs(self, rgb_feat, ray_diff, mask, points, view_dirs, t) -> None:
        where = "GeneralizableNeRFTransformer"
        if rgb_feat.dim() != 4 or rgb_feat.shape[-1] != self.cfg.in_channels:
            raise InputError(f"{where}: rgb_feat must be (N, S, V, 3 + C) with 3 + C = {self.cfg.in_channels}, "
                             f"got {tuple(rgb_feat.shape)}")
        check_view_inputs(where, None, rgb_feat, ray_diff, mask)
        N, S = rgb_feat.shape[:2]
        for name, tensor, want in (("points", points, (N, S, 3)), ("view_dirs", view_dirs, (N, 3)), ("t", t, (N, S))):
            if tuple(tensor.shape) != want:
                raise InputError(f"{where}: {name} must be {want}, got {tuple(tensor.shape)}")

    def initial_query(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """q0: max over the unmasked views per channel; 0 where no view sees the sample. (N, S, V, dim) -> (N, S, dim)."""
        lowest = torch.finfo(tokens.dtype).min
        q = tokens.masked_fill(~mask[..., None], lowest).amax(dim=2)  # (N, S, dim)
        return q.masked_fill(~mask.any(dim=-1)[..., None], 0.0)

    def forward(
        self, rgb_feat: Tensor, ray_diff: Tensor, mask: Tensor, points: Tensor, view_dirs: Tensor, t: Tensor,
    ) -> NeRFTransformerOutput:
        """rgb_feat (N, S, V, 3 + C), ray_diff (N, S, V, 4), mask (N, S, V) bool, points (N, S, 3),
        view_dirs (N, 3), t (N, S) -> :class:`NeRFTransformerOutput`."""
        self.check_inputs(rgb_feat, ray_diff, mask, points, view_dirs, t)
        L = self.cfg.pe_frequencies
        dirs = F.normalize(view_dirs, dim=-1)  # (N, 3)
        embed = torch.cat([
            positional_encoding(points, L),  # (N, S, pe_dim)
            positional_encoding(dirs, L)[:, None, :].expand(-1, points.shape[1], -1),  # (N, S, pe_dim)
        ], dim=-1)  # (N, S, 2 pe_dim)
        tokens = self.rgbfeat_fc(rgb_feat)  # (N, S, V, dim)
        q = self.initial_query(tokens, mask)  # (N, S, dim)
        attn = None
        for i, (view_tf, query_mlp, ray_tf) in enumerate(zip(self.view_transformers, self.query_mlps, self.ray_transformers)):
            q = view_tf(q, tokens, ray_diff, mask)  # (N, S, dim)
            if i % 2 == 0:
                q = query_mlp(torch.cat([q, embed], dim=-1))  # (N, S, dim)
            q, attn = ray_tf(q, return_attention=True)  # (N, S, dim), (N, h, S, S)
        ray_weights = attn.mean(dim=1)[:, 0]  # (N, S)
        rgb = self.rgb_fc(self.norm(q).mean(dim=1))  # (N, 3)
        depth = (ray_weights * t).sum(dim=-1)  # (N,)
        return NeRFTransformerOutput(rgb=rgb, depth=depth, ray_weights=ray_weights, features=q)
