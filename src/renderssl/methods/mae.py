"""MAE (He et al. 2022), the baseline the rendering recipes are measured against.

As facebookresearch/mae's ``models_mae.py``: random masking by sorted noise, the encoder on visible
patches only, a decoder that appends mask tokens, unshuffles, adds its own fixed sin-cos positions and
predicts every patch's pixels; the loss is the MSE on removed patches, optionally against per-patch
normalised targets (``norm_pix_loss``, unbiased variance + 1e-6 as MAE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..data.masking import mask_to_pixels, patchify, random_masking, unpatchify
from ..models.encoders.vit import ViTConfig, VisionTransformer
from ..models.heads.mae_decoder import DecoderTrunk
from .base import Method, MethodOutput, StepContext


@dataclass
class MAEConfig:
    encoder: ViTConfig = field(default_factory=ViTConfig)
    mask_ratio: float = 0.75
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    norm_pix_loss: bool = False


def norm_pix_target(target: Tensor) -> Tensor:
    """Per-patch normalised targets (B, L, P): (t - mean) / sqrt(var + 1e-6), unbiased var as MAE."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + 1.0e-6) ** 0.5


def masked_mean(per_patch: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, L) per-patch losses over removed patches (mask 1)."""
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)


class MAE(Method):
    config_class = MAEConfig

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        self.encoder = VisionTransformer(config.encoder)
        enc = config.encoder
        self.decoder = DecoderTrunk(enc.embed_dim, config.decoder_embed_dim, config.decoder_depth, config.decoder_num_heads, enc.grid_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_embed_dim))
        self.decoder_pred = nn.Linear(config.decoder_embed_dim, enc.patch_size**2 * enc.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.xavier_uniform_(self.decoder_pred.weight)
        nn.init.zeros_(self.decoder_pred.bias)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.cls_token", "encoder.pos_embed", "mask_token", "decoder.decoder_pos_embed"}


    def forward_encoder(self, images: Tensor, generator: torch.Generator | None):
        """-> (latent (B, 1 + n_keep, D), PatchMask)."""
        tokens = self.encoder.embed_patches(images)  # (B, L, D)
        mask = random_masking(tokens.shape[0], tokens.shape[1], self.config.mask_ratio, generator, tokens.device)
        return self.encoder.forward_tokens(mask.gather_visible(tokens)), mask

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, 1 + n_keep, D) -> per-patch pixel predictions (B, L, p*p*C)."""
        x = self.decoder.fill_masked(latent, self.mask_token, ids_restore, grid)  # (B, 1 + L, Dd)
        return self.decoder_pred(self.decoder.run_blocks(x)[:, 1:])

    def forward_loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        target = patchify(images, self.config.encoder.patch_size)  # (B, L, p*p*C)
        if self.config.norm_pix_loss:
            target = norm_pix_target(target)
        return masked_mean(((pred - target) ** 2).mean(dim=-1), mask)

    def forward(self, batch: dict, ctx: StepContext = StepContext()) -> MethodOutput:
        images = batch["image"]  # (B, 3, H, W)
        grid = self.encoder.grid_for(images)
        latent, mask = self.forward_encoder(images, ctx.generator)
        pred = self.forward_decoder(latent, mask.ids_restore, grid)
        loss = self.forward_loss(images, pred, mask.mask)
        p = self.config.encoder.patch_size
        with torch.no_grad():
            recon = pred
            if self.config.norm_pix_loss:  # show predictions in the image's own patch statistics
                target = patchify(images, p)
                recon = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
            recon = unpatchify(recon, p, grid, images.shape[1]).clamp(0, 1)
            pix = mask_to_pixels(mask.mask, p, grid)
            renders = {"input": images, "masked": images * (1 - pix), "reconstruction": recon,
                       "reconstruction + visible": recon * pix + images * (1 - pix)}
        return MethodOutput(loss, {"mse_masked": loss.detach()}, renders)
