"""Mask3D's depth encoder Psi_d: sparse depth patches -> feature vectors for the fusion bottleneck.

Mask3D (Hou et al., CVPR 2023), Sec. 3.1: depth patches are "concatenated with a positional embedding,
following the ViT architecture", the positional embedding "encodes the patch location by a cosine
function", and the encoders "are built by blocks composed of linear and norm layers". The paper gives
no width, depth or code (paper only: docs/references.md, Mask3D), so the layout here is ours:

- patch embedding: one ``nn.Linear(p*p*C, D)`` on :func:`renderssl.data.masking.patchify` patches
  (the same map as ViT's stride-p convolution, on the patches that are given only);
- position: the fixed 2D sin-cos table of MAE/ViT (``pos_embed.sincos_2d``, no class-token slot),
  *added* as ViT does (the paper's "concatenated" read as ViT's addition), not trained;
- ``depth`` pre-norm residual blocks ``x + fc2(GELU(fc1(LayerNorm(x))))`` (linear and norm layers only:
  no attention, so each depth patch is encoded on its own and the patches meet in the decoder);
- a final LayerNorm, then ``head``: ``nn.Linear(D, out_dim)`` when the bottleneck width ``out_dim``
  differs from ``D``, else the identity;
- MAE's initialisation (xavier-uniform Linear weights, zero biases, unit LayerNorms).

The depth encoder is used in pretraining only; it is never part of the exported encoder.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .pos_embed import sincos_2d
from .vit import init_transformer_weights


class MLPBlock(nn.Module):
    """Pre-norm residual MLP: x + fc2(GELU(fc1(norm(x))))."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.act = nn.GELU()
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class DepthPatchEncoder(nn.Module):
    """(B, n, p*p*C) depth patches at patch indices (B, n) -> (B, n, out_dim) features."""

    def __init__(self, patch_size: int, embed_dim: int, depth: int, grid: tuple[int, int], out_dim: int | None = None,
                 in_chans: int = 1, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.patch_size, self.in_chans, self.grid = patch_size, in_chans, tuple(grid)
        self.embed_dim = embed_dim
        self.patch_embed = nn.Linear(patch_size * patch_size * in_chans, embed_dim)
        self.register_buffer("pos_embed", sincos_2d(embed_dim, *self.grid, cls_token=False)[None], persistent=False)  # (1, L, D)
        self.blocks = nn.ModuleList(MLPBlock(embed_dim, mlp_ratio, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        out_dim = embed_dim if out_dim is None else out_dim
        self.head = nn.Identity() if out_dim == embed_dim else nn.Linear(embed_dim, out_dim)
        self.apply(init_transformer_weights)

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """(1, gh*gw, D) fixed sin-cos positions (regenerated for another grid than the configured one)."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        return sincos_2d(self.embed_dim, *grid, cls_token=False)[None].to(self.pos_embed)

    def forward(self, patches: Tensor, ids: Tensor, grid: tuple[int, int]) -> Tensor:
        """patches (B, n, p*p*C) of the patches ``ids`` (B, n) of a (gh, gw) grid -> (B, n, out_dim)."""
        pos = self.position_embedding(grid).expand(patches.shape[0], -1, -1)  # (B, L, D)
        pos = torch.gather(pos, 1, ids[..., None].expand(-1, -1, pos.shape[-1]))  # (B, n, D)
        x = self.patch_embed(patches) + pos  # (B, n, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
