"""MAE's lightweight transformer decoder trunk: embed encoder tokens, add fixed sin-cos positions,
run pre-norm blocks, normalise. Shared by MAE and Mask3D (:meth:`DecoderTrunk.fill_masked`: mask tokens
at the removed patches, patch order restored) and GMAE (:meth:`DecoderTrunk.embed_visible`: the kept
patches at their positions, learnable query tokens appended by the method)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...data.masking import unshuffle

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

    def fill_masked(self, latent: Tensor, mask_token: Tensor, ids_restore: Tensor, grid: tuple[int, int]) -> Tensor:
        """Decoder input of a masked image: (B, 1 + n, D) encoder tokens (class token, then the n kept
        patches in keep order) -> (B, 1 + L, Dd): embedded, ``mask_token`` (1, 1, Dd) at the L - n removed
        patches, patch order restored by ``ids_restore`` (B, L), fixed positions added (class token: slot 0)."""
        x = self.decoder_embed(latent)  # (B, 1 + n, Dd)
        L = ids_restore.shape[1]
        masks = mask_token.to(x.dtype).expand(x.shape[0], L + 1 - x.shape[1], -1)  # (B, L - n, Dd)
        patches = unshuffle(torch.cat([x[:, 1:], masks], dim=1), ids_restore)  # (B, L, Dd) patch order
        return torch.cat([x[:, :1], patches], dim=1) + self.position_embedding(grid)

    def embed_visible(self, latent: Tensor, ids_keep: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, 1 + n, D) encoder tokens -> (B, 1 + n, Dd) embedded, each kept patch ``ids_keep`` (B, n) at
        its own fixed position (class token: slot 0); no mask tokens."""
        x = self.decoder_embed(latent)  # (B, 1 + n, Dd)
        pos = self.position_embedding(grid).expand(x.shape[0], -1, -1)  # (B, 1 + L, Dd)
        pos_visible = torch.gather(pos[:, 1:], 1, ids_keep[..., None].expand(-1, -1, pos.shape[-1]))  # (B, n, Dd)
        return x + torch.cat([pos[:, :1], pos_visible], dim=1)
