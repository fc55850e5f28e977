"""The generalizable NeRF that NPS pretrains and exports: GNT's CNN feature network, projector and
transformer trunk as one module that renders target rays from posed source views.

Rendering a batch of B targets, each with V source views (RGB, K, c2w):

1. ``feature_net`` (:class:`~renderssl.models.encoders.resunet.ResUNet`) maps every source image to a
   feature map at 1/4 resolution, one call over the (B V) images (:meth:`encode_sources`).
2. Target rays (origins, directions with unit camera z, so the ray parameter t is z-depth, as GNT's rays
   ``K^-1 [u, v, 1]``) are sampled at S depths t (B, R, S); their points are projected into every source
   view (:func:`~renderssl.models.nerf.projector.project_samples`): colours, features, visibility mask and
   GNT's relative direction.
3. ``transformer`` (:class:`~renderssl.models.nerf.transformer.GeneralizableNeRFTransformer`) turns each
   ray's (S, V) tokens into a colour, an attention depth (z-depth, since t is) and per-sample features.

The transformer's ``feature_channels`` always follow the feature network's ``out_channels`` (set here).
:meth:`render_image` renders every pixel of target cameras in chunks of rays (evaluation, previews).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ...errors import InputError
from ...geometry import Cameras
from ...render.volume import sample_inverse_depth
from ..encoders.resunet import ResUNet, ResUNetConfig
from .projector import project_samples, sample_points_on_rays
from .transformer import GeneralizableNeRFTransformer, NeRFTransformerConfig, NeRFTransformerOutput


@dataclass
class GeneralizableNeRFConfig:
    feature_net: ResUNetConfig = field(default_factory=ResUNetConfig)
    transformer: NeRFTransformerConfig = field(default_factory=NeRFTransformerConfig)

    def __post_init__(self):
        if self.transformer.feature_channels != self.feature_net.out_channels:  # the trunk reads the CNN's maps
            self.transformer = dataclasses.replace(self.transformer, feature_channels=self.feature_net.out_channels)


@dataclass
class SourceViews:
    """The posed source views of B targets and their CNN features."""

    rgb: Tensor  # (B, V, 3, H, W) in [0, 1]
    K: Tensor  # (B, V, 3, 3) pixels of (H, W)
    c2w: Tensor  # (B, V, 4, 4)
    features: Tensor  # (B, V, C, H / 4, W / 4)


@dataclass
class RayOutput:
    rgb: Tensor  # (B, R, 3)
    depth: Tensor  # (B, R) attention depth (z-depth)
    ray_weights: Tensor  # (B, R, S)
    features: Tensor  # (B, R, S, dim)
    t: Tensor  # (B, R, S) the samples' z-depths


def random_pixels(B: int, H: int, W: int, count: int, generator: torch.Generator, key: str = "rays_per_target") -> Tensor:
    """(B, count) distinct flat pixels i W + j per target, uniform over the image (top-k of i.i.d. keys from
    ``generator``, on its device); ``key`` names the setting in the error for too many rays."""
    if count > H * W:
        raise InputError(f"{key}: {count} rays wanted from targets of {H}x{W} = {H * W} pixels")
    return torch.rand((B, H * W), generator=generator).topk(count, dim=1).indices  # (B, count)


def pixel_centres(pixels: Tensor, width: int) -> Tensor:
    """Flat pixels (B, R) i W + j -> uv (B, R, 2) = (j + 0.5, i + 0.5), DESIGN's pixel centres."""
    return torch.stack([pixels % width, pixels // width], dim=-1).float() + 0.5  # (B, R, 2)


def gather_pixels(maps: Tensor, pixels: Tensor) -> Tensor:
    """maps (B, H, W) or (B, C, H, W) at flat pixels (B, R) -> (B, R) or (B, R, C)."""
    if maps.dim() == 3:
        return maps.flatten(1).gather(1, pixels)  # (B, R)
    B, C = maps.shape[:2]
    return maps.flatten(2).gather(2, pixels[:, None].expand(B, C, -1)).transpose(1, 2)  # (B, R, C)


def inverse_depth_samples(near: Tensor, far: Tensor, num_rays: int, num_samples: int,
                          generator: torch.Generator | None = None) -> Tensor:
    """t (B, R, S), uniform in inverse depth between each target's ``near`` and ``far`` (B,): stratified
    (one sample per disparity bin) with a generator, bin midpoints without (GNT's ``inv_uniform``)."""
    B = near.shape[0]
    lo = near[:, None].expand(B, num_rays).reshape(-1)  # (B R,)
    hi = far[:, None].expand(B, num_rays).reshape(-1)  # (B R,)
    t = sample_inverse_depth(lo, hi, num_samples, stratified=generator is not None, generator=generator)  # (B R, S)
    return t.reshape(B, num_rays, num_samples)


class GeneralizableNeRF(nn.Module):
    """GNT: ResUNet source features + projector + view / ray transformer trunk."""

    def __init__(self, config: GeneralizableNeRFConfig | None = None):
        super().__init__()
        self.config = config = config or GeneralizableNeRFConfig()
        self.feature_net = ResUNet(config.feature_net)
        self.transformer = GeneralizableNeRFTransformer(config.transformer)

    @property
    def dim(self) -> int:
        """Width of the per-sample features."""
        return self.config.transformer.dim

    def encode_sources(self, rgb: Tensor, K: Tensor, c2w: Tensor) -> SourceViews:
        """rgb (B, V, 3, H, W), K (B, V, 3, 3), c2w (B, V, 4, 4) -> :class:`SourceViews` with features."""
        if rgb.dim() != 5 or rgb.shape[2] != 3 or K.shape != (*rgb.shape[:2], 3, 3) or c2w.shape != (*rgb.shape[:2], 4, 4):
            raise InputError(f"GeneralizableNeRF: expected rgb (B, V, 3, H, W), K (B, V, 3, 3), c2w (B, V, 4, 4), got "
                             f"{tuple(rgb.shape)}, {tuple(K.shape)}, {tuple(c2w.shape)}")
        B, V = rgb.shape[:2]
        features = self.feature_net(rgb.flatten(0, 1))  # (B V, C, H / 4, W / 4)
        return SourceViews(rgb, K, c2w, features.unflatten(0, (B, V)))

    def render_rays(self, sources: SourceViews, origins: Tensor, dirs: Tensor, t: Tensor) -> RayOutput:
        """Rays origins (B, R, 3) + t (B, R, S) dirs (B, R, 3) rendered from ``sources``."""
        B, R, S = t.shape
        points = sample_points_on_rays(origins, dirs, t)  # (B, R, S, 3)
        proj = project_samples(points, sources.rgb, sources.features, sources.K, sources.c2w, origins)
        rgb_feat = torch.cat([proj.rgb, proj.features], dim=-1)  # (B, R, S, V, 3 + C)
        out: NeRFTransformerOutput = self.transformer(
            rgb_feat.flatten(0, 1), proj.ray_diff.flatten(0, 1), proj.mask.flatten(0, 1),
            points.flatten(0, 1), dirs.flatten(0, 1), t.flatten(0, 1))
        return RayOutput(rgb=out.rgb.unflatten(0, (B, R)), depth=out.depth.unflatten(0, (B, R)),
                         ray_weights=out.ray_weights.unflatten(0, (B, R)), features=out.features.unflatten(0, (B, R)), t=t)

    def render_pixels(self, sources: SourceViews, K: Tensor, c2w: Tensor, uv: Tensor, near: Tensor, far: Tensor,
                      num_samples: int, generator: torch.Generator | None = None) -> RayOutput:
        """The target cameras K (B, 3, 3), c2w (B, 4, 4) rendered at pixels uv (B, R, 2) with ``num_samples``
        inverse-depth samples between near and far (B,)."""
        H, W = sources.rgb.shape[-2:]
        origins, dirs = Cameras(K, c2w, W, H).rays_at(uv, normalize=False)  # (B, R, 3) each; t = z-depth
        t = inverse_depth_samples(near, far, uv.shape[1], num_samples, generator)  # (B, R, S)
        return self.render_rays(sources, origins, dirs, t)

    @torch.no_grad()
    def render_image(self, sources: SourceViews, K: Tensor, c2w: Tensor, near: Tensor, far: Tensor,
                     num_samples: int, chunk: int = 4096) -> tuple[Tensor, Tensor]:
        """Every pixel of the target cameras K (B, 3, 3), c2w (B, 4, 4) at the sources' size, deterministic
        (disparity-bin midpoints), ``chunk`` rays per target at a time -> rgb (B, 3, H, W), depth (B, 1, H, W)."""
        H, W = sources.rgb.shape[-2:]
        B = K.shape[0]
        cameras = Cameras(K, c2w, W, H)
        uv = cameras.pixel_centers().reshape(1, H * W, 2).expand(B, -1, -1)  # (B, H W, 2)
        origins, dirs = cameras.rays_at(uv, normalize=False)  # (B, H W, 3) each; t = z-depth
        t = inverse_depth_samples(near, far, H * W, num_samples)  # (B, H W, S), set up once for every chunk
        rgb, depth = [], []
        for start in range(0, H * W, chunk):
            part = slice(start, start + chunk)
            out = self.render_rays(sources, origins[:, part], dirs[:, part], t[:, part])
            rgb.append(out.rgb)
            depth.append(out.depth)
        rgb = torch.cat(rgb, dim=1).transpose(1, 2).reshape(B, 3, H, W)  # (B, 3, H, W)
        return rgb, torch.cat(depth, dim=1).reshape(B, 1, H, W)


__all__ = ["GeneralizableNeRF", "GeneralizableNeRFConfig", "RayOutput", "SourceViews", "gather_pixels", "inverse_depth_samples",
           "pixel_centres", "random_pixels"]
