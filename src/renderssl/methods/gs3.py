"""GS³ (a universal self-supervised paradigm via 3D Gaussian splatting). 3D path: two posed RGB-D views ->
one coloured point cloud -> 3D encoder on the visible half -> k Gaussians per visible point -> rasterized
into the views -> MSE + 0.05 LPIPS. 2D path: two RGB views -> ResNet -> epipolar transformer -> k
Gaussians per visible pixel -> the same rendering and loss.

Mechanism (GS³ Sec. 3.1-3.5, 4.1; the paper's defaults):

1. Points. The valid depth pixels (depth > 0) of the two context views (views 0 and 1 of the batch, a
   frame interval of 5 apart: ``views``) are back-projected into one world point cloud per scene
   ("P_i in R^{(H x W) x 3}", one point per pixel), each point keeping its colour, source view, pixel
   and z-depth. Points are packed scene by scene (renderssl's ``offset`` batching), pixels in
   (view, row, column) order.
2. Augmentation (Sec. 4.1): one random rotation per scene applied to the points AND every camera of the
   scene (context and target views) together, angles uniform in [-pi/64, pi/64] about X and Y and
   [-pi, pi] about Z (``rotate_xy``, ``rotate_z``; 0 disables), R = Rz Ry Rx (Pointcept's order, as
   ``data.points.random_point_transform``). Cameras follow as c2w' = T c2w, so every point keeps its
   pixel and z-depth in every camera.
3. Masking (Sec. 3.4): ``mask_ratio`` = 50% of each scene's points are masked, exactly round(0.5 n)
   (halves rounded up; ``data.points.random_mask_per_cloud``); only the visible points enter the encoder
   and only they make Gaussians ("we use only the visible subset to predict scene Gaussians").
4. Encoder (Sec. 3.2, 4.1): PointNet++ (``encoder_architecture: pointnet2``; the ``scene`` preset,
   128-d) or SparseUNet (``sparse_unet``, the SR-UNet/MinkUNet layout; 128-d at paper scale) on the
   visible points, per-point features.
5. Head (Sec. 3.2, Eq. 3-5; ``models/heads/gaussian_head.py``): ``head.center: depth_bins`` puts the k
   Gaussians of a point on its pixel's ray (in the augmented source camera) at the top-k of Z depth bins
   between the scene's ``near`` and ``far``; ``point_offset`` at the point plus a learned offset (Eq. 5).
   k Gaussians per point (``head.gaussians_per_element``), spherical-harmonics colour of degree
   ``head.sh_degree``. ``head.in_dim`` always follows the encoder's output width.
6. Rendering and loss (Sec. 3.1, 3.5): the scene's Gaussians are rasterized into all of the batch's
   views (both context views and any extra targets) in one batched ``rasterize`` call (view-dependent SH
   colour); L = MSE over all pixels + ``lpips_weight`` (0.05) x LPIPS (VGG; weights from the local files
   ``lpips_weights.vgg_path`` / ``lin_path``; nothing is downloaded). Without the files the recipe stops
   with one message naming the key, unless ``lpips_weight`` is 0: then it trains with MSE only and says
   so once (a warning at construction).

2D path (Sec. 3.3; ``encoder_architecture: resnet``): the two context RGB views, 50% of each scene's context
pixels masked (exactly round(0.5 x 2HW)), go through a ResNet (ResNet-50 at paper scale); an epipolar
transformer (``models/heads/epipolar.py``, pixelSplat's design) refines each view's features by
cross-attention along its epipolar lines in the other view; the same depth-bin head puts k Gaussians on
the ray of every visible pixel; rendering and loss as above.

Our choices where the paper is silent:

- 2D path: masked pixels are zeroed in the encoder's input and make no Gaussians (a convolutional
  encoder cannot drop pixels; the RGB skip sees the masked input too, so a masked pixel's colour reaches
  nothing). The pixel features: each ResNet stage projected to the epipolar width by a 1x1 conv,
  bilinearly upsampled to stride 4 and summed (pixelSplat runs its epipolar transformer at 1/4 of the
  image), epipolar refinement at stride 4 (K of the feature grid by ``Cameras.resized``), bilinear
  upsampling to full resolution plus pixelSplat's high-resolution skip ``ReLU(Conv7x7(rgb))``
  (pixelSplat upsamples by a transposed conv with a residual refinement instead). RGB enters in [0, 1]
  (renderssl's ResNets take un-normalised images downstream too). No rotation augmentation (there are no
  points; rotating cameras and Gaussians together changes no image). Only the ResNet is exported; the
  lateral convs, the epipolar transformer and the skip belong to the pretext task.

- No epipolar transformer on the 3D path: the paper's overview passes point features through one, but
  the two views' points live in one fused world cloud, so the 3D encoder already sees both views; the
  epipolar transformer belongs to the 2D path.
- Encoder input features: the points' RGB mapped to [-1, 1] (Pointcept's NormalizeColor, as PonderV2
  feeds), 3 channels; xyz only through the encoder's geometry. No normals (RGB-D gives none).
- Rotation pivot: each scene's cloud pivot (the centre of its x-y bounding box at its lowest z, the point
  Pointcept's CenterShift moves to the origin; as ``data.points.augment_points``), so the scene stays
  where it was. No scale, flip, jitter or colour augmentation (the paper names rotations only).
- Random draws, from the step's generator (``StepContext.generator``; a generator seeded 0 when None):
  the B x 3 rotation angles first, then the point mask.
- Background colour behind the Gaussians: black (pixelSplat's), ``background``; the loss covers every
  pixel of every rendered view, including pixels without valid depth (Eq. 6 averages over all pixels).
- LPIPS on the raw rendering (not clamped), all views of all scenes, averaged; the loss is the same at
  every step (pixelSplat switches LPIPS on after 150k steps; GS³ states no schedule).
- A scene whose context views have no valid depth pixel is an error naming it.
- ``param_groups``: none (the paper uses one AdamW group).
- Novel views (``render_targets``, ``renderssl evaluate``; the paper reports no NVS protocol): Gaussians
  from the two context views with nothing masked (mask ratio 0: every point or pixel visible) and no
  rotation (cameras as given), rasterized into the target cameras only; deterministic, no generator.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.points import normalize_color, random_mask_per_cloud
from ..data.views import ViewSelectionConfig
from ..errors import InputError
from ..eval.lpips import LPIPSWeights
from ..geometry import Cameras, axis_angle_to_rotmat
from ..models.encoders.pointnet2 import PointNet2, PointNet2Config
from ..models.encoders.resnet import ResNet, ResNetConfig
from ..models.encoders.sparse_unet import SparseUNet, SparseUNetConfig
from ..models.heads.epipolar import EpipolarTransformer, EpipolarTransformerConfig
from ..models.heads.gaussian_head import (
    GaussianHeadConfig, PixelRays, build_gaussian_head, image_elements, pixel_footprint,
)
from ..render.splat import rasterize
from ..typed_config import to_dict
from .base import Method, MethodOutput, StepContext

POINT_ARCHITECTURES = ("pointnet2", "sparse_unet")  # the 3D path
ARCHITECTURES = (*POINT_ARCHITECTURES, "resnet")  # resnet: the 2D path
NUM_CONTEXT = 2  # GS³: a pair of views with overlapping fields of view
IN_CHANNELS = 3  # RGB


def _default_pointnet2() -> PointNet2Config:
    return PointNet2Config(preset="scene")


def _default_sparse_unet() -> SparseUNetConfig:
    return SparseUNetConfig(preset="base", in_channels=IN_CHANNELS, channels=(32, 64, 128, 256, 256, 128, 128, 128))


@dataclass
class GS3Config:
    encoder_architecture: str = "pointnet2"  # pointnet2 | sparse_unet (3D path) | resnet (2D path)
    pointnet2: PointNet2Config = field(default_factory=_default_pointnet2)
    sparse_unet: SparseUNetConfig = field(default_factory=_default_sparse_unet)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)  # 2D path: ResNet-50 (GS³ Sec. 3.3)
    epipolar: EpipolarTransformerConfig = field(default_factory=EpipolarTransformerConfig)  # 2D path
    head: GaussianHeadConfig = field(default_factory=GaussianHeadConfig)
    mask_ratio: float = 0.5  # fraction of each scene's points masked (GS³ Tab. 8: 50% best)
    rotate_xy: float = math.pi / 64  # max |angle| about X and Y, radians
    rotate_z: float = math.pi  # max |angle| about Z, radians
    lpips_weight: float = 0.05  # lambda in L = MSE + lambda LPIPS
    lpips_weights: LPIPSWeights = field(default_factory=LPIPSWeights)
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    render_backend: str = "auto"
    views: ViewSelectionConfig = field(default_factory=ViewSelectionConfig)  # the context pair (interval 5)
    num_targets: int = 0  # extra target views per sample, rendered too

    def __post_init__(self):
        self.background = tuple(self.background)
        if self.encoder_architecture not in ARCHITECTURES:
            raise InputError(f"gs3.encoder_architecture: {self.encoder_architecture!r} is not one of {list(ARCHITECTURES)}")
        enc = self.encoder_cfg
        if self.encoder_architecture == "resnet":
            if enc.in_chans != IN_CHANNELS or enc.num_classes != 0:
                raise InputError(f"gs3.resnet: in_chans must be {IN_CHANNELS} (RGB) and num_classes 0, got "
                                 f"{enc.in_chans} and {enc.num_classes}")
            if self.head.center != "depth_bins":
                raise InputError(f"gs3.head.center: the 2D path (encoder_architecture resnet) places Gaussians on pixel "
                                 f"rays (depth_bins); {self.head.center!r} needs points")
            width = self.epipolar.dim  # the head reads the epipolar transformer's features
        else:
            if enc.in_channels != IN_CHANNELS:
                raise InputError(f"gs3.{self.encoder_architecture}.in_channels: GS³ feeds the points' RGB ({IN_CHANNELS} "
                                 f"channels), got {enc.in_channels}")
            if isinstance(enc, SparseUNetConfig) and enc.num_classes != 0:
                raise InputError("gs3.sparse_unet.num_classes: must be 0 (the encoder's features feed the Gaussian head)")
            width = enc.out_channels
        # the head reads the encoder's features: its width follows the encoder's
        self.head = dataclasses.replace(self.head, in_dim=width)
        if not 0.0 <= self.mask_ratio < 1.0:
            raise InputError(f"gs3.mask_ratio: must lie in [0, 1), got {self.mask_ratio}")
        for name in ("rotate_xy", "rotate_z"):
            if not 0.0 <= getattr(self, name) <= math.pi:
                raise InputError(f"gs3.{name}: must lie in [0, pi] radians, got {getattr(self, name)}")
        if not self.lpips_weight >= 0.0:
            raise InputError(f"gs3.lpips_weight: must be >= 0, got {self.lpips_weight}")
        if len(self.background) != 3:
            raise InputError(f"gs3.background: expected 3 values, got {list(self.background)}")
        if self.num_targets < 0:
            raise InputError(f"gs3.num_targets: must be >= 0, got {self.num_targets}")

    @property
    def encoder_cfg(self) -> PointNet2Config | SparseUNetConfig | ResNetConfig:
        return getattr(self, self.encoder_architecture)


@dataclass
class PointSet:
    """The back-projected context pixels of B scenes, packed scene by scene."""

    points: Tensor  # (N, 3) world
    colors: Tensor  # (N, 3) in [0, 1]
    batch: Tensor  # (N,) scene
    view: Tensor  # (N,) source context view (0 or 1)
    pixel: Tensor  # (N,) flat pixel index i * W + j in its view
    flat: Tensor  # (N,) index into (B, 2, H, W)
    uv: Tensor  # (N, 2) pixel centre (j + 0.5, i + 0.5)
    depth: Tensor  # (N,) z-depth in its source view
    counts: Tensor  # (B,) points per scene

    @property
    def offset(self) -> Tensor:
        return self.counts.cumsum(0)  # (B,)


def backproject_context(rgb: Tensor, depth: Tensor, K: Tensor, c2w: Tensor) -> PointSet:
    """rgb (B, V, 3, H, W), depth (B, V, 1, H, W), K (B, V, 3, 3), c2w (B, V, 4, 4) of the views to fuse ->
    one point per valid depth pixel (depth > 0), packed scene by scene in (view, row, column) order."""
    B, V, _, H, W = rgb.shape
    cams = Cameras(K, c2w, W, H)
    world = cams.backproject_depth(depth).reshape(-1, 3)  # (B V H W, 3)
    z = depth.reshape(-1)  # (B V H W,)
    flat = (z > 0).nonzero().squeeze(-1)  # (N,)
    pixel = flat % (H * W)  # (N,)
    uv = torch.stack([(pixel % W).to(rgb.dtype) + 0.5, (pixel // W).to(rgb.dtype) + 0.5], dim=-1)  # (N, 2)
    batch = flat // (V * H * W)  # (N,)
    return PointSet(
        points=world[flat], colors=rgb.permute(0, 1, 3, 4, 2).reshape(-1, 3)[flat], batch=batch,
        view=(flat // (H * W)) % V, pixel=pixel, flat=flat, uv=uv, depth=z[flat],
        counts=torch.bincount(batch, minlength=B),
    )


def random_rotations(num: int, rotate_xy: float, rotate_z: float, generator: torch.Generator) -> Tensor:
    """(num, 3, 3) float64 rotations Rz Ry Rx, angles uniform in [-rotate_xy, rotate_xy] about X and Y and
    [-rotate_z, rotate_z] about Z, drawn as a (num, 3) block from ``generator`` (CPU)."""
    u = torch.rand(num, 3, generator=generator, dtype=torch.float64)  # (num, 3)
    limits = torch.tensor([rotate_xy, rotate_xy, rotate_z], dtype=torch.float64)  # (3,)
    axes = axis_angle_to_rotmat(torch.diag_embed((2 * u - 1) * limits))  # (num, 3, 3, 3): Rx, Ry, Rz per scene
    return axes[:, 2] @ axes[:, 1] @ axes[:, 0]  # (num, 3, 3)


def scene_pivots(points: Tensor, batch: Tensor, num_scenes: int) -> Tensor:
    """(B, 3) per-scene centre of the x-y bounding box at the lowest z (``data.points.cloud_pivot``)."""
    index = batch[:, None].expand(-1, 3)  # (N, 3)
    lo = points.new_zeros(num_scenes, 3).scatter_reduce(0, index, points, "amin", include_self=False)  # (B, 3)
    hi = points.new_zeros(num_scenes, 3).scatter_reduce(0, index, points, "amax", include_self=False)  # (B, 3)
    return torch.stack([(lo[:, 0] + hi[:, 0]) / 2, (lo[:, 1] + hi[:, 1]) / 2, lo[:, 2]], dim=-1)  # (B, 3)


def rotate_scenes(points: Tensor, batch: Tensor, c2w: Tensor, rotations: Tensor, pivots: Tensor) -> tuple[Tensor, Tensor]:
    """x' = R_b (x - c_b) + c_b for points (N, 3) of scene ``batch`` (N,), and c2w' = T_b c2w for the
    cameras (B, V, 4, 4) of each scene: every point keeps its pixel and z-depth in every camera."""
    R = rotations.to(points)  # (B, 3, 3)
    c = pivots.to(points)  # (B, 3)
    moved = torch.einsum("nij,nj->ni", R[batch], points - c[batch]) + c[batch]  # (N, 3)
    out = c2w.clone()
    out[..., :3, :3] = R[:, None] @ c2w[..., :3, :3]  # (B, V, 3, 3)
    out[..., :3, 3] = torch.einsum("bij,bvj->bvi", R, c2w[..., :3, 3] - c[:, None]) + c[:, None]  # (B, V, 3)
    return moved, out


class GS3(Method):
    config_class = GS3Config
    sample_type = "multiview"
    num_context = NUM_CONTEXT

    def __init__(self, config: GS3Config):
        super().__init__()
        self.config = config
        self.encoder_architecture = config.encoder_architecture  # the export architecture of this instance
        self.point_path = config.encoder_architecture in POINT_ARCHITECTURES
        if self.point_path:
            self.encoder = PointNet2(config.pointnet2) if config.encoder_architecture == "pointnet2" else SparseUNet(config.sparse_unet)
        else:  # 2D path: ResNet stages -> one stride-4 map -> epipolar transformer -> full resolution + RGB skip
            dim = config.epipolar.dim
            self.encoder = ResNet(config.resnet)
            self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in self.encoder.feature_channels)
            self.epipolar = EpipolarTransformer(config.epipolar)
            self.skip = nn.Sequential(nn.Conv2d(IN_CHANNELS, dim, 7, padding=3), nn.ReLU())  # pixelSplat's high-res skip
        self.head = build_gaussian_head(config.head)
        self.register_buffer("background", torch.tensor(config.background, dtype=torch.float32), persistent=False)
        self._lpips = None  # kept out of the module tree: frozen, never checkpointed or optimised
        if config.lpips_weight > 0:
            from ..eval.lpips import LPIPS, missing_weights_message

            paths = config.lpips_weights
            problem = missing_weights_message(vgg_path=paths.vgg_path, lin_path=paths.lin_path)
            if problem is not None:
                raise InputError(f"gs3.lpips_weights: {problem} Set gs3.lpips_weights.vgg_path and "
                                 "gs3.lpips_weights.lin_path, or set gs3.lpips_weight=0 to train with MSE only.")
            object.__setattr__(self, "_lpips", LPIPS.from_files(paths.vgg_path, paths.lin_path))  # not a submodule
        else:
            warnings.warn("gs3.lpips_weight=0: training with the MSE loss only (no LPIPS term)", stacklevel=2)

    @classmethod
    def sample_options(cls, config: GS3Config) -> dict:
        return {"views": config.views, "num_targets": config.num_targets}

    def encoder_config(self) -> dict:
        return to_dict(self.config.encoder_cfg)

    # ---- the data path -------------------------------------------------------------------------------
    @staticmethod
    def check_batch(batch: dict) -> tuple[Tensor, ...]:
        for key in ("rgb", "depth", "K", "c2w", "near", "far"):
            if key not in batch:
                raise InputError(f"gs3: the batch has no {key!r} (multi-view samples: rgb, depth, K, c2w, near, far)")
        rgb, depth, K, c2w = batch["rgb"], batch["depth"], batch["K"], batch["c2w"]
        if rgb.dim() != 5 or rgb.shape[2] != 3 or rgb.shape[1] < NUM_CONTEXT:
            raise InputError(f"gs3: batch['rgb'] must be (B, V >= {NUM_CONTEXT}, 3, H, W), got {tuple(rgb.shape)}")
        B, V, _, H, W = rgb.shape
        if depth.shape != (B, V, 1, H, W):
            raise InputError(f"gs3: batch['depth'] must be (B, V, 1, H, W) = {(B, V, 1, H, W)}, got {tuple(depth.shape)}")
        if K.shape != (B, V, 3, 3) or c2w.shape != (B, V, 4, 4):
            raise InputError(f"gs3: batch['K'] and batch['c2w'] must be (B, V, 3, 3) and (B, V, 4, 4), got "
                             f"{tuple(K.shape)} and {tuple(c2w.shape)}")
        near = torch.as_tensor(batch["near"], dtype=rgb.dtype, device=rgb.device).reshape(-1).expand(B)  # (B,)
        far = torch.as_tensor(batch["far"], dtype=rgb.dtype, device=rgb.device).reshape(-1).expand(B)  # (B,)
        return rgb, depth, K, c2w, near, far

    def prepare(self, batch: dict, generator: torch.Generator | None, mask_ratio: float | None = None,
                augment: bool = True) -> dict:
        """Back-project the context pair, rotate points and all cameras together, draw the point mask.
        ``mask_ratio`` (default the config's) 0 and ``augment=False`` (no rotation) draw nothing from
        ``generator``: the novel-view evaluation's input (:meth:`render_targets`)."""
        rgb, depth, K, c2w, near, far = self.check_batch(batch)
        B, V, _, H, W = rgb.shape
        cloud = backproject_context(rgb[:, :NUM_CONTEXT], depth[:, :NUM_CONTEXT], K[:, :NUM_CONTEXT], c2w[:, :NUM_CONTEXT])
        empty = (cloud.counts == 0).nonzero().squeeze(-1)
        if len(empty):
            names = batch.get("scene")
            which = names[int(empty[0])] if isinstance(names, (list, tuple)) else int(empty[0])
            raise InputError(f"gs3: scene {which!r} of the batch has no valid depth pixel in its context views")
        pivots = scene_pivots(cloud.points, cloud.batch, B)  # (B, 3)
        if augment:
            rotations = random_rotations(B, self.config.rotate_xy, self.config.rotate_z, generator)  # (B, 3, 3)
            points, c2w_aug = rotate_scenes(cloud.points, cloud.batch, c2w, rotations, pivots)  # (N, 3), (B, V, 4, 4)
        else:
            rotations = torch.eye(3, dtype=torch.float64).expand(B, 3, 3)  # (B, 3, 3) identity
            points, c2w_aug = cloud.points, c2w
        masked = self.point_mask(cloud.counts, mask_ratio, generator).to(rgb.device)  # (N,)
        shown = torch.zeros(B * NUM_CONTEXT * H * W, dtype=rgb.dtype, device=rgb.device)
        shown[cloud.flat[~masked]] = 1.0  # 1 at the pixels of visible points
        return {"cloud": dataclasses.replace(cloud, points=points), "cameras": Cameras(K, c2w_aug, W, H),
                "keep": ~masked, "near": near, "far": far, "rotations": rotations, "pivots": pivots,
                "shown": shown.reshape(B, NUM_CONTEXT, 1, H, W)}

    def prepare_pixels(self, batch: dict, generator: torch.Generator | None, mask_ratio: float | None = None) -> dict:
        """2D path: the context pixels, packed scene by scene in (view, row, column) order, and the pixel mask
        (exactly round(mask_ratio 2HW) of each scene's pixels masked; ``mask_ratio`` default the config's,
        0 draws nothing); cameras as given (no augmentation)."""
        rgb, depth, K, c2w, near, far = self.check_batch(batch)
        B, V, _, H, W = rgb.shape
        counts = torch.full((B,), NUM_CONTEXT * H * W, dtype=torch.int64)
        masked = self.point_mask(counts, mask_ratio, generator).to(rgb.device)  # (B 2 H W,)
        return {"cameras": Cameras(K, c2w, W, H), "keep": ~masked, "near": near, "far": far,
                "shown": (~masked).to(rgb.dtype).reshape(B, NUM_CONTEXT, 1, H, W)}

    def point_mask(self, counts: Tensor, mask_ratio: float | None, generator: torch.Generator | None) -> Tensor:
        """(sum counts,) bool, True = masked: round(mask_ratio n) of each scene's n points / pixels
        (``mask_ratio`` None = the config's); ratio 0 masks nothing and draws nothing."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        if ratio == 0:
            return torch.zeros(int(counts.sum()), dtype=torch.bool)
        return random_mask_per_cloud(counts, ratio, generator)

    # ---- the model -----------------------------------------------------------------------------------
    def predict_gaussians(self, prep: dict):
        """Encoder on the visible points, Gaussian head on their features -> (HeadOutput, point_index (B, M))."""
        cloud, keep, cams = prep["cloud"], prep["keep"], prep["cameras"]
        vis = keep.nonzero().squeeze(-1)  # (n,) packed indices of the visible points
        counts = torch.bincount(cloud.batch[vis], minlength=len(cloud.counts))  # (B,)
        offset = counts.cumsum(0)  # (B,)
        features = self.encoder(cloud.points[vis], normalize_color(cloud.colors[vis]), offset)  # (n, C)
        if self.config.head.center == "depth_bins":
            context = Cameras(cams.K[:, :NUM_CONTEXT], cams.c2w[:, :NUM_CONTEXT], cams.width, cams.height)
            rays = PixelRays.from_pixels(context, cloud.uv[vis], cloud.view[vis], cloud.batch[vis], prep["near"], prep["far"])
            out = self.head(features, rays, offset)
        else:
            K_src = cams.K[cloud.batch[vis], cloud.view[vis]]  # (n, 3, 3)
            out = self.head(features, cloud.points[vis], pixel_footprint(K_src, cloud.depth[vis]), offset)
        point_index = torch.where(out.source >= 0, vis[out.source.clamp(min=0)], -1)  # (B, M) packed point index
        return out, point_index

    def predict_gaussians_2d(self, rgb: Tensor, prep: dict):
        """2D path: ResNet features of both masked views (stages projected to the epipolar width by 1x1
        convs, upsampled to stride 4 and summed), epipolar cross-view refinement, bilinear upsampling to
        full resolution plus the RGB skip, depth-bin head on the visible pixels -> (HeadOutput, pixel
        index (B, M) into the packed (b, view, row, column) pixels)."""
        cams, keep = prep["cameras"], prep["keep"]
        B, _, _, H, W = rgb.shape
        x = (rgb[:, :NUM_CONTEXT] * prep["shown"]).flatten(0, 1)  # (2B, 3, H, W) masked pixels zeroed
        stages = self.encoder.forward_features(x)  # 4 x (2B, C_s, H/s, W/s)
        h, w = stages[0].shape[-2:]
        fused = sum(F.interpolate(lat(f), size=(h, w), mode="bilinear", align_corners=False)
                    for lat, f in zip(self.lateral, stages))  # (2B, dim, h, w)
        context = Cameras(cams.K[:, :NUM_CONTEXT], cams.c2w[:, :NUM_CONTEXT], W, H)
        grid = context.resized(w, h)
        refined = self.epipolar(fused.unflatten(0, (B, NUM_CONTEXT)), grid.K, grid.c2w, prep["near"], prep["far"])  # (B, 2, dim, h, w)
        full = F.interpolate(refined.flatten(0, 1), size=(H, W), mode="bilinear", align_corners=False) + self.skip(x)  # (2B, dim, H, W)
        features = full.unflatten(0, (B, NUM_CONTEXT)).permute(0, 1, 3, 4, 2).reshape(-1, full.shape[1])  # (B 2 H W, dim)
        uv, view, scene, offset = image_elements(context)
        rays = PixelRays.from_pixels(context, uv, view, scene, prep["near"], prep["far"])
        out = self.head(features, rays, offset, keep=keep)
        return out, out.source

    def render(self, head_out, cameras: Cameras):
        return rasterize(head_out.sh_gaussians(), cameras, background=self.background.to(head_out.gaussians.means),
                         backend=self.config.render_backend, sh_degree=head_out.sh_degree)

    # ---- the loss ------------------------------------------------------------------------------------
    def lpips(self, rendered: Tensor, target: Tensor) -> Tensor:
        """Mean LPIPS over the (B V) images (B V, 3, H, W), with gradient to ``rendered``."""
        if self._lpips.shift.device != rendered.device:
            object.__setattr__(self, "_lpips", self._lpips.to(rendered.device))
        return self._lpips(rendered, target, grad=True).mean()

    def forward(self, batch: dict, ctx: StepContext = StepContext()) -> MethodOutput:
        generator = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(0)
        if self.point_path:
            prep = self.prepare(batch, generator)
            head_out, point_index = self.predict_gaussians(prep)
        else:
            prep = self.prepare_pixels(batch, generator)
            head_out, point_index = self.predict_gaussians_2d(batch["rgb"], prep)
        out = self.render(head_out, prep["cameras"])
        rgb = batch["rgb"]  # (B, V, 3, H, W)
        rendered = out.color  # (B, V, 3, H, W)
        mse = F.mse_loss(rendered, rgb)
        loss, terms = mse, {"mse": mse.detach()}
        if self._lpips is not None:
            lp = self.lpips(rendered.flatten(0, 1), rgb.flatten(0, 1))
            loss = loss + self.config.lpips_weight * lp
            terms["lpips"] = lp.detach()
        with torch.no_grad():
            g = head_out.gaussians
            valid = head_out.valid
            terms.update(
                psnr=-10.0 * torch.log10(((rendered.clamp(0, 1) - rgb) ** 2).mean().clamp_min(1e-10)),
                mean_opacity=g.opacities[valid].mean(), gaussians_per_scene=valid.sum(1).float().mean(),
            )
            renders = self.preview_renders(batch, prep, out)
        extras = {"gaussians": g, "rendered": rendered, "source_index": point_index,  # packed point / pixel of each Gaussian
                  "keep": prep["keep"], "cameras": prep["cameras"]}
        return MethodOutput(loss, terms, renders, extras, rendered_pixels=rendered[:, :, 0].numel())  # B V H W

    def render_targets(self, batch: dict) -> Tensor:
        """Novel views (:meth:`Method.render_targets`): Gaussians from the two context views (views 0, 1) with
        nothing masked and no rotation, rasterized into the target cameras only (views 2..) -> (B, T, 3, H, W)."""
        rgb = self.check_batch(batch)[0]  # (B, V, 3, H, W)
        B, V, _, H, W = rgb.shape
        if V <= NUM_CONTEXT:
            raise InputError(f"gs3: render_targets needs target views after the {NUM_CONTEXT} context views, got V={V}")
        if self.point_path:
            prep = self.prepare(batch, None, mask_ratio=0.0, augment=False)
            head_out, _ = self.predict_gaussians(prep)
        else:
            prep = self.prepare_pixels(batch, None, mask_ratio=0.0)
            head_out, _ = self.predict_gaussians_2d(rgb, prep)
        cams = prep["cameras"]
        targets = Cameras(cams.K[:, NUM_CONTEXT:], cams.c2w[:, NUM_CONTEXT:], W, H)
        return self.render(head_out, targets).color  # (B, T, 3, H, W)

    def preview_renders(self, batch: dict, prep: dict, out) -> dict[str, Tensor]:
        """(B, 3, H, W) pictures: the context views, their visible pixels, the renderings, depth."""
        from ..viz import colorize_depth_batch, scalar_range

        rgb, depth = batch["rgb"], batch["depth"]  # (B, V, 3, H, W), (B, V, 1, H, W)
        shown = prep["shown"]  # (B, 2, 1, H, W) 1 at visible points' / pixels' places
        renders = {}
        for v in range(NUM_CONTEXT):
            lo, hi = scalar_range(depth[:, v, 0], depth[:, v, 0] > 0)  # (B,) each: the input depth's range
            renders[f"context {v}"] = rgb[:, v]
            renders[f"visible {v}"] = rgb[:, v] * shown[:, v] + 0.5 * (1 - shown[:, v])
            renders[f"rendering {v}"] = out.color[:, v].clamp(0, 1)
            renders[f"depth {v}"] = colorize_depth_batch(depth[:, v], lo, hi)
            renders[f"rendered depth {v}"] = colorize_depth_batch(out.depth[:, v] * (out.alpha[:, v] > 0.5), lo, hi)
        return renders


__all__ = ["GS3", "GS3Config", "PointSet", "backproject_context", "random_rotations", "rotate_scenes",
           "scene_pivots"]
