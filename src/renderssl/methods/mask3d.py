"""Mask3D (Hou et al., CVPR 2023): pretrain a colour ViT by completing dense depth from sparse RGB-D.

The paper (docs/references.md) is the only source: no code was released (docs/references.md,
Mask3D: paper only). Each default below is quoted from it; everything it leaves open is listed as
our choice.

From the paper
--------------
- Input: one RGB-D frame F = (C, D), no poses (Sec. 3.1). "a 240x320 RGB image C is uniformly divided
  into 300 16x16 patches" -> the encoder defaults to img_size (240, 320), patch 16 (ViT-B: "We use a
  ViT-B backbone", Sec. 4.1 Implementation Details).
- Masks: keep a fraction p_c of the colour patches, and a fraction p_d of depth patches "such that the
  resulting depth patches do not coincide with the RGB patches in M_c" (Sec. 3.1; "there are no
  duplicate patches representing the same patch location"). Defaults ``rgb_keep = depth_keep = 0.2``:
  "masking more RGB values (keeping 20%), which in combination with the heavy depth masking (keeping
  20%) leads to the best performance" (Sec. 4.5, Tab. 8 / Tab. 13: 66.7 mIoU).
- Two encoders Psi_c, Psi_d "to separately encode RGB and depth signals"; patches get a positional
  embedding that "encodes the patch location by a cosine function"; the encoders "are built by blocks
  composed of linear and norm layers" (Sec. 3.1). Psi_c is the colour ViT (``encoder``: the product);
  Psi_d is :class:`~renderssl.models.encoders.depth_patch.DepthPatchEncoder`.
- Fusion: "The features from Psi_c and Psi_d are then fused in the bottleneck"; locations with neither
  an RGB nor a depth patch get "patches of constant values as mask tokens to create a placeholder in
  the bottleneck"; RGB features, depth features and mask tokens "form the input to the decoder", which
  reconstructs "dense depth at the original image resolution" (Sec. 3.1).
- Loss: "an l2 reconstruction loss. Similar to MAE, we normalize the output patches as well as the
  target patches prior to computing the loss" (Sec. 3.1 Pre-training Loss); the normalisation gives
  +0.8 mIoU (Sec. 4.5) -> ``norm_depth_loss = True``; both prediction and target are normalised
  (unlike MAE's norm_pix_loss, which normalises the target only).
- ``reconstruct_rgb`` (RGB + depth reconstruction) is the paper's ablation, off by default: Tab. 10,
  RGB+Depth 65.6 < Depth 66.7 mIoU.
- Stage I: the colour encoder starts from self-supervised MAE weights ("we initialize with weights
  obtained by self-supervised ImageNet pre-training [19]", Sec. 4.1; App. B Tab. 16: MAE -> Mask3D
  66.3 > MAE + Mask3D 63.3). ``init_from`` / :meth:`Mask3D.load_stage1` load them; None = random init
  (the paper's "No Stage-I pre-training" ablation, Tab. 9).
- "the depth encoder is trained only during pre-training, and only the color ViT encoder (and decoder,
  if applicable) are used for downstream fine-tuning" (Sec. 3.1): ``encoder`` is the colour ViT alone,
  and :meth:`encoder_config` describes it, so ``export_encoder`` writes no depth-encoder weight.
- Optimisation (Sec. 4.1, for the presets): SGD, lr 0.1, effective batch 128 (64 x 2 accumulated), lr
  x 0.99 every 1000 steps, 100 epochs; ScanNet frames, every 25th. renderssl's trainer has AdamW +
  warm-up/cosine only, so ``configs/mask3d_base.yaml`` keeps the batch, epochs and data but not the
  optimiser (see its header).

Our choices (the paper is silent)
---------------------------------
- Counts: n_rgb = int(L p_c), n_depth = int(L p_d) (p_d is a fraction of the whole frame, "M_d is
  created similarly"); when p_c + p_d > 1 the depth patches are all L - n_rgb remaining ones (the paper's
  Tab. 13 lists such pairs, e.g. 100% RGB + 20% depth; with p_c = 100% no depth patch can be disjoint,
  matching "100% RGB ratio and 0% depth ratio is equivalent to a pure depth prediction").
- Depth encoder (``models/encoders/depth_patch.py``): a Linear patch embedding + fixed sin-cos
  position (added, as ViT), ``depth_encoder_depth`` (2) pre-norm residual MLP blocks (LayerNorm, Linear,
  GELU, Linear; mlp ratio 4), a final LayerNorm, no attention and no class token; width
  ``depth_encoder_dim`` (None = the colour width), projected to the colour width when different so both
  feature sets enter the same bottleneck.
- Fusion / decoder: MAE's lightweight decoder (512-d, 8 blocks, 16 heads; ``DecoderTrunk``). The
  sequence [colour class token, colour features, depth features] goes through one shared
  ``decoder_embed``; mask tokens fill the uncovered places; the sequence is unshuffled to patch order
  and gets the decoder's fixed sin-cos positions (class token: the zero slot); no modality embedding.
  A Linear head predicts p*p depth values per patch (optionally p*p*3 colours).
- Mask tokens: ``mask_token = "fixed"`` (default, the paper's "patches of constant values"): a constant
  zero vector at the decoder width, not trained (only the decoder position tells places apart);
  ``"learned"``: MAE's trained token, N(0, 0.02).
- Depth values: z-depth in metres; a pixel is valid when finite and > 0 (0 = invalid, the datasets'
  convention). Input and target are ``min(d, depth_max) / depth_max`` with ``depth_max`` = 10 m (about the
  range of ScanNet's sensor); invalid pixels are set to 0 in the depth encoder's input (0 is never a
  valid value, so it marks holes) and are left out of the loss and of the per-patch statistics.
- Loss: on every patch (``depth_loss_on = "all"``: the paper's dense depth); ``"masked"`` = only the
  patches whose depth was not given. Per patch: mean over its valid pixels of (pred - target)^2, with,
  when normalised, pred and target each standardised by their own mean and unbiased variance (+ 1e-6,
  as MAE) over the valid pixels; then the mean over patches. Patches with fewer than 2 valid pixels
  (normalised) or none (plain) do not count.
- RGB term (``reconstruct_rgb``): MAE's colour loss on the patches whose colour was removed, with the
  same normalisation switch, weighted by ``rgb_loss_weight`` (1.0) and added to the depth loss.
- Stage I (:func:`stage1_encoder_state`): a run folder (its ``encoder/`` export, else
  ``checkpoints/last.pt``), an exported encoder (folder, ``encoder.json`` or ``.safetensors``), or a
  weight file: a renderssl checkpoint ('encoder.*' keys of ``model``) or a bare ViT state dict with timm
  names (e.g. facebookresearch/mae's ``mae_pretrain_vit_base.pth``; keys the ViT lacks, such as MAE
  decoder weights, are ignored and returned). Every ViT key except ``pos_embed`` must be present with
  its shape (else InputError); ``pos_embed`` is the fixed sin-cos table and is kept as built when its
  grid differs (e.g. 224x224 MAE weights into a 240x320 Mask3D). ``init_from`` is read when the method
  is built, so the file must exist then.
- Previews: colour input, masked colour (removed patches black), masked depth, predicted depth and
  target depth in metres, colourised by ``viz.colorize_depth_batch`` with one range per sample (the
  2-98% percentiles of the valid target depth), so the three depth panels are comparable. With a
  normalised loss the prediction is shown in each patch's target statistics (as MAE's previews), black
  where a patch has no valid target.
- Batches: ``{"rgb": (B, 3, H, W) in [0, 1], "depth": (B, 1, H, W)}``; :func:`renderssl.experiment.pretraining_data`
  gives such samples from ``data`` (RGBDFrameDataset over the train scenes, resized to data.height x
  data.width: colour antialiased bilinear, depth nearest so no invalid pixel leaks into a valid one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data.masking import RGBDMasks, disjoint_rgbd_masks, keep_count, mask_to_pixels, patchify, unpatchify
from ..errors import InputError
from ..models.encoders.depth_patch import DepthPatchEncoder
from ..models.encoders.vit import ViTConfig, VisionTransformer
from ..models.heads.mae_decoder import DecoderTrunk
from .base import Method, MethodOutput, StepContext
from ..viz import colorize_depth_batch, scalar_range

MASK_TOKENS = ("fixed", "learned")
DEPTH_LOSS_ON = ("all", "masked")
MIN_VALID_NORM = 2  # valid pixels a patch needs for a (unbiased) per-patch variance


@dataclass
class Mask3DConfig:
    encoder: ViTConfig = field(default_factory=lambda: ViTConfig(preset="base", img_size=(240, 320), patch_size=16))
    rgb_keep: float = 0.2  # p_c, fraction of the L patches given as colour
    depth_keep: float = 0.2  # p_d, fraction of the L patches given as depth (disjoint from the colour ones)
    depth_encoder_dim: int | None = None  # None = the colour encoder's width
    depth_encoder_depth: int = 2  # residual Linear/LayerNorm blocks
    depth_encoder_mlp_ratio: float = 4.0
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mask_token: str = "fixed"  # fixed (constant zeros, the paper's "patches of constant values") | learned (MAE)
    norm_depth_loss: bool = True  # per-patch normalised prediction and target (paper Sec. 3.1)
    depth_loss_on: str = "all"  # all (dense depth) | masked (patches whose depth was not given)
    reconstruct_rgb: bool = False  # the paper's RGB + depth ablation (Tab. 10)
    rgb_loss_weight: float = 1.0
    depth_max: float = 10.0  # metres; depth is min(d, depth_max) / depth_max for input and target
    init_from: str | None = None  # Stage I: MAE run folder, checkpoint or exported encoder; None = random

    def __post_init__(self):
        if not 0.0 < self.rgb_keep <= 1.0 or not 0.0 <= self.depth_keep <= 1.0:
            raise InputError(f"mask3d: rgb_keep must be in (0, 1] and depth_keep in [0, 1], got {self.rgb_keep}, {self.depth_keep}")
        if self.mask_token not in MASK_TOKENS:
            raise InputError(f"mask3d.mask_token: {self.mask_token!r} is not one of {list(MASK_TOKENS)}")
        if self.depth_loss_on not in DEPTH_LOSS_ON:
            raise InputError(f"mask3d.depth_loss_on: {self.depth_loss_on!r} is not one of {list(DEPTH_LOSS_ON)}")
        if self.depth_max <= 0 or self.depth_encoder_depth < 0 or (self.depth_encoder_dim is not None and self.depth_encoder_dim % 4):
            raise InputError("mask3d: depth_max > 0, depth_encoder_depth >= 0 and a depth_encoder_dim divisible by 4 are required")
        if self.encoder.in_chans != 3:
            raise InputError(f"mask3d.encoder.in_chans must be 3 (the colour ViT), got {self.encoder.in_chans}")


# ---- depth and losses ----------------------------------------------------------------------------


def valid_depth(depth: Tensor) -> Tensor:
    """(B, 1, H, W) z-depth -> bool mask of valid pixels (finite and > 0; 0 = invalid)."""
    return torch.isfinite(depth) & (depth > 0)


def normalise_depth(depth: Tensor, valid: Tensor, depth_max: float) -> Tensor:
    """Metres -> min(d, depth_max) / depth_max in (0, 1]; invalid pixels 0."""
    return torch.where(valid, depth.clamp(max=depth_max) / depth_max, torch.zeros_like(depth))


def masked_patch_standardise(x: Tensor, valid: Tensor, eps: float = 1.0e-6) -> Tensor:
    """(B, L, P) values, (B, L, P) 0/1 validity -> (x - mean) / sqrt(var + eps) per patch, with mean and
    unbiased variance over the valid entries only (invalid entries come out 0)."""
    n = valid.sum(-1, keepdim=True)  # (B, L, 1)
    x = torch.where(valid > 0, x, torch.zeros_like(x))
    mean = x.sum(-1, keepdim=True) / n.clamp(min=1)
    var = (((x - mean) * valid) ** 2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)
    return (x - mean) / (var + eps) ** 0.5 * valid


def depth_patch_loss(pred: Tensor, target: Tensor, valid: Tensor, patch_mask: Tensor, normalise: bool) -> Tensor:
    """l2 between per-patch predictions and targets (B, L, P) on valid entries (B, L, P) of the patches
    selected by ``patch_mask`` (B, L): per patch the mean over its valid entries, then the mean over the
    patches that have enough valid entries (>= 2 when normalising, >= 1 otherwise)."""
    valid = valid.to(pred.dtype)
    n = valid.sum(-1)  # (B, L)
    target = torch.where(valid > 0, target, torch.zeros_like(target))  # no NaN from invalid pixels
    if normalise:
        pred, target = masked_patch_standardise(pred, valid), masked_patch_standardise(target, valid)
    per_patch = (((pred - target) ** 2) * valid).sum(-1) / n.clamp(min=1)  # (B, L)
    weight = patch_mask * (n >= (MIN_VALID_NORM if normalise else 1)).to(pred.dtype)  # (B, L)
    return (per_patch * weight).sum() / weight.sum().clamp(min=1)


def norm_pix_both(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-patch standardised (B, L, P) prediction and target (unbiased var + 1e-6)."""
    def standardise(t: Tensor) -> Tensor:
        return (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1.0e-6) ** 0.5

    return standardise(pred), standardise(target)


# ---- Stage I ---------------------------------------------------------------------------------------


def stage1_encoder_state(path) -> dict[str, Tensor]:
    """Colour-encoder weights (timm names) from a ``renderssl pretrain`` run folder, an exported encoder
    (folder, ``encoder.json`` or ``.safetensors`` with its json), a renderssl checkpoint (its 'encoder.*'
    keys) or a bare ViT state dict file."""
    from ..models.weights import META_NAME, encoder_state_from_checkpoint, load_state_dict_file, read_encoder_info

    path = Path(path)
    if not path.exists():
        raise InputError(f"mask3d.init_from: {path} does not exist")
    if path.is_dir():
        if (path / META_NAME).is_file():
            return stage1_encoder_state(path / META_NAME)
        if (path / "encoder" / META_NAME).is_file():  # a run folder's export
            return stage1_encoder_state(path / "encoder" / META_NAME)
        if (path / "checkpoints" / "last.pt").is_file():
            return stage1_encoder_state(path / "checkpoints" / "last.pt")
        raise InputError(f"mask3d.init_from: {path} holds neither {META_NAME}, encoder/{META_NAME} nor checkpoints/last.pt")
    if path.suffix == ".json" or (path.suffix == ".safetensors" and path.with_suffix(".json").is_file()):
        meta = read_encoder_info(path)
        if meta["architecture"] != "vit":
            raise InputError(f"mask3d.init_from: {meta['_path']} is a {meta['architecture']} encoder, not a ViT")
        return load_state_dict_file(Path(meta["_path"]).parent / meta.get("weights", "encoder.safetensors"))
    state = load_state_dict_file(path)
    if any(k.startswith("encoder.") for k in state):
        return encoder_state_from_checkpoint(state)
    return state


# ---- the method --------------------------------------------------------------------------------------


class Mask3D(Method):
    config_class = Mask3DConfig
    stage_fields = ("init_from",)  # Stage I: a run folder, a weight file or pretrain:<preset>
    sample_type = "rgbd"  # trains on RGB-D frames {"rgb", "depth"} (experiment.pretraining_data)

    def __init__(self, config: Mask3DConfig):
        super().__init__()
        self.config = config
        enc = config.encoder
        p, D, Dd = enc.patch_size, enc.embed_dim, config.decoder_embed_dim
        self.encoder = VisionTransformer(enc)  # Psi_c, the product
        self.depth_encoder = DepthPatchEncoder(p, config.depth_encoder_dim or D, config.depth_encoder_depth, enc.grid_size,
                                               out_dim=D, mlp_ratio=config.depth_encoder_mlp_ratio)  # Psi_d
        self.decoder = DecoderTrunk(D, Dd, config.decoder_depth, config.decoder_num_heads, enc.grid_size)
        if config.mask_token == "learned":
            self.mask_token = nn.Parameter(torch.randn(1, 1, Dd) * 0.02)
        else:
            self.register_buffer("mask_token", torch.zeros(1, 1, Dd), persistent=False)
        self.depth_pred = nn.Linear(Dd, p * p)
        self.rgb_pred = nn.Linear(Dd, p * p * 3) if config.reconstruct_rgb else None
        for head in (self.depth_pred, self.rgb_pred):
            if head is not None:
                nn.init.xavier_uniform_(head.weight)
                nn.init.zeros_(head.bias)
        L = enc.grid_size[0] * enc.grid_size[1]
        n_rgb = keep_count(L, config.rgb_keep)
        n_depth = min(keep_count(L, config.depth_keep), L - n_rgb)
        # DDP: the depth encoder is idle without depth patches, a learned mask token without uncovered patches
        self.ddp_find_unused_parameters = n_depth == 0 or (config.mask_token == "learned" and n_rgb + n_depth == L)
        if config.init_from is not None:
            if config.init_from.startswith("pretrain:"):
                raise InputError(f"mask3d.init_from={config.init_from}: an earlier run to make first; renderssl pretrain "
                                 "(experiment.resolve_stages) runs it and passes its folder")
            self.load_stage1(config.init_from)

    def no_weight_decay(self) -> set[str]:
        names = {"encoder.cls_token", "encoder.pos_embed", "decoder.decoder_pos_embed"}
        return names | ({"mask_token"} if self.config.mask_token == "learned" else set())


    def load_stage1(self, path) -> list[str]:
        """Put Stage-I colour-encoder weights (see :func:`stage1_encoder_state`) into ``encoder``; returns
        the ignored keys of the file (those the ViT does not have)."""
        state = stage1_encoder_state(path)
        own = self.encoder.state_dict()
        if "pos_embed" in state and tuple(state["pos_embed"].shape) != tuple(own["pos_embed"].shape):
            state = {k: v for k, v in state.items() if k != "pos_embed"}  # fixed sin-cos: ours is the same function
        missing = [k for k in own if k not in state and k != "pos_embed"]
        bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
        if missing or bad:
            raise InputError(f"mask3d.init_from {path}: not this colour ViT ({self.config.encoder}): "
                             f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}; shape mismatches {bad[:5]}")
        self.encoder.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
        return sorted(k for k in state if k not in own)

    # ---- the model -------------------------------------------------------------------------------
    def make_masks(self, batch: int, length: int, generator: torch.Generator | None, device,
                   rgb_keep: float | None = None, depth_keep: float | None = None) -> RGBDMasks:
        c = self.config
        return disjoint_rgbd_masks(batch, length, c.rgb_keep if rgb_keep is None else rgb_keep,
                                   c.depth_keep if depth_keep is None else depth_keep, generator, device)

    def forward_encoders(self, rgb: Tensor, depth_in: Tensor, masks: RGBDMasks, grid: tuple[int, int]) -> Tensor:
        """Colour patches through Psi_c, depth patches through Psi_d -> (B, 1 + n_rgb + n_depth, D)."""
        tokens = self.encoder.embed_patches(rgb)  # (B, L, D) with the ViT's positions
        latent = self.encoder.forward_tokens(masks.gather(tokens, masks.rgb_ids))  # (B, 1 + n_rgb, D)
        if masks.depth_ids.shape[1] == 0:
            return latent
        patches = masks.gather(patchify(depth_in, self.config.encoder.patch_size), masks.depth_ids)  # (B, n_depth, p*p)
        return torch.cat([latent, self.depth_encoder(patches, masks.depth_ids, grid)], dim=1)

    def forward_decoder(self, fused: Tensor, ids_restore: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, 1 + n, D) fused features -> (B, L, Dd) decoded patch tokens."""
        return self.decoder.run_blocks(self.decoder.fill_masked(fused, self.mask_token, ids_restore, grid))[:, 1:]

    def forward_loss(self, pred: Tensor, depth_in: Tensor, valid: Tensor, masks: RGBDMasks) -> Tensor:
        """Depth l2 of (B, L, p*p) predictions against the normalised depth (B, 1, H, W), valid pixels only."""
        p = self.config.encoder.patch_size
        patch_mask = torch.ones_like(masks.depth_mask) if self.config.depth_loss_on == "all" else masks.depth_mask
        return depth_patch_loss(pred, patchify(depth_in, p), patchify(valid.to(pred.dtype), p), patch_mask, self.config.norm_depth_loss)

    def forward_rgb_loss(self, pred: Tensor, rgb: Tensor, rgb_mask: Tensor) -> Tensor:
        target = patchify(rgb, self.config.encoder.patch_size)  # (B, L, p*p*3)
        if self.config.norm_depth_loss:
            pred, target = norm_pix_both(pred, target)
        per_patch = ((pred - target) ** 2).mean(-1)  # (B, L)
        return (per_patch * rgb_mask).sum() / rgb_mask.sum().clamp(min=1)

    def unpack(self, batch: dict) -> tuple[Tensor, Tensor, tuple[int, int]]:
        if "rgb" not in batch or "depth" not in batch:
            raise InputError(f"mask3d: batches need 'rgb' (B, 3, H, W) and 'depth' (B, 1, H, W) (RGB-D frames, experiment.pretraining_data); got keys {sorted(batch)}")
        rgb, depth = batch["rgb"], batch["depth"]
        grid = self.encoder.grid_for(rgb)
        if depth.shape != (rgb.shape[0], 1, *rgb.shape[-2:]):
            raise InputError(f"mask3d: depth {tuple(depth.shape)} does not match rgb {tuple(rgb.shape)} (expected (B, 1, H, W))")
        return rgb, depth, grid

    def predict(self, rgb: Tensor, depth: Tensor, generator: torch.Generator | None = None,
                rgb_keep: float | None = None, depth_keep: float | None = None) -> dict:
        """Masks, then the decoder's predictions: {"masks", "depth_in" (B, 1, H, W) normalised, "valid",
        "depth_pred" (B, L, p*p), "rgb_pred" (B, L, p*p*3) or None}."""
        grid = self.encoder.grid_for(rgb)
        valid = valid_depth(depth)  # (B, 1, H, W)
        depth_in = normalise_depth(depth, valid, self.config.depth_max)
        masks = self.make_masks(rgb.shape[0], grid[0] * grid[1], generator, rgb.device, rgb_keep, depth_keep)
        x = self.forward_decoder(self.forward_encoders(rgb, depth_in, masks, grid), masks.ids_restore, grid)  # (B, L, Dd)
        return {"masks": masks, "depth_in": depth_in, "valid": valid, "depth_pred": self.depth_pred(x),
                "rgb_pred": None if self.rgb_pred is None else self.rgb_pred(x)}

    def forward(self, batch: dict, ctx: StepContext = StepContext()) -> MethodOutput:
        rgb, depth, grid = self.unpack(batch)  # (B, 3, H, W), (B, 1, H, W)
        out = self.predict(rgb, depth, ctx.generator)
        masks = out["masks"]
        loss = depth_loss = self.forward_loss(out["depth_pred"], out["depth_in"], out["valid"], masks)
        terms = {"depth_l2": depth_loss.detach()}
        if out["rgb_pred"] is not None:
            rgb_loss = self.forward_rgb_loss(out["rgb_pred"], rgb, masks.rgb_mask)
            loss = loss + self.config.rgb_loss_weight * rgb_loss
            terms["rgb_l2"] = rgb_loss.detach()
        prediction = {k: out[k] for k in ("depth_pred", "depth_in", "valid", "rgb_pred")}  # previews build from these
        return MethodOutput(loss, terms, extras={"masks": masks, "prediction": prediction})

    # ---- previews --------------------------------------------------------------------------------
    def predicted_depth(self, pred: Tensor, depth_in: Tensor, valid: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, L, p*p) predictions -> (B, 1, H, W) metres (normalised predictions in each patch's target
        statistics; 0 where a patch has too few valid pixels)."""
        p, c = self.config.encoder.patch_size, self.config
        if c.norm_depth_loss:
            target, v = patchify(depth_in, p), patchify(valid.to(pred.dtype), p)  # (B, L, p*p)
            n = v.sum(-1, keepdim=True)
            mean = (target * v).sum(-1, keepdim=True) / n.clamp(min=1)
            var = (((target - mean) * v) ** 2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)
            pred = (pred * (var + 1e-6) ** 0.5 + mean) * (n >= MIN_VALID_NORM)
        return unpatchify(pred, p, grid, 1).clamp(min=0) * c.depth_max

    def make_renders(self, rgb: Tensor, depth: Tensor, out: dict, grid: tuple[int, int]) -> dict[str, Tensor]:
        p, masks = self.config.encoder.patch_size, out["masks"]
        target = torch.where(out["valid"], depth, torch.zeros_like(depth))  # (B, 1, H, W) metres, 0 = invalid
        rgb_pix, depth_pix = mask_to_pixels(masks.rgb_mask, p, grid), mask_to_pixels(masks.depth_mask, p, grid)
        pred = self.predicted_depth(out["depth_pred"], out["depth_in"], out["valid"], grid)
        lo, hi = scalar_range(target[:, 0], target[:, 0] > 0)  # one range per sample for the three depth panels
        renders = {
            "input": rgb, "masked rgb": rgb * (1 - rgb_pix),
            "masked depth": colorize_depth_batch(target * (1 - depth_pix), lo, hi),
            "predicted depth": colorize_depth_batch(pred, lo, hi),
            "target depth": colorize_depth_batch(target, lo, hi),
        }
        if out["rgb_pred"] is not None:
            recon = out["rgb_pred"]
            if self.config.norm_depth_loss:  # show in the image's own patch statistics
                t = patchify(rgb, p)
                recon = recon * (t.var(-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(-1, keepdim=True)
            renders["predicted rgb"] = unpatchify(recon, p, grid, 3).clamp(0, 1)
        return renders

    def preview_panels(self, batch: dict, output: MethodOutput) -> list[tuple[str, Tensor]]:
        """Colour input, masked colour, masked depth, predicted depth, target depth (+ predicted colour), built
        here from the step's outputs rather than in every training step."""
        rgb, depth, grid = self.unpack(batch)
        out = {**output.extras["prediction"], "masks": output.extras["masks"]}
        renders = self.make_renders(rgb, depth, out, grid)
        return [(name, image[0].detach().float().cpu()) for name, image in renders.items()]
