"""NPS (NeRF as pretraining at scale): a generalizable NeRF transformer (GNT) pretrained by novel view
synthesis, with NPS's hardness-aware source-view curriculum.

Mechanism (NPS Sec. 3.1-3.2 on GNT; the GNT facts in docs/references.md):

1. Views (``views``, :class:`~renderssl.data.views.SourceViewCurriculum`, in the Dataset): per sample one
   random target frame of a scene and its source views, GNT's sampler (candidates among the nearest
   min(10 f, 22) views by camera distance, f in {1, 2, 3}; 10 +- 2 of them) under NPS's three strategies
   (fewer source views 10 -> 2, farther source views, non-nearest uniform sampling), each switched on in the
   config and scheduled over the step the trainer announces. A sample is the sources then the target; every
   sample of a step has as many sources.
2. Model (``model``, :class:`~renderssl.models.nerf.generalizable_nerf.GeneralizableNeRF`, the exported
   product): ResUNet features of the source images at 1/4 resolution; ``rays_per_target`` random pixels of
   each target (distinct, uniform: GNT's ``N_rand`` with ``sample_mode="uniform"``), ``num_samples`` samples
   per ray stratified in inverse depth (GNT's ``inv_uniform``, ``det=False`` in training) between
   ``near_scale`` x near and ``far_scale`` x far (GNT's widened bounds 0.9 / 1.5); the samples projected into
   every source view; the view / ray transformer trunk -> colour (unbounded) and attention depth.
3. Loss: MSE of the rays' colours against the target pixels (GNT's ``Criterion``, unmasked in practice).
4. Optimisation (GNT): Adam, lr 5e-4 for the transformer (``optim.lr``) and ``feature_lr`` 1e-3 for the
   CNN (the ``feature_net`` parameter group), StepLR x0.5 every 50k steps, 250k steps (``nps_base``).

Our choices where the papers are silent (also in docs/methods.md):

- The curriculum (NPS's is not public; ``data/views.py`` documents the reconstruction).
- Near / far: the sample's bounds from the source views' valid depth (1st / 99th percentiles widened by
  10%, ``data.datasets.near_far``), then GNT's 0.9 / 1.5 widening; GNT reads per-dataset bounds instead.
  Rays are parameterised by z-depth (directions with unit camera z, as GNT's ``K^-1 [u, v, 1]`` rays), so
  the attention depth is z-depth and compares with the depth maps directly.
- Logged: ``mse``, ``psnr`` of the rays (colours clamped to [0, 1]), ``depth_abs_rel`` of the attention depth
  at target pixels with valid depth (not trained; NPS's "emergent depth"), ``source_views``.
- Previews: the target, the rendered colours painted at the sampled ray pixels (grey elsewhere) and the
  nearest source view; a full-frame rendering is ``renderssl evaluate``'s.
- Novel views (``render_targets``, ``renderssl evaluate``): every pixel of each target rendered from the
  batch's first ``eval_source_views`` views (the target's nearest views, chosen by the evaluation's
  dataset), bin midpoints in inverse depth (deterministic), ``eval_chunk`` rays at a time; LPIPS when
  ``lpips_weights`` names local files (settable at evaluation: ``renderssl evaluate RUN
  nps.lpips_weights.vgg_path=... nps.lpips_weights.lin_path=...``).
- A scene of fewer frames than the sources wanted: the count is capped for the whole dataset at its
  smallest scene's frames - 1 (``MultiViewDataset``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.views import SourceViewCurriculum
from ..errors import InputError
from ..eval.lpips import LPIPSWeights
from ..models.nerf.generalizable_nerf import (
    GeneralizableNeRF, GeneralizableNeRFConfig, gather_pixels, pixel_centres, random_pixels,
)
from ..typed_config import to_dict
from .base import Method, MethodOutput, ParamGroup, StepContext


@dataclass
class NPSConfig:
    model: GeneralizableNeRFConfig = dataclasses.field(default_factory=GeneralizableNeRFConfig)
    views: SourceViewCurriculum = dataclasses.field(default_factory=SourceViewCurriculum)
    rays_per_target: int = 2048  # GNT's N_rand (gnt_full.txt; the GNT paper says 4096) per target view
    num_samples: int = 64  # GNT's N_samples, inverse-depth stratified; no importance samples (N_importance 0)
    near_scale: float = 0.9  # GNT: near x 0.9
    far_scale: float = 1.5  # GNT: far x 1.5
    feature_lr: float | None = 1e-3  # GNT's lrate_feature; None: the optimiser's lr
    eval_source_views: int = 10  # render_targets / renderssl evaluate: the target's nearest views
    eval_chunk: int = 4096  # rays per target rendered at a time in render_targets
    lpips_weights: LPIPSWeights = dataclasses.field(default_factory=LPIPSWeights)  # evaluation's LPIPS (local files)

    def __post_init__(self):
        for name in ("rays_per_target", "num_samples", "eval_source_views", "eval_chunk"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"nps.{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 < self.near_scale <= 1 <= self.far_scale:
            raise InputError(f"nps: need 0 < near_scale <= 1 <= far_scale, got {self.near_scale}, {self.far_scale}")
        if self.feature_lr is not None and not self.feature_lr > 0:
            raise InputError(f"nps.feature_lr: must be > 0 or null, got {self.feature_lr}")


class NPS(Method):
    config_class = NPSConfig
    sample_type = "multiview"
    encoder_architecture = "nerf_transformer"
    evaluation_fields = ("eval_source_views", "eval_chunk", "lpips_weights")

    def __init__(self, config: NPSConfig):
        super().__init__()
        self.config = config
        self.encoder = GeneralizableNeRF(config.model)

    @property
    def num_context(self) -> int:
        """The source views render_targets reads (the batch's first views)."""
        return self.config.eval_source_views

    @classmethod
    def sample_options(cls, config: NPSConfig) -> dict:
        return {"views": config.views}

    def encoder_config(self) -> dict:
        return to_dict(self.config.model)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("feature_net", ("encoder.feature_net.",), lr=self.config.feature_lr)]

    # ---- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def check_batch(batch: dict) -> None:
        for key in ("rgb", "K", "c2w", "near", "far"):
            if key not in batch:
                raise InputError(f"nps: the batch has no {key!r} (multi-view samples: rgb, K, c2w, near, far)")
        if batch["rgb"].dim() != 5 or batch["rgb"].shape[1] < 2:
            raise InputError(f"nps: expected rgb (B, V >= 2, 3, H, W) (sources then the target), got {tuple(batch['rgb'].shape)}")

    def bounds(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(B,) near and far of the samples along the rays (GNT's widened bounds)."""
        return batch["near"].float() * self.config.near_scale, batch["far"].float() * self.config.far_scale

    # ---- the step --------------------------------------------------------------------------------
    def forward(self, batch: dict, ctx: StepContext = StepContext()) -> MethodOutput:
        self.check_batch(batch)
        generator = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(0)
        rgb, K, c2w = batch["rgb"], batch["K"].float(), batch["c2w"].float()  # (B, V + 1, 3, H, W), ...
        B, _, _, H, W = rgb.shape
        sources = self.encoder.encode_sources(rgb[:, :-1], K[:, :-1], c2w[:, :-1])
        pixels = random_pixels(B, H, W, self.config.rays_per_target, generator, "nps.rays_per_target").to(rgb.device)  # (B, R)
        uv = pixel_centres(pixels, W)  # (B, R, 2)
        near, far = self.bounds(batch)
        out = self.encoder.render_pixels(sources, K[:, -1], c2w[:, -1], uv, near, far, self.config.num_samples, generator)
        target = gather_pixels(rgb[:, -1], pixels)  # (B, R, 3)
        mse = F.mse_loss(out.rgb, target)
        terms = {"mse": mse}
        with torch.no_grad():
            terms["psnr"] = -10.0 * torch.log10(((out.rgb.clamp(0, 1) - target) ** 2).mean().clamp_min(1e-10))
            terms["source_views"] = torch.tensor(float(rgb.shape[1] - 1))
            if "depth" in batch:  # always the same terms, whatever the rays hit (accumulation and DDP sum them)
                depth = gather_pixels(batch["depth"][:, -1, 0], pixels)  # (B, R) z-depth, 0 = invalid
                valid = depth > 0
                error = (out.depth - depth).abs() / depth.clamp_min(1e-6)  # (B, R)
                terms["depth_abs_rel"] = (error * valid).sum() / valid.sum().clamp_min(1)
            renders = self.preview_renders(batch, pixels, out.rgb)
        return MethodOutput(mse, terms, renders, rendered_pixels=pixels.numel())

    def preview_renders(self, batch: dict, pixels: Tensor, colors: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W): the target, the rays' colours at their pixels (grey elsewhere), the first source."""
        rgb = batch["rgb"]
        B, _, _, H, W = rgb.shape
        painted = torch.full((B, 3, H * W), 0.5, dtype=rgb.dtype, device=rgb.device)
        painted.scatter_(2, pixels[:, None].expand(B, 3, -1), colors.detach().clamp(0, 1).transpose(1, 2).to(rgb.dtype))
        return {"target": rgb[:, -1], "rendered rays": painted.reshape(B, 3, H, W), "source 0": rgb[:, 0]}

    # ---- novel views -----------------------------------------------------------------------------
    @torch.no_grad()
    def render_targets(self, batch: dict) -> Tensor:
        """Every pixel of the targets (views ``num_context``..) from the first ``num_context`` views of the
        batch (:meth:`Method.render_targets`) -> (B, T, 3, H, W)."""
        self.check_batch(batch)
        C = self.num_context
        rgb, K, c2w = batch["rgb"], batch["K"].float(), batch["c2w"].float()
        if rgb.shape[1] <= C:
            raise InputError(f"nps: render_targets needs target views after the {C} source views, got V={rgb.shape[1]}")
        sources = self.encoder.encode_sources(rgb[:, :C], K[:, :C], c2w[:, :C])
        near, far = self.bounds(batch)
        images = [self.encoder.render_image(sources, K[:, t], c2w[:, t], near, far, self.config.num_samples,
                                            self.config.eval_chunk)[0] for t in range(C, rgb.shape[1])]
        return torch.stack(images, dim=1)  # (B, T, 3, H, W)


__all__ = ["NPS", "NPSConfig"]
