"""Cameras, rays, projection, pose conventions and rotations (OpenCV convention throughout)."""

from .cameras import Cameras, focal_from_fov, intrinsics_matrix, rigid_inverse
from .conventions import llff_to_opencv, opencv_to_llff, opencv_to_opengl, opengl_to_opencv
from .rotations import axis_angle_to_rotmat, look_at, quat_multiply, quat_to_rotmat, random_quats, rotmat_to_quat
from .transforms import SimilarityTransform, random_similarity

__all__ = [
    "Cameras", "focal_from_fov", "intrinsics_matrix", "rigid_inverse",
    "llff_to_opencv", "opencv_to_llff", "opencv_to_opengl", "opengl_to_opencv",
    "axis_angle_to_rotmat", "look_at", "quat_multiply", "quat_to_rotmat", "random_quats", "rotmat_to_quat",
    "SimilarityTransform", "random_similarity",
]
