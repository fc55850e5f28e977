"""Vision Transformer with timm's ``VisionTransformer`` parameter names (class token, fixed 2D sin-cos
position embedding as in MAE, pre-norm blocks, scaled-dot-product attention).

A state dict of :class:`VisionTransformer` loads into ``timm.create_model("vit_<preset>_patch16_224",
num_classes=0)`` (same keys and shapes for the same preset, image size and patch size), and the other
way round. The position embedding is a frozen parameter (``requires_grad=False``), as MAE keeps it, so
it is saved under timm's ``pos_embed`` key; for a different patch grid than the configured one the
sin-cos table is regenerated, so one encoder runs at any image size divisible by the patch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from .presets import apply_preset
from .pos_embed import sincos_2d

PRESETS = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


@dataclass
class ViTConfig:
    preset: str | None = "base"  # fills embed_dim / depth / num_heads unless given explicitly
    img_size: tuple[int, int] | int = 224  # (H, W) of the pretraining images
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self):
        apply_preset(self, PRESETS, "vit", ("embed_dim", "depth", "num_heads"))
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(v) for v in self.img_size)
        if any(s % self.patch_size for s in self.img_size):
            raise InputError(f"vit.img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise InputError(f"vit.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, D) row-major patch tokens."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)  # (B, h, N, d) each
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """ViT encoder. ``forward_features(x)`` -> (B, 1 + N, D) normed tokens (class token first)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        D = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(sincos_2d(D, *config.grid_size)[None], requires_grad=False)  # (1, 1 + N, D)
        self.blocks = nn.ModuleList(
            Block(D, config.num_heads, config.mlp_ratio, config.qkv_bias, config.norm_eps) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_transformer_weights)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def grid_for(self, x: Tensor) -> tuple[int, int]:
        """Patch grid (gh, gw) of images x (B, C, H, W); raises if H, W are not multiples of the patch."""
        H, W = x.shape[-2:]
        p = self.config.patch_size
        if H % p or W % p or x.shape[1] != self.config.in_chans:
            raise InputError(
                f"ViT: input {tuple(x.shape)} needs {self.config.in_chans} channels and a size divisible by patch {p}"
            )
        return H // p, W // p

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """(1, 1 + gh*gw, D): the stored table for the configured grid, else a regenerated one."""
        if grid == self.config.grid_size:
            return self.pos_embed
        return sincos_2d(self.embed_dim, *grid)[None].to(self.pos_embed)

    def embed_patches(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, D) patch tokens with position embedding (no class token)."""
        pos = self.position_embedding(self.grid_for(x))
        return self.patch_embed(x) + pos[:, 1:]

    def forward_tokens(self, tokens: Tensor) -> Tensor:
        """(B, n, D) embedded patch tokens (any subset) -> (B, 1 + n, D) after blocks and norm."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1 + N, D)."""
        return self.forward_tokens(self.embed_patches(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D) class-token feature."""
        return self.forward_features(x)[:, 0]

    def patch_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D, gh, gw) patch-token feature map for dense heads."""
        gh, gw = self.grid_for(x)
        tokens = self.forward_features(x)[:, 1:]  # (B, N, D)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
