"""PonderV2's image branch: K posed frames -> 2D encoder -> one feature map per frame -> lifted into the
voxel grid (Eq. 10) -> (B, C, Z, Y, X), the input of the same UNet3D, field, rays and losses as the point
branch.

PonderV2 (Sec. 3.3, Fig. 4, Eq. 10): "we first mask out partial pixels as the data augmentation, then
leverage a 2D backbone to extract multi-view image features; ... pre-define the 3D voxel coordinates X_p
and project X_p on multi-view images to index the corresponding 2D features" by bilinear interpolation.
The paper names no fusion of the backbone's stages, no combination over frames, and (indoors) no way to
place the scene in the voxel grid without a point cloud. Our choices:

- The 2D encoder is not owned here: the method registers it as its ``encoder`` (the exported product,
  checkpoint keys ``encoder.*``) and hands it to :meth:`ImageVolume.forward`; this module holds only the
  fusion layers. RGB enters in [0, 1] (as GS³'s 2D path and renderssl's downstream image tasks feed it).
- ResNet (``forward_features``: stages at strides 4, 8, 16, 32): every stage projected to ``feature_dim``
  by a 1x1 conv (with bias), bilinearly resized to the stride-4 map and summed (GS³'s 2D path / an FPN
  without its top-down convs). Stride 4 (not 8): at 320 x 240 a stride-4 cell is about 4 cm at 3 m,
  the size of a (128, 128, 32) voxel over a 5 m room, so each voxel reads its own feature cell.
- ViT (``patch_features``): the patch tokens as a (D, H/p, W/p) grid, one 1x1 conv to ``feature_dim``;
  the feature stride is the patch size.
- Lifting: ``models.volume.lift_image_features`` (visible, in-frustum projections only, averaged over the
  frames that see the voxel centre; 0 where none does), with the intrinsics of the feature map
  (``Cameras.resized(W / s, H / s)``). Frame sizes must be multiples of the feature stride s, so that
  the map tiles the image exactly (a ResNet rounds sizes up otherwise and the resized K would drift).
- Image masking (optional, :func:`patch_mask`): PonderV2 masks "partial pixels" of the input; UniPAD, its
  image code, masks with MaskConvNeXt at ratio 0.3. Here square patches of ``patch`` pixels, exactly
  round(ratio x patches) per frame (top-k of i.i.d. uniform keys, one draw for all frames), zeroed in
  the encoder's input; the rendering targets are the unmasked frames.
- The unit cube (:func:`frames_unit_cube`): with no point cloud, each scene's similarity S is fit to the
  back-projected valid depth of its K frames (every ``stride``-th pixel in each direction), with
  ``unit_cube_transforms`` (centre, 1 / max extent, lowest point at z = -0.5). The depth is the frames'
  supervision; using it for the scene's extent only (a data normalisation without gradient, as S is for
  the point branch) gives the 2D encoder no depth input. With stride 1 every supervised surface point
  lies inside the cube (and every ray meets the collider); the cube then spans what the K frames see,
  not the whole room.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from ...geometry import Cameras
from .densify import UNIT_BOX, check_grid_shape, voxel_centres
from .lift import lift_image_features
from .unit_cube import unit_cube_transforms

IMAGE_ARCHITECTURES = ("resnet", "vit")
RESNET_STRIDE = 4  # the fused ResNet map: stage 1's resolution


# ---- the unit cube from the frames ---------------------------------------------------------------
def frames_unit_cube(depth: Tensor, K: Tensor, c2w: Tensor, stride: int = 1, scenes=None) -> Tensor:
    """S (B, 4, 4) fit to the back-projected valid depth (every ``stride``-th pixel) of each scene's frames.

    ``depth`` (B, V, 1, H, W) z-depth (0 = invalid), ``K`` (B, V, 3, 3), ``c2w`` (B, V, 4, 4); ``scenes`` (B
    names, optional) name a scene without a valid pixel in the error.
    """
    if not isinstance(depth, Tensor) or depth.dim() != 5 or depth.shape[2] != 1:
        raise InputError(f"frames_unit_cube: depth must be (B, V, 1, H, W), got {getattr(depth, 'shape', type(depth))}")
    if int(stride) < 1:
        raise InputError(f"frames_unit_cube: stride must be >= 1, got {stride}")
    B, V, _, H, W = depth.shape
    world = Cameras(K.to(depth.dtype), c2w.to(depth.dtype), W, H).backproject_depth(depth)  # (B, V, H, W, 3)
    world = world[:, :, ::stride, ::stride].reshape(B, -1, 3)  # (B, n, 3)
    valid = (depth[:, :, 0, ::stride, ::stride] > 0).reshape(B, -1)  # (B, n)
    counts = valid.sum(1)  # (B,)
    if bool((counts == 0).any()):
        b = int((counts == 0).nonzero()[0])
        which = scenes[b] if isinstance(scenes, (list, tuple)) else b
        raise InputError(f"frames_unit_cube: scene {which!r} has no valid depth pixel in its frames (stride {stride})")
    return unit_cube_transforms(world[valid], counts.cumsum(0))  # (B, 4, 4), scene-major packing


# ---- image masking -------------------------------------------------------------------------------
def patch_mask(num_frames: int, height: int, width: int, patch: int, ratio: float, generator: torch.Generator | None) -> Tensor:
    """(F, 1, H, W) float keep-mask: exactly round(ratio P) of each frame's P square patches of ``patch``
    pixels are 0 (the last row / column of patches may be cut by the frame's edge); ratio 0 draws nothing."""
    if not 0.0 <= ratio < 1.0:
        raise InputError(f"patch_mask: ratio must lie in [0, 1), got {ratio}")
    if patch < 1:
        raise InputError(f"patch_mask: patch must be >= 1, got {patch}")
    gh, gw = -(-height // patch), -(-width // patch)  # patches, rounded up
    masked = int(round(ratio * gh * gw))
    if masked == 0:
        return torch.ones(num_frames, 1, height, width)
    keys = torch.rand(num_frames, gh * gw, generator=generator)  # (F, P)
    keep = torch.ones(num_frames, gh * gw)  # (F, P)
    keep.scatter_(1, keys.topk(masked, dim=1).indices, 0.0)
    keep = keep.reshape(num_frames, 1, gh, gw).repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # (F, 1, gh p, gw p)
    return keep[..., :height, :width]  # (F, 1, H, W)


# ---- frames -> volume ----------------------------------------------------------------------------
class ImageVolume(nn.Module):
    """Frames (B, K, 3, H, W) + cameras in the unit-cube frame -> lifted feature volume (B, C, Z, Y, X).

    ``architecture`` resnet (``encoder_channels`` = the stages' widths) or vit (its embedding width);
    ``feature_dim`` = C; ``grid_shape`` (X, Y, Z) cells over ``box``. The encoder is passed to
    :meth:`forward` (its owner registers it).
    """

    def __init__(self, architecture: str, encoder_channels: Sequence[int] | int, feature_dim: int,
                 grid_shape=(128, 128, 32), box=UNIT_BOX):
        super().__init__()
        if architecture not in IMAGE_ARCHITECTURES:
            raise InputError(f"ImageVolume: architecture {architecture!r} is not one of {list(IMAGE_ARCHITECTURES)}")
        if feature_dim < 1:
            raise InputError(f"ImageVolume: feature_dim must be >= 1, got {feature_dim}")
        self.architecture = architecture
        self.feature_dim = feature_dim
        self.grid_shape = check_grid_shape(grid_shape)
        self.box = box
        if architecture == "resnet":
            self.lateral = nn.ModuleList(nn.Conv2d(c, feature_dim, 1) for c in encoder_channels)
        else:
            self.projection = nn.Conv2d(int(encoder_channels), feature_dim, 1)
        self.register_buffer("centres", voxel_centres(self.grid_shape, box), persistent=False)  # (Z, Y, X, 3)

    def feature_stride(self, encoder: nn.Module) -> int:
        return RESNET_STRIDE if self.architecture == "resnet" else encoder.patch_size

    def frame_features(self, encoder: nn.Module, frames: Tensor) -> Tensor:
        """(F, 3, H, W) in [0, 1] -> (F, C, H / s, W / s) fused feature maps."""
        if self.architecture == "vit":
            return self.projection(encoder.patch_features(frames))  # (F, C, H/p, W/p)
        stages = encoder.forward_features(frames)  # 4 x (F, C_s, H/s_s, W/s_s)
        h, w = stages[0].shape[-2:]
        return sum(F.interpolate(lat(f), size=(h, w), mode="bilinear", align_corners=False)
                   for lat, f in zip(self.lateral, stages))  # (F, C, H/4, W/4)

    def forward(self, encoder: nn.Module, rgb: Tensor, K: Tensor, c2w: Tensor, keep: Tensor | None = None) -> Tensor:
        """rgb (B, V, 3, H, W) in [0, 1], K (B, V, 3, 3), c2w (B, V, 4, 4) in the grid's frame, ``keep``
        (B V, 1, H, W) optional input mask (0 = masked pixel) -> (B, C, Z, Y, X)."""
        if not isinstance(rgb, Tensor) or rgb.dim() != 5 or rgb.shape[2] != 3:
            raise InputError(f"ImageVolume: rgb must be (B, V, 3, H, W), got {getattr(rgb, 'shape', type(rgb))}")
        B, V, _, H, W = rgb.shape
        s = self.feature_stride(encoder)
        if H % s or W % s:
            raise InputError(f"ImageVolume: rgb frames {H}x{W} must be multiples of the feature stride {s} ({self.architecture})")
        frames = rgb.flatten(0, 1)  # (B V, 3, H, W)
        if keep is not None:
            frames = frames * keep.to(frames)  # masked pixels zeroed
        features = self.frame_features(encoder, frames)  # (B V, C, H/s, W/s)
        grid = Cameras(K.to(rgb.dtype), c2w.to(rgb.dtype), W, H).resized(W // s, H // s)
        return lift_image_features(features.unflatten(0, (B, V)), grid.K, grid.c2w, self.centres)  # (B, C, Z, Y, X)


__all__ = ["IMAGE_ARCHITECTURES", "ImageVolume", "RESNET_STRIDE", "frames_unit_cube", "patch_mask"]
