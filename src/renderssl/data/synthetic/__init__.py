"""Procedural 3D scenes rendered by exact analytic ray casting: the embedded default data.

Every recipe pretrains on these scenes and every downstream task in tests and demos is labelled by
them, so a fresh machine needs no download. A scene is a pure function of ``(seed, config)``: all
randomness comes from one ``torch.Generator`` seeded with the scene seed; the global RNG is never
touched. World z is up; cameras are OpenCV.

One module per part, each documenting its own choices:

  config.py     ``SyntheticConfig`` and the scene kinds (``"room"``, ``"object"``)
  classes.py    the 11 semantic classes (``CLASS_NAMES``, ``CLASS_SPECS``) and the primitive kinds
  rng.py        the generator's draws
  layout.py     ``SceneLayout`` and ``make_scene_layout``: primitives, placement, instances
  cameras.py    trajectories: ``scene_cameras(layout, s)`` (fractional s = novel in-between views)
  texture.py    per-primitive texture parameters, value noise, albedo
  intersect.py  exact ray / quad, box, ellipsoid, frustum intersection; ``cast_rays``
  shading.py    normals and view-independent half-Lambert shading
  render.py     ``render_rays`` and ``render_layout`` (RGB, z-depth, normals, semantic, instance)
  scene.py      ``generate_scene`` / ``generate_scenes``: seed -> ``ViewSet``

Point clouds come from a scene's views by back-projection: ``renderssl.data.points.viewset_to_pointcloud``.
"""

from .cameras import scene_cameras
from .classes import (
    BOX, CEILING, CLASS_NAMES, CLASS_SPECS, ELLIPSOID, FLOOR, FRUSTUM, OBJECT_CLASSES, PRIMITIVE_NAMES, QUAD, WALL,
    ClassSpec,
)
from .config import KINDS, SyntheticConfig
from .intersect import T_MIN, cast_rays, intersect_boxes, intersect_ellipsoids, intersect_frustums, intersect_quads
from .layout import SceneLayout, make_scene_layout
from .render import CHUNK_RAYS, render_layout, render_rays
from .scene import generate_scene, generate_scenes
from .texture import CHECKER, DETAIL_FREQ, DETAIL_GAIN, NOISE, STRIPES, value_noise

__all__ = [
    "CLASS_NAMES", "CLASS_SPECS", "ClassSpec", "KINDS", "OBJECT_CLASSES", "PRIMITIVE_NAMES", "SceneLayout",
    "SyntheticConfig", "cast_rays", "generate_scene", "generate_scenes", "intersect_boxes", "intersect_ellipsoids",
    "intersect_frustums", "intersect_quads", "make_scene_layout", "render_layout", "render_rays", "scene_cameras",
    "value_noise",
    # constants of the former single module, still importable here
    "BOX", "CEILING", "CHECKER", "CHUNK_RAYS", "DETAIL_FREQ", "DETAIL_GAIN", "ELLIPSOID", "FLOOR", "FRUSTUM", "NOISE",
    "QUAD", "STRIPES", "T_MIN", "WALL",
]
