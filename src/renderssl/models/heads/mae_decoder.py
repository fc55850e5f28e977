"""MAE's lightweight transformer decoder trunk: embed encoder tokens, add fixed sin-cos positions,
run pre-norm blocks, normalise. Shared by MAE (mask tokens at removed patches) and GMAE (learnable
query tokens appended)."""

from __future__ import annotations

from torch import Tensor, nn

from ..encoders.pos_embed import sincos_2d
from ..encoders.vit import Block, init_transformer_weights


class DecoderTrunk(nn.Module):
    def __init__(self, encoder_dim: int, dim: int, depth: int, num_heads: int, grid: tuple[int, int], mlp_ratio: float = 4.0):
        super().__init__()
        self.grid = grid
        self.decoder_embed = nn.Linear(encoder_dim, dim)
        self.decoder_pos_embed = nn.Parameter(sincos_2d(dim, *grid)[None], requires_grad=False)  # (1, 1 + L, dim)
        self.decoder_blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(init_transformer_weights)

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        if grid == self.grid:
            return self.decoder_pos_embed
        return sincos_2d(self.decoder_pos_embed.shape[-1], *grid)[None].to(self.decoder_pos_embed)

    def run_blocks(self, x: Tensor) -> Tensor:
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_norm(x)
