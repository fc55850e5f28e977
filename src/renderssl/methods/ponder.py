"""PonderV2, point branch: a scene's point cloud -> SparseUNet -> dense 3D feature volume -> NeuS rendering
of K posed RGB-D frames (+ semantics) -> L1 colour, depth, SDF and eikonal losses.

Mechanism (PonderV2 Sec. 3, official indoor config ``pretrain-ponder-spunet-v1m1-0-base.py``; values are
the paper's / official defaults unless stated):

1. Sample (``data.datasets.MultiViewDataset``, per scene): ``views.count`` = 5 random RGB-D frames
   (``num_cameras=5``) and the scene's fused cloud (``scene_cloud``), then :class:`PonderSceneTransform`,
   in the Dataset (PonderV2 does it in its data pipeline, so the forward pass has no per-scene loop):
   a. one random similarity per scene (rotate z in ±pi, x and y in ±pi/64, scale 0.9-1.1, x-flip with
      probability 0.5, about the cloud pivot: ``data.points.augment_points``) applied to the points, the
      normals AND the frames' c2w together; images are unchanged by a similarity of the world, z-depth
      scales with s (so ``depth``, ``near``, ``far`` are multiplied by s);
   b. grid sampling at ``grid_size`` = 0.02 (Pointcept's GridSample, train mode: a random point per voxel);
   c. input masking ``input_mask``: ``dropout`` (the indoor config's RandomDropout(0.8): 80% of the
      grid-sampled points removed at random, exactly round(0.8 n)), ``block`` (8³-voxel blocks at ratio
      0.8: the masked points stay, flagged ``cloud["masked"]``, and their input features are replaced by
      a learnable mask token before the encoder), or ``none``.
2. Encoder: SparseUNet SpUNet-v1m1 (``sparse_unet``, preset ``base``: channels (32, 64, 128, 256, 256, 128,
   96, 96), layers (2, 3, 4, 6, 2, 2, 2, 2)), input features [normalize_color(rgb) in [-1, 1], normals]
   (6 channels), 96-d per-point features. Its voxel size is ``grid_size`` (one value for both).
3. Feature volume (``models.volume``): each scene's similarity S into the unit cube (``unit_cube_transforms``
   of the encoder's input cloud; the cameras by ``apply_to_cameras``, z-depth x ``scale_of(S)``), mean
   scatter of the point features into ``grid_shape`` = (128, 128, 32) cells tiling [-0.5, 0.5]^3
   (``densify``), then ``UNet3D(96, volume_channels=128, f_maps 32, 4 levels)``.
4. Field and rendering: ``models.heads.sdf_field.VolumeSDFField`` (geometry / appearance halves, IF-Net
   SDF, colour and semantic decoders) read at ``world_to_grid(p, *centre_bounds(grid_shape, UNIT_BOX))``
   (one grid box for densify and lookup: ``SDFFieldConfig.box``); ``rays_per_view`` = 256 random pixels
   with valid depth per frame; NeuS rendering (``render.volume.render_neus``): 96 stratified + 36
   importance samples in 1 up-sampling step, learnable ``SingleVariance`` (init 0.3), between the ray's
   entry into and exit from the collider [-0.55, 0.55]^3 (PonderV2's AABB; near >= 0.01). Samples
   outside the volume's cells read zeros (``padding_mode`` zeros, as the official SmoothSampler).
5. Losses (``methods.ponder_losses``, official weights): rgb L1 10, depth L1 1 on the normalised depth
   Σ w t / Σ w (the official code's), SDF 10 and free space 1 (truncation 0.05, unit-cube units), eikonal
   0.01, semantic 0.1 (InfoNCE against the class-name text embeddings of ``text_embeddings``). Depth
   targets are ray distances in unit-cube units: the frame's z-depth x s_aug (1.a) x s_cube (3), divided
   by d · optical axis (``ray_distance_from_z_depth``).

Our choices where the paper and the official code are silent or where we differ:

- Augmentation, grid sampling and masking run per sample in the Dataset with the sample's own seeded
  generator (``MultiViewDataset(transform=...)``): a sample is a pure function of (seed, epoch, index).
  The order is: similarity, grid sampling, masking (the dropout keeps 20% of the grid-sampled points;
  dropping before grid sampling would barely thin a dense fused cloud). ``augment.dropout_ratio`` must
  be 0: masking is ``input_mask``'s.
- A cloud without normals (e.g. RGB-D frames fused without them) gets zero normals (in_channels stays 6).
- Block masking: blocks of ``mask_block``³ voxels of ``grid_size`` (coordinates from each cloud's own
  minimum), round(ratio x blocks) masked per cloud (``data.points.block_mask``); the token (6 values,
  truncated normal std 0.02) replaces the masked points' features; the points keep their coordinates.
- Ray sampling, from the step's generator (``StepContext.generator``; a generator seeded 0 when None):
  per frame ``rays_per_view`` distinct valid-depth pixels, uniformly (the top-k of i.i.d. uniform keys,
  (B V, H W) at once). A frame with fewer valid pixels than that repeats its valid pixels cyclically (its
  rays still all land on valid depth); a frame with no valid pixel is an InputError naming the scene.
  Ray directions are unit vectors through pixel centres (j + 0.5, i + 0.5) (``Cameras.rays_at``).
- Rays that miss the collider (possible only for a camera outside the cube looking away from it) are
  rendered between near 0.01 and 1.01 to keep the batch rectangular, and left out of every loss (their
  depth target is set to 0 = invalid, and the colour term averages over hitting rays only).
- The unit-cube similarity is computed from the encoder's input cloud (after masking), as PonderV2 does.
- The semantic term needs ``text_embeddings`` (a local file, ``data.text_embeddings``), ``class_names``
  (the order of the dataset's labels) and ``semantic`` labels in the batch; without embeddings the field
  has no semantic decoder and the run warns once at construction. ``field.semantic_dim`` follows the
  embeddings' width.
- Logged terms: every weighted loss term, ``psnr`` of the rendered rays (hitting rays), ``depth_abs_rel``
  (mean |D - d| / d over valid hitting rays), ``inv_s``, ``hit_fraction``.
- Previews (cheap: no full-frame rendering): each scene's first frame, its depth, and the frame with the
  rendered colours painted at the sampled ray pixels (grey elsewhere) beside the targets at those pixels.
- ``param_groups``: none (one optimiser group, as the official config).
- Validation (``train.val_every``) scores the pretraining objective: val samples are augmented and masked
  like training ones, from each sample's fixed generator (the same samples at every validation, new
  rays), so the val loss compares with the training loss; the unmasked reconstruction of held-out scenes
  is the evaluation.
- Evaluation (``renderssl evaluate``, ``eval.ponder_eval``): ``render_volume`` (the volume of a batch, no
  rays) feeds the surfaces (marching cubes on the SDF) and ``render_targets`` (every pixel of the target
  frames from a volume of the context frames alone).

Image branch (``encoder_architecture: resnet | vit``; PonderV2 Sec. 3.3, Eq. 10; the module docstring of
``models.volume.image_volume`` states its choices): the K frames (rgb in [0, 1], optionally patch-masked,
``image_mask_ratio``) -> ResNet (stages fused by 1x1 laterals at stride 4) or ViT (patch tokens, one 1x1
projection) -> ``image_feature_dim`` channels per frame -> lifted into the same (X, Y, Z) grid by projecting
the voxel centres into every frame (visible, in-frustum, averaged) -> the same UNet3D, field, rays and
losses. The unit cube is fit to the frames' back-projected valid depth (every ``cube_pixel_stride``-th
pixel): the supervising depth sets the scene's extent only. No scene cloud is loaded and no similarity
augmentation is applied (a similarity of the world changes no image; the cube's normalisation undoes
its scale); the point-branch fields (``sparse_unet``, ``grid_size``, ``input_mask``, ``augment``,
``scene_cloud``) are unused. The 2D encoder is the exported product.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.datasets import SceneCloudConfig
from ..data.points import (
    PointAugmentConfig, augment_points, block_mask, grid_coordinates, grid_sample, normalize_color,
    offset_to_batch, random_point_mask, select_points,
)
from ..data.text_embeddings import SEMANTIC_OFF_MESSAGE, load_class_embeddings
from ..data.views import ViewSelectionConfig
from ..errors import InputError
from ..geometry import Cameras
from ..models.encoders.resnet import ResNet, ResNetConfig
from ..models.encoders.sparse_unet import SparseUNet, SparseUNetConfig
from ..models.encoders.vit import ViTConfig, VisionTransformer
from ..models.heads.sdf_field import SDFFieldConfig, VolumeSDFField
from ..models.volume import (
    IMAGE_ARCHITECTURES, ImageVolume, UNet3D, apply_to_cameras, apply_to_points, densify, frames_unit_cube,
    patch_mask, scale_of, unit_cube_transforms,
)
from ..render.volume import SingleVariance, ray_distance_from_z_depth, render_neus
from ..typed_config import to_dict
from .base import Method, MethodOutput, StepContext
from .ponder_losses import PonderLossConfig, ponder_losses

IN_CHANNELS = 6  # colour (3) + normal (3)
INPUT_MASKS = ("dropout", "block", "none")
COLLIDER = ((-0.55, -0.55, -0.55), (0.55, 0.55, 0.55))  # PonderV2's AABB around the unit cube
NEAR_MIN = 0.01  # PonderV2's collider near plane
ARCHITECTURES = ("sparse_unet", *IMAGE_ARCHITECTURES)  # sparse_unet: the point branch; resnet | vit: the image branch


def _default_sparse_unet() -> SparseUNetConfig:
    return SparseUNetConfig(preset="base", in_channels=IN_CHANNELS)


def _default_augment() -> PointAugmentConfig:
    return PointAugmentConfig(rotate_z=math.pi, rotate_xy=math.pi / 64, scale=(0.9, 1.1), flip_prob=0.5)


def _default_views() -> ViewSelectionConfig:
    return ViewSelectionConfig(mode="random", count=5)


# ---- the per-sample transform (Dataset side) ------------------------------------------------------
def sample_cloud(sample: dict) -> dict:
    """A copy of a multi-view sample's scene cloud, zero normals where it has none (6 input channels)."""
    if "cloud" not in sample:
        raise InputError(f"ponder: sample of scene {sample.get('scene')!r} has no 'cloud' (MultiViewDataset(scene_cloud=...))")
    cloud = dict(sample["cloud"])
    if "normals" not in cloud:
        cloud["normals"] = torch.zeros_like(cloud["points"])  # (N, 3)
    return cloud


@dataclass
class PonderSceneTransform:
    """PonderV2's data pipeline on one multi-view sample (picklable; ``MultiViewDataset(transform=...)``):
    joint similarity of cloud and cameras, grid sampling, input masking (module docstring, step 1)."""

    augment: PointAugmentConfig = dataclasses.field(default_factory=_default_augment)
    grid_size: float = 0.02
    input_mask: str = "dropout"
    mask_ratio: float = 0.8
    mask_block: int = 8

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        cloud = sample_cloud(sample)
        cloud, _, T = augment_points(cloud, dataclasses.replace(self.augment, dropout_ratio=0.0), generator)
        cloud = select_points(cloud, grid_sample(cloud["points"], self.grid_size, mode="random", generator=generator))
        if self.input_mask == "dropout":
            removed = random_point_mask(len(cloud["points"]), self.mask_ratio, generator)  # (n,)
            cloud = select_points(cloud, (~removed).nonzero().squeeze(1))
        elif self.input_mask == "block":
            coords = grid_coordinates(cloud["points"], self.grid_size)  # (n, 3)
            cloud["masked"] = block_mask(coords, self.mask_ratio, self.mask_block, generator)  # (n,)
        out = dict(sample, cloud=cloud, c2w=T.apply_c2w(sample["c2w"]), depth=sample["depth"] * T.scale)
        for key in ("near", "far"):
            if key in sample:
                out[key] = sample[key] * T.scale
        return out


# ---- the config ----------------------------------------------------------------------------------
@dataclass
class PonderConfig:
    encoder_architecture: str = "sparse_unet"  # sparse_unet (point branch) | resnet | vit (image branch)
    sparse_unet: SparseUNetConfig = dataclasses.field(default_factory=_default_sparse_unet)
    resnet: ResNetConfig = dataclasses.field(default_factory=ResNetConfig)  # image branch: ResNet-50 at paper scale
    vit: ViTConfig = dataclasses.field(default_factory=ViTConfig)  # image branch: ViT-B/16
    image_feature_dim: int = 96  # image branch: fused per-frame features (the point branch's SparseUNet width)
    cube_pixel_stride: int = 1  # image branch: every n-th pixel's valid depth fits the unit cube
    image_mask_ratio: float = 0.3  # image branch: fraction of each frame's patches zeroed (UniPAD's MaskConvNeXt 0.3)
    image_mask_patch: int = 32  # image branch: edge of a mask patch, pixels
    grid_size: float = 0.02  # grid sampling and the encoder's voxel edge (scene units, metres)
    input_mask: str = "dropout"  # dropout | block | none
    mask_ratio: float = 0.8  # dropout: fraction removed; block: fraction of blocks masked
    mask_block: int = 8  # block: edge of a mask block, in voxels
    augment: PointAugmentConfig = dataclasses.field(default_factory=_default_augment)
    grid_shape: tuple[int, int, int] = (128, 128, 32)  # (X, Y, Z) cells of the feature volume
    volume_channels: int = 128
    unet_f_maps: int = 32
    unet_levels: int = 4
    field: SDFFieldConfig = dataclasses.field(default_factory=SDFFieldConfig)
    rays_per_view: int = 256
    n_samples: int = 96
    n_importance: int = 36
    up_sample_steps: int = 1
    variance_init: float = 0.3
    loss: PonderLossConfig = dataclasses.field(default_factory=PonderLossConfig)
    views: ViewSelectionConfig = dataclasses.field(default_factory=_default_views)
    scene_cloud: SceneCloudConfig = dataclasses.field(default_factory=SceneCloudConfig)
    text_embeddings: str | None = None  # local .pt/.pth/.npz of class-name embeddings; None = semantic term off
    class_names: list[str] | None = None  # the dataset's label order (needed with text_embeddings)

    def __post_init__(self):
        self.grid_shape = tuple(int(n) for n in self.grid_shape)
        if self.encoder_architecture not in ARCHITECTURES:
            raise InputError(f"ponder.encoder_architecture: {self.encoder_architecture!r} is not one of {list(ARCHITECTURES)}")
        if self.resnet.in_chans != 3 or self.resnet.num_classes != 0 or self.vit.in_chans != 3:
            raise InputError("ponder.resnet / ponder.vit: in_chans must be 3 (RGB) and resnet.num_classes 0")
        if not 0.0 <= self.image_mask_ratio < 1.0:
            raise InputError(f"ponder.image_mask_ratio: must lie in [0, 1), got {self.image_mask_ratio}")
        for name in ("image_feature_dim", "cube_pixel_stride", "image_mask_patch"):
            if getattr(self, name) < 1:
                raise InputError(f"ponder.{name}: must be >= 1, got {getattr(self, name)}")
        if self.input_mask not in INPUT_MASKS:
            raise InputError(f"ponder.input_mask: {self.input_mask!r} is not one of {list(INPUT_MASKS)}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise InputError(f"ponder.mask_ratio: must lie in [0, 1), got {self.mask_ratio}")
        if self.mask_block < 1:
            raise InputError(f"ponder.mask_block: must be >= 1, got {self.mask_block}")
        if self.augment.dropout_ratio != 0:
            raise InputError("ponder.augment.dropout_ratio: must be 0; input dropout is ponder.input_mask=dropout "
                             "with ponder.mask_ratio")
        if not self.grid_size > 0:
            raise InputError(f"ponder.grid_size: must be > 0, got {self.grid_size}")
        if self.sparse_unet.in_channels != IN_CHANNELS or self.sparse_unet.num_classes != 0:
            raise InputError(f"ponder.sparse_unet: in_channels must be {IN_CHANNELS} (colour + normal) and num_classes 0, "
                             f"got {self.sparse_unet.in_channels} and {self.sparse_unet.num_classes}")
        if self.views.mode != "random":
            raise InputError(f"ponder.views.mode: PonderV2 draws random frames (mode random), got {self.views.mode!r}")
        if len(self.grid_shape) != 3 or min(self.grid_shape) < 2:
            raise InputError(f"ponder.grid_shape: expected 3 sizes >= 2 (X, Y, Z), got {list(self.grid_shape)}")
        for name in ("rays_per_view", "n_samples", "unet_f_maps", "unet_levels", "volume_channels"):
            if getattr(self, name) < 1:
                raise InputError(f"ponder.{name}: must be >= 1, got {getattr(self, name)}")
        if self.text_embeddings and not self.class_names:
            raise InputError("ponder.class_names: needed with ponder.text_embeddings (the order of the dataset's labels)")
        # one voxel size for grid sampling and the encoder; the field reads the UNet3D's channels
        self.sparse_unet = dataclasses.replace(self.sparse_unet, grid_size=self.grid_size)
        self.field = dataclasses.replace(self.field, volume_channels=self.volume_channels)

    @property
    def image_branch(self) -> bool:
        return self.encoder_architecture in IMAGE_ARCHITECTURES

    @property
    def encoder_cfg(self) -> SparseUNetConfig | ResNetConfig | ViTConfig:
        return getattr(self, self.encoder_architecture)

    def transform(self) -> PonderSceneTransform:
        return PonderSceneTransform(self.augment, self.grid_size, self.input_mask, self.mask_ratio, self.mask_block)


# ---- rays ----------------------------------------------------------------------------------------
def collider_bounds(rays_o: Tensor, rays_d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """near, far, hit (R,) of rays (R, 3) against PonderV2's collider; a ray that misses it gets the dummy
    interval [NEAR_MIN, NEAR_MIN + 1] (the batch stays rectangular) and is left out by its ``hit``."""
    near, far, hit = ray_aabb(rays_o, rays_d, *COLLIDER, NEAR_MIN)  # (R,) each
    near = torch.where(hit, near, torch.full_like(near, NEAR_MIN))
    return near, torch.where(hit, far, near + 1.0), hit


def ray_aabb(rays_o: Tensor, rays_d: Tensor, lo, hi, near_min: float = NEAR_MIN) -> tuple[Tensor, Tensor, Tensor]:
    """Slab intersection of rays (R, 3) with the box [lo, hi] -> near (R,) (>= near_min), far (R,), hit (R,)
    bool (far > near: the ray meets the box in front of near_min). Missed rays keep near/far as computed."""
    if rays_o.shape != rays_d.shape or rays_o.dim() != 2 or rays_o.shape[-1] != 3:
        raise InputError(f"ray_aabb: rays_o and rays_d must both be (R, 3), got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}")
    lo = torch.as_tensor(lo, dtype=rays_o.dtype, device=rays_o.device)  # (3,)
    hi = torch.as_tensor(hi, dtype=rays_o.dtype, device=rays_o.device)  # (3,)
    tiny = torch.finfo(rays_d.dtype).tiny
    d = torch.where(rays_d.abs() < tiny, torch.full_like(rays_d, tiny), rays_d)  # (R, 3) no division by 0
    t0, t1 = (lo - rays_o) / d, (hi - rays_o) / d  # (R, 3) each
    near = torch.minimum(t0, t1).amax(-1).clamp_min(near_min)  # (R,)
    far = torch.maximum(t0, t1).amin(-1)  # (R,)
    return near, far, far > near


def sample_ray_pixels(valid: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """(F, P) bool valid pixels of F frames -> (F, count) flat pixel indices, all valid: ``count`` distinct
    uniform picks per frame (top-k of i.i.d. uniform keys), repeated cyclically in a frame with fewer
    valid pixels. Every frame needs one valid pixel (the caller checks)."""
    keys = torch.rand(valid.shape, generator=generator, dtype=torch.float32).to(valid.device)  # (F, P)
    keys = torch.where(valid, keys, torch.full_like(keys, -1.0))  # invalid pixels last
    order = keys.topk(min(count, valid.shape[1]), dim=1).indices  # (F, k) valid first, random order
    n_valid = valid.sum(1, keepdim=True)  # (F, 1)
    slot = torch.arange(count, device=valid.device)[None] % n_valid.clamp_min(1)  # (F, count)
    return order.gather(1, slot.clamp_max(order.shape[1] - 1))  # (F, count)


@dataclass
class RayBatch:
    """The sampled rays of B scenes x V frames x R rays, flattened scene-major (b, v, r)."""

    origins: Tensor  # (B V R, 3) unit-cube frame
    directions: Tensor  # (B V R, 3) unit
    near: Tensor  # (B V R,)
    far: Tensor  # (B V R,)
    hit: Tensor  # (B V R,) bool: the ray meets the collider
    rgb: Tensor  # (B V R, 3) target colour
    distance: Tensor  # (B V R,) target ray distance, unit-cube units (0 = invalid or missed)
    labels: Tensor | None  # (B V R,) int64 semantic labels (-1 = ignore)
    pixels: Tensor  # (B, V, R) flat pixel index i W + j


# ---- the method ----------------------------------------------------------------------------------
class Ponder(Method):
    config_class = PonderConfig
    sample_type = "multiview"
    encoder_architecture = "sparse_unet"

    def __init__(self, config: PonderConfig):
        super().__init__()
        self.config = config
        self.num_context = config.views.num_context
        embeddings = load_class_embeddings(config.text_embeddings, config.class_names)  # (K, D) or None
        if embeddings is None and config.loss.semantic_weight > 0:
            warnings.warn(f"ponder: {SEMANTIC_OFF_MESSAGE}", stacklevel=2)
        field_cfg = dataclasses.replace(config.field, semantic_dim=0 if embeddings is None else embeddings.shape[1])
        self.encoder_architecture = config.encoder_architecture  # the export architecture of this instance
        self.image_volume = None
        if config.encoder_architecture == "resnet":
            self.encoder = ResNet(config.resnet)
            self.image_volume = ImageVolume("resnet", self.encoder.feature_channels, config.image_feature_dim, config.grid_shape, config.field.box)
        elif config.encoder_architecture == "vit":
            self.encoder = VisionTransformer(config.vit)
            self.image_volume = ImageVolume("vit", self.encoder.embed_dim, config.image_feature_dim, config.grid_shape, config.field.box)
        else:
            self.encoder = SparseUNet(config.sparse_unet)
        volume_in = config.image_feature_dim if config.image_branch else self.encoder.out_channels
        block = config.input_mask == "block" and not config.image_branch
        self.mask_token = nn.Parameter(torch.empty(1, IN_CHANNELS)) if block else None
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.projection = UNet3D(volume_in, config.volume_channels, config.unet_f_maps, config.unet_levels)
        self.field = VolumeSDFField(field_cfg)
        self.variance = SingleVariance(config.variance_init)
        self.register_buffer("class_embeddings", embeddings, persistent=False)  # (K, D) or None

    @classmethod
    def sample_options(cls, config: PonderConfig) -> dict:
        if config.image_branch:  # frames only: no cloud, no similarity augmentation
            return {"views": config.views, "num_targets": 0}
        return {"views": config.views, "num_targets": 0, "scene_cloud": config.scene_cloud,
                "transform": config.transform()}

    def encoder_config(self) -> dict:
        return to_dict(self.config.encoder_cfg)

    # ---- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def check_batch(batch: dict, cloud: bool = True) -> None:
        for key in ("rgb", "depth", "K", "c2w", "cloud")[:5 if cloud else 4]:
            if key not in batch:
                raise InputError(f"ponder: the batch has no {key!r} (multi-view samples with scene_cloud: rgb, depth, K, c2w, cloud)")
        rgb = batch["rgb"]
        if rgb.dim() != 5 or rgb.shape[2] != 3:
            raise InputError(f"ponder: batch['rgb'] must be (B, V, 3, H, W), got {tuple(rgb.shape)}")
        B, V, _, H, W = rgb.shape
        if batch["depth"].shape != (B, V, 1, H, W) or batch["K"].shape != (B, V, 3, 3) or batch["c2w"].shape != (B, V, 4, 4):
            raise InputError(f"ponder: depth, K, c2w must be (B, V, 1, H, W), (B, V, 3, 3), (B, V, 4, 4) with B, V, H, W = "
                             f"{B, V, H, W}, got {tuple(batch['depth'].shape)}, {tuple(batch['K'].shape)}, {tuple(batch['c2w'].shape)}")
        if cloud and ("offset" not in batch["cloud"] or len(batch["cloud"]["offset"]) != B):
            raise InputError(f"ponder: batch['cloud'] must be packed clouds of the {B} scenes (points, colors, offset)")

    def point_features(self, cloud: dict) -> Tensor:
        """[normalize_color(colors), normals] (N, 6), masked points' replaced by the mask token."""
        colors = cloud["colors"]  # (N, 3)
        normals = cloud.get("normals")
        normals = torch.zeros_like(colors) if normals is None else normals.to(colors)  # (N, 3)
        feats = torch.cat([normalize_color(colors), normals], dim=1)  # (N, 6)
        if self.mask_token is not None and "masked" in cloud:
            masked = cloud["masked"].to(feats.device)[:, None]  # (N, 1)
            feats = torch.where(masked, self.mask_token.to(feats.dtype).expand_as(feats), feats)
        return feats

    # ---- the model -------------------------------------------------------------------------------
    def feature_volume(self, cloud: dict) -> tuple[Tensor, Tensor]:
        """Packed clouds -> (volume (B, C, Z, Y, X), unit-cube similarities S (B, 4, 4))."""
        points, offset = cloud["points"], cloud["offset"].to(cloud["points"].device)
        batch = offset_to_batch(offset).to(points.device)  # (N,) scene of every point
        features = self.encoder(points, self.point_features(cloud), offset)  # (N, 96)
        S = unit_cube_transforms(points, offset)  # (B, 4, 4)
        points_unit = apply_to_points(points, batch, S)  # (N, 3)
        dense = densify(features, points_unit, batch, len(offset), self.config.grid_shape, self.config.field.box)  # (B, 96, Z, Y, X)
        return self.projection(dense), S  # (B, C, Z, Y, X)

    def feature_volume_from_images(self, batch: dict, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Image branch: the batch's frames -> (volume (B, C, Z, Y, X), unit-cube similarities S (B, 4, 4)).
        With a ``generator`` the frames are patch-masked at ``image_mask_ratio``; without, nothing is masked."""
        cfg = self.config
        rgb = batch["rgb"]  # (B, V, 3, H, W)
        B, V, _, H, W = rgb.shape
        S = frames_unit_cube(batch["depth"], batch["K"], batch["c2w"], cfg.cube_pixel_stride, batch.get("scene"))  # (B, 4, 4)
        c2w = apply_to_cameras(batch["c2w"].to(rgb.dtype), S.to(rgb.dtype))  # (B, V, 4, 4)
        keep = None
        if generator is not None and cfg.image_mask_ratio > 0:
            keep = patch_mask(B * V, H, W, cfg.image_mask_patch, cfg.image_mask_ratio, generator).to(rgb.device)  # (B V, 1, H, W)
        lifted = self.image_volume(self.encoder, rgb, batch["K"], c2w, keep)  # (B, C_img, Z, Y, X)
        return self.projection(lifted), S  # (B, C, Z, Y, X)

    def scene_volume(self, batch: dict, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The branch's feature volume and S of a checked batch (point cloud or frames)."""
        if self.config.image_branch:
            return self.feature_volume_from_images(batch, generator)
        return self.feature_volume(batch["cloud"])

    def sample_rays(self, batch: dict, S: Tensor, generator: torch.Generator) -> RayBatch:
        """``rays_per_view`` valid-depth pixels per frame, as unit rays in the unit-cube frame with targets."""
        rgb, depth = batch["rgb"], batch["depth"]  # (B, V, 3, H, W), (B, V, 1, H, W)
        B, V, _, H, W = rgb.shape
        R = self.config.rays_per_view
        valid = (depth[:, :, 0] > 0).reshape(B * V, H * W)  # (B V, H W)
        empty = (valid.sum(1) == 0).nonzero().squeeze(-1)
        if len(empty):
            names = batch.get("scene")
            b = int(empty[0]) // V
            which = names[b] if isinstance(names, (list, tuple)) else b
            raise InputError(f"ponder: scene {which!r} of the batch has a frame ({int(empty[0]) % V}) without a valid depth pixel")
        pixels = sample_ray_pixels(valid, R, generator).reshape(B, V, R)  # (B, V, R)
        uv = torch.stack([(pixels % W).to(rgb.dtype) + 0.5, (pixels // W).to(rgb.dtype) + 0.5], dim=-1)  # (B, V, R, 2)
        c2w = apply_to_cameras(batch["c2w"].to(rgb.dtype), S.to(rgb.dtype))  # (B, V, 4, 4)
        origins, directions = Cameras(batch["K"].to(rgb.dtype), c2w, W, H).rays_at(uv, normalize=True)  # (B, V, R, 3) each
        origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)  # (B V R, 3)
        near, far, hit = collider_bounds(origins, directions)  # (B V R,) each
        flat = pixels.reshape(B, V * R)  # (B, V R) per frame's pixel
        frame = torch.arange(V, device=rgb.device).repeat_interleave(R)[None]  # (1, V R)
        scenes = torch.arange(B, device=rgb.device)[:, None]  # (B, 1)
        colours = rgb.permute(0, 1, 3, 4, 2).reshape(B, V, H * W, 3)[scenes, frame, flat]  # (B, V R, 3)
        z = depth.reshape(B, V, H * W)[scenes, frame, flat] * scale_of(S).to(rgb.dtype)[:, None]  # (B, V R)
        axis = c2w[..., :3, 2][:, :, None].expand(B, V, R, 3).reshape(-1, 3)  # (B V R, 3) optical axes
        distance = ray_distance_from_z_depth(z.reshape(-1), directions, axis) * hit  # (B V R,)
        labels = None
        if "semantic" in batch:
            labels = batch["semantic"].reshape(B, V, H * W)[scenes, frame, flat].reshape(-1).long()  # (B V R,)
        return RayBatch(origins, directions, near, far, hit, colours.reshape(-1, 3), distance, labels, pixels)

    def render(self, volume: Tensor, rays: RayBatch, generator: torch.Generator | None, stratified: bool = True):
        """NeuS rendering of the rays (scene-major) through the field bound to ``volume``."""
        cfg = self.config
        return render_neus(rays.origins, rays.directions, rays.near, rays.far, self.field.bind(volume),
                           n_samples=cfg.n_samples, n_importance=cfg.n_importance, up_sample_steps=cfg.up_sample_steps,
                           variance=self.variance, stratified=stratified, generator=generator)

    def forward(self, batch: dict, ctx: StepContext = StepContext()) -> MethodOutput:
        generator = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(0)
        self.check_batch(batch, cloud=not self.config.image_branch)
        volume, S = self.scene_volume(batch, generator)  # (B, C, Z, Y, X), (B, 4, 4)
        rays = self.sample_rays(batch, S, generator)
        out = self.render(volume, rays, generator)
        rgb, semantic = self.field.split_features(out.features)  # (R, 3), (R, D) or None
        depth = out.depth_normalized  # (R,)
        hit = rays.hit
        labels = rays.labels if semantic is not None else None
        if labels is not None:
            labels = torch.where(hit, labels, torch.full_like(labels, -1))
        rgb_hit, target_hit = rgb[hit], rays.rgb[hit]  # (H, 3) each: the rays that meet the collider
        terms = ponder_losses(self.config.loss, rgb_hit, target_hit, depth, rays.distance, out.t, out.sdf,
                              out.gradients, semantic, labels, self.class_embeddings)
        loss = terms.pop("total")
        with torch.no_grad():
            valid = rays.distance > 0  # (R,)
            mse = ((rgb_hit.detach().clamp(0, 1) - target_hit) ** 2).mean().clamp_min(1e-10)
            terms.update(psnr=-10.0 * torch.log10(mse), inv_s=self.variance().detach(),
                         depth_abs_rel=((depth - rays.distance).abs() / rays.distance.clamp_min(1e-10))[valid].mean(),
                         hit_fraction=hit.float().mean())
            renders = self.preview_renders(batch, rays, rgb)
        extras = {"rgb": rgb, "depth": depth, "rays": rays, "S": S, "inv_s": out.inv_s}
        return MethodOutput(loss, terms, renders, extras, rendered_pixels=len(rays.hit))

    @torch.no_grad()
    def render_volume(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Hook for surfaces: the feature volume (B, C, Z, Y, X) and S (B, 4, 4) of a batch (no rays)."""
        self.check_batch(batch, cloud=not self.config.image_branch)
        return self.scene_volume(batch)

    def render_targets(self, batch: dict) -> Tensor:
        """Novel views (:meth:`Method.render_targets`): every pixel of the frames after the ``num_context``
        context frames, from a volume built from the context frames alone (``eval.ponder_eval``)."""
        from ..eval.ponder_eval import render_target_frames

        return render_target_frames(self, batch)[0]  # (B, T, 3, H, W)

    def preview_renders(self, batch: dict, rays: RayBatch, rgb: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) pictures of each scene's first frame: the frame, its depth, the rendered colours at
        the sampled ray pixels and the targets there (grey elsewhere)."""
        from ..viz import colorize_depth_batch, scalar_range

        image, depth = batch["rgb"][:, 0], batch["depth"][:, 0]  # (B, 3, H, W), (B, 1, H, W)
        B, _, H, W = image.shape
        R = self.config.rays_per_view
        pix = rays.pixels[:, 0]  # (B, R) first frame's rays
        first = rgb.reshape(B, -1, R, 3)[:, 0]  # (B, R, 3)
        rows = torch.arange(B, device=image.device)[:, None]  # (B, 1)

        def painted(values: Tensor) -> Tensor:
            canvas = torch.full((B, H * W, 3), 0.5, dtype=image.dtype, device=image.device)
            canvas[rows, pix] = values.to(image.dtype).clamp(0, 1)
            return canvas.reshape(B, H, W, 3).permute(0, 3, 1, 2)  # (B, 3, H, W)

        lo, hi = scalar_range(depth[:, 0], depth[:, 0] > 0)
        target = image.permute(0, 2, 3, 1).reshape(B, H * W, 3)[rows, pix]  # (B, R, 3)
        return {"frame 0": image, "depth 0": colorize_depth_batch(depth, lo, hi),
                "rendered rays 0": painted(first), "target rays 0": painted(target)}


__all__ = ["ARCHITECTURES", "COLLIDER", "Ponder", "PonderConfig", "PonderSceneTransform", "RayBatch", "ray_aabb", "sample_ray_pixels"]
