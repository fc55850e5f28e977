"""Epipolar sampling and the epipolar cross-view transformer (pixelSplat's design, used by GS³).

GS³ (arXiv 2411.18667, Sec. 3) refines the per-pixel features of two overlapping views with "an Epipolar
Transformer (Charatan et al. 2024), which performs cross-attention from one view to another"; the paper
gives no further detail, so the mechanism and defaults follow pixelSplat (dcharatan/pixelsplat,
``model/encoder/epipolar``), with the differences named below.

**Sampling** (:func:`epipolar_samples`). For every pixel centre of view a (OpenCV pinhole camera, K in
pixels, c2w), the ray ``o + t d`` with ``d`` of unit camera-z (so t is a's z-depth) is sampled at
``num_samples`` depths between ``near`` and ``far`` (both included), and each point is projected into
view b. A sample is valid when it lies in front of b (b's z-depth > ``MIN_DEPTH`` = 1e-6) and inside b's
image (0 <= u <= W, 0 <= v <= H: pixel edges, centres at j + 0.5 as in ``geometry.cameras``).

- Spacing: ``"inverse_depth"`` (default) or ``"depth"``. pixelSplat samples uniformly *in b's image* along
  the epipolar segment between the projected near and far points, after clipping the ray to b's frustum.
  Our choice is uniform in inverse depth: for a rectified pair (pure translation parallel to the image
  plane, same K) it is exactly uniform in b's image, as pixelSplat's, otherwise close to it, and unlike
  it stays defined when part of the segment lies behind b (those samples are simply masked); it is also
  MVSplat's cost-volume spacing. No frustum clipping (our choice): samples outside b are masked, not moved.
- Fixed sample positions, no jitter (our choice).

**Transformer** (:class:`EpipolarTransformer`). Input: the feature maps of the two views (B, 2, C, h, w)
with intrinsics *of the feature grid* (``Cameras.resized(w, h)`` of the image cameras; pixelSplat runs
at 1/4 of the image resolution after a strided conv, left to the caller), c2w and near/far per scene.
Each view queries the other (both directions in one batched pass):

- keys/values: b's features bilinearly sampled at a's epipolar samples (``grid_sample``,
  align_corners=False, zero padding, as pixelSplat), plus ``Linear(PE(r))`` of the sample's depth, where
  r = (1/near - 1/t) / (1/near - 1/far) is pixelSplat's relative disparity (0 at near, 1 at far; with the
  default spacing the samples are evenly spaced in r) and PE(r) = [sin(2π 2^k r), cos(2π 2^k r)],
  k < ``num_octaves`` (pixelSplat: 10 octaves); invalid samples are zeroed (pixelSplat) and masked out
  of the attention. Sampled once from the input features and reused by every layer (our choice).
- each layer (pre-norm): x += CrossAttention(LN(x), LN(kv)) with ``heads`` heads of ``dim_head`` each,
  masked softmax over the pixel's samples (a pixel with no valid sample gets a zero attention output);
  then x += MLP(LN(x)) (GELU). pixelSplat puts an image self-attention (patch 4) in the feed-forward
  slot; ours is a per-pixel MLP (our choice: light, and the encoder before it is convolutional).
- defaults: pixelSplat's 2 layers, 4 heads, d_dot 128 per head, d_mlp 256, 32 samples, width 128
  (GS³'s 128-d features). Tests use far smaller sizes.

The LayerNorm on the keys/values is our choice. Pinhole cameras only. The feature maps of both views are
refined; the output has the input's shape. A pixel whose epipolar samples all miss the other image gets
a zero attention output (only the projection bias) and the MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from ...geometry.cameras import Cameras
from ..encoders.vit import Mlp, init_transformer_weights

SPACINGS = ("inverse_depth", "depth")
MIN_DEPTH = 1e-6  # a sample is in front of view b when its z-depth in b exceeds this


@dataclass
class EpipolarSamples:
    """Samples along every pixel ray of view a, seen from view b."""

    xy: Tensor  # (B, H*W, S, 2) pixel coordinates (u, v) in view b; meaningless where not valid
    depth: Tensor  # (B, H*W, S) z-depth in view a of each sample
    valid: Tensor  # (B, H*W, S) bool: in front of b and inside b's image


def _per_scene(name: str, value, batch: int, like: Tensor) -> Tensor:
    """A float or (B,) tensor -> (B,) tensor of ``like``'s dtype and device."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise InputError(f"{name}: expected a float or a ({batch},) tensor, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name}: non-finite value(s)")
    return t


def sample_depths(near: Tensor, far: Tensor, num_samples: int, spacing: str = "inverse_depth") -> Tensor:
    """(B,) near and far -> (B, S) z-depths from near to far (both included), uniform in ``spacing``."""
    s = torch.linspace(0.0, 1.0, num_samples, dtype=near.dtype, device=near.device)  # (S,)
    if spacing == "depth":
        return near[:, None] + s * (far - near)[:, None]  # (B, S)
    return 1.0 / (1.0 / near[:, None] + s * (1.0 / far - 1.0 / near)[:, None])  # (B, S)


def relative_disparity(depth: Tensor, near: Tensor, far: Tensor) -> Tensor:
    """pixelSplat's relative disparity: (1/near - 1/depth) / (1/near - 1/far); depth (B, ...), near/far (B,)."""
    shape = (-1,) + (1,) * (depth.dim() - 1)
    inv_near, inv_far = 1.0 / near.reshape(shape), 1.0 / far.reshape(shape)
    return (inv_near - 1.0 / depth) / (inv_near - inv_far)


def epipolar_samples(
    K_a: Tensor, c2w_a: Tensor, K_b: Tensor, c2w_b: Tensor, H: int, W: int,
    near, far, num_samples: int, spacing: str = "inverse_depth",
) -> EpipolarSamples:
    """Every pixel ray of view a sampled between ``near`` and ``far`` and projected into view b.

    K_a, K_b: (B, 3, 3) pixels; c2w_a, c2w_b: (B, 4, 4) OpenCV camera-to-world; both views H x W;
    near, far: floats or (B,) tensors (a's z-depth). Pixels are in row-major order (index i * W + j).
    """
    for name, t, tail in (("K_a", K_a, (3, 3)), ("K_b", K_b, (3, 3)), ("c2w_a", c2w_a, (4, 4)), ("c2w_b", c2w_b, (4, 4))):
        if t.dim() != 3 or tuple(t.shape[1:]) != tail or t.shape[0] != K_a.shape[0]:
            raise InputError(f"epipolar_samples: {name} must be (B, {tail[0]}, {tail[1]}) with B = {K_a.shape[0]}, got {tuple(t.shape)}")
    if int(num_samples) < 2:
        raise InputError(f"epipolar_samples: num_samples must be >= 2, got {num_samples}")
    if spacing not in SPACINGS:
        raise InputError(f"epipolar_samples: spacing must be one of {SPACINGS}, got {spacing!r}")
    B = K_a.shape[0]
    near = _per_scene("epipolar_samples: near", near, B, K_a)
    far = _per_scene("epipolar_samples: far", far, B, K_a)
    if not bool((near > 0).all()) or not bool((far > near).all()):
        raise InputError("epipolar_samples: near and far need 0 < near < far for every scene")
    cams_a, cams_b = Cameras(K_a, c2w_a, W, H), Cameras(K_b, c2w_b, W, H)
    origins, dirs = cams_a.rays(normalize=False)  # (B, H, W, 3) each; dirs have unit z in a
    depth = sample_depths(near, far, int(num_samples), spacing)  # (B, S)
    points = origins.reshape(B, H * W, 1, 3) + depth[:, None, :, None] * dirs.reshape(B, H * W, 1, 3)  # (B, HW, S, 3)
    cam_b = cams_b.world_to_camera(points.reshape(B, -1, 3))  # (B, HW*S, 3)
    z_b = cam_b[..., 2]  # (B, HW*S)
    front = z_b > MIN_DEPTH
    safe = torch.cat([cam_b[..., :2], torch.where(front, z_b, torch.ones_like(z_b))[..., None]], dim=-1)  # (B, HW*S, 3)
    xy = cams_b.camera_to_pixels(safe)  # (B, HW*S, 2)
    inside = (xy[..., 0] >= 0) & (xy[..., 0] <= W) & (xy[..., 1] >= 0) & (xy[..., 1] <= H)
    S = depth.shape[1]
    return EpipolarSamples(
        xy=xy.reshape(B, H * W, S, 2),
        depth=depth[:, None, :].expand(B, H * W, S),
        valid=(front & inside).reshape(B, H * W, S),
    )


def sample_features(features: Tensor, xy: Tensor) -> Tensor:
    """Bilinear features (B, C, H, W) at pixel coordinates xy (B, N, S, 2) -> (B, N, S, C); zero outside."""
    H, W = features.shape[-2:]
    scale = torch.tensor([2.0 / W, 2.0 / H], dtype=xy.dtype, device=xy.device)
    grid = (xy * scale - 1.0).clamp(-2.0, 2.0)  # (B, N, S, 2), align_corners=False: pixel edges at +-1
    out = F.grid_sample(features, grid.to(features.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, N, S)
    return out.permute(0, 2, 3, 1)


def sincos_encoding(x: Tensor, num_octaves: int) -> Tensor:
    """x (...) -> (..., 2 * num_octaves): sin and cos of 2π 2^k x, k < num_octaves."""
    freqs = 2.0 * math.pi * 2.0 ** torch.arange(num_octaves, dtype=x.dtype, device=x.device)  # (O,)
    angles = x[..., None] * freqs  # (..., O)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@dataclass
class EpipolarTransformerConfig:
    dim: int = 128  # feature channels in and out (GS³: 128-d encoders)
    layers: int = 2  # pixelSplat
    heads: int = 4  # pixelSplat
    dim_head: int = 128  # pixelSplat's d_dot
    mlp_dim: int = 256  # pixelSplat's d_mlp
    num_samples: int = 32  # pixelSplat
    num_octaves: int = 10  # pixelSplat's depth encoding
    spacing: str = "inverse_depth"  # our choice (see module docstring); or "depth"

    def __post_init__(self):
        for name in ("dim", "layers", "heads", "dim_head", "mlp_dim", "num_octaves"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"EpipolarTransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.num_samples) < 2:
            raise InputError(f"EpipolarTransformerConfig.num_samples must be >= 2, got {self.num_samples}")
        if self.spacing not in SPACINGS:
            raise InputError(f"EpipolarTransformerConfig.spacing must be one of {SPACINGS}, got {self.spacing!r}")


class EpipolarCrossAttention(nn.Module):
    """Each query pixel attends over its own S epipolar samples; invalid samples are masked out."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.proj = nn.Linear(heads * dim_head, dim)

    def forward(self, x: Tensor, kv: Tensor, valid: Tensor) -> Tensor:
        """x (N, P, C) queries, kv (N, P, S, C) samples, valid (N, P, S) -> (N, P, C)."""
        q = self.to_q(x).unflatten(-1, (self.heads, self.dim_head))  # (N, P, h, d)
        k, v = self.to_kv(kv).unflatten(-1, (2, self.heads, self.dim_head)).unbind(-3)  # (N, P, S, h, d) each
        scores = torch.einsum("nphd,npshd->nphs", q, k) * self.dim_head ** -0.5  # (N, P, h, S)
        mask = valid[:, :, None, :]  # (N, P, 1, S)
        scores = scores.masked_fill(~mask, float("-inf"))
        scores = torch.where(mask.any(-1, keepdim=True), scores, torch.zeros_like(scores))  # no all -inf rows
        attn = scores.softmax(-1) * mask  # (N, P, h, S); zero rows where no sample is valid
        out = torch.einsum("nphs,npshd->nphd", attn, v)  # (N, P, h, d)
        return self.proj(out.flatten(-2))


class EpipolarLayer(nn.Module):
    """Pre-norm: x + CrossAttention(LN(x), LN(kv)), then x + MLP(LN(x))."""

    def __init__(self, cfg: EpipolarTransformerConfig):
        super().__init__()
        self.norm_q = nn.LayerNorm(cfg.dim)
        self.norm_kv = nn.LayerNorm(cfg.dim)
        self.attn = EpipolarCrossAttention(cfg.dim, cfg.heads, cfg.dim_head)
        self.norm_mlp = nn.LayerNorm(cfg.dim)
        self.mlp = Mlp(cfg.dim, cfg.mlp_dim)

    def forward(self, x: Tensor, kv: Tensor, valid: Tensor) -> Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(kv), valid)  # (N, P, C)
        return x + self.mlp(self.norm_mlp(x))


class EpipolarTransformer(nn.Module):
    """Cross-view refinement of two views' feature maps along epipolar lines (module docstring)."""

    def __init__(self, cfg: EpipolarTransformerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or EpipolarTransformerConfig()
        self.depth_embed = nn.Linear(2 * cfg.num_octaves, cfg.dim)
        self.blocks = nn.ModuleList(EpipolarLayer(cfg) for _ in range(cfg.layers))
        self.apply(init_transformer_weights)

    def keys(self, features: Tensor, K: Tensor, c2w: Tensor, near: Tensor, far: Tensor) -> tuple[Tensor, Tensor]:
        """Keys/values of each view's queries: features (B, 2, C, h, w) -> kv (2B, hw, S, C), valid (2B, hw, S);
        row 2b + v holds view v's pixels sampling view 1 - v of scene b."""
        B, V, C, h, w = features.shape
        other = torch.tensor([1, 0], device=features.device)
        near2, far2 = near.repeat_interleave(V), far.repeat_interleave(V)  # (2B,)
        samples = epipolar_samples(
            K.reshape(B * V, 3, 3), c2w.reshape(B * V, 4, 4),
            K[:, other].reshape(B * V, 3, 3), c2w[:, other].reshape(B * V, 4, 4),
            h, w, near2, far2, self.cfg.num_samples, self.cfg.spacing,
        )
        sampled = sample_features(features[:, other].reshape(B * V, C, h, w), samples.xy)  # (2B, hw, S, C)
        r = relative_disparity(samples.depth, near2, far2).to(features.dtype)  # (2B, hw, S)
        kv = sampled + self.depth_embed(sincos_encoding(r, self.cfg.num_octaves))  # (2B, hw, S, C)
        return kv * samples.valid[..., None], samples.valid

    def forward(self, features: Tensor, K: Tensor, c2w: Tensor, near, far) -> Tensor:
        """features (B, 2, C, h, w); K (B, 2, 3, 3) in pixels of the h x w feature grid; c2w (B, 2, 4, 4);
        near, far: floats or (B,) tensors (z-depth) -> refined features (B, 2, C, h, w)."""
        if features.dim() != 5 or features.shape[1] != 2 or features.shape[2] != self.cfg.dim:
            raise InputError(f"EpipolarTransformer: features must be (B, 2, {self.cfg.dim}, h, w), got {tuple(features.shape)}")
        B, V, C, h, w = features.shape
        if tuple(K.shape) != (B, V, 3, 3) or tuple(c2w.shape) != (B, V, 4, 4):
            raise InputError(f"EpipolarTransformer: K must be ({B}, 2, 3, 3) and c2w ({B}, 2, 4, 4), got {tuple(K.shape)} and {tuple(c2w.shape)}")
        geo = K.to(torch.promote_types(K.dtype, torch.float32))
        near = _per_scene("EpipolarTransformer: near", near, B, geo)
        far = _per_scene("EpipolarTransformer: far", far, B, geo)
        kv, valid = self.keys(features, geo, c2w.to(geo.dtype), near, far)  # (2B, hw, S, C), (2B, hw, S)
        x = features.reshape(B * V, C, h * w).transpose(1, 2)  # (2B, hw, C)
        for block in self.blocks:
            x = block(x, kv, valid)
        return x.transpose(1, 2).reshape(B, V, C, h, w)
