"""PonderV2's 3D feature volume: scene -> unit cube, point features -> dense grid (mean scatter),
image features -> dense grid (projection of voxel centres, Eq. 10), and the 3D UNet that projects the
grid to the rendering features.

- :mod:`.unit_cube`: per-scene similarity S (centre, 1 / max extent, z_min = -0.5) for points, cameras
  and depths;
- :mod:`.densify`: mean scatter into a fixed (X, Y, Z) grid stored (B, C, Z, Y, X); voxel centres and the
  bounds that make ``render.grid.trilinear_lookup`` read the grid at its centres;
- :mod:`.lift`: bilinear lifting of per-frame features to the voxel centres, averaged over visible frames;
- :mod:`.image_volume`: the image branch: 2D encoder features fused per frame and lifted; the unit cube
  fit to the frames' back-projected depth; patch masking of the input frames;
- :mod:`.unet3d`: UNet3D-v1m2 (one BN -> conv -> ReLU per level, transposed-conv up, sum skips).
"""

from .densify import UNIT_BOX, centre_bounds, densify, voxel_centres, voxel_size
from .image_volume import IMAGE_ARCHITECTURES, ImageVolume, frames_unit_cube, patch_mask
from .lift import lift_image_features, project_to_frames
from .unet3d import UNet3D
from .unit_cube import apply_to_cameras, apply_to_points, scale_of, unit_cube_transforms

__all__ = [
    "IMAGE_ARCHITECTURES", "ImageVolume", "UNIT_BOX", "UNet3D", "apply_to_cameras", "apply_to_points", "centre_bounds",
    "densify", "frames_unit_cube", "lift_image_features", "patch_mask", "project_to_frames", "scale_of",
    "unit_cube_transforms", "voxel_centres", "voxel_size",
]
