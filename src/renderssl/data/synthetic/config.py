"""``SyntheticConfig``: what a synthetic scene looks like (kind, views, image size, room and camera ranges,
shading constants), validated on construction.

Scene kinds (``KINDS``):
  * ``"room"``: a floor, four walls (ceiling optional, off by default so that views from above the
    walls see in) and ``min_objects..max_objects`` objects standing on the floor (``layout.py``),
    seen by cameras walking inside the room (``cameras.py``).
  * ``"object"``: one object of an object class, scaled so that its bounding sphere (about the centre of
    its bounding box) has radius ``object_radius``, centred at the origin, on a white background, seen
    from cameras on the upper hemisphere (like NeRF-synthetic).
Cameras: OpenCV, square pixels, horizontal field of view ``fov_deg``, principal point at the image centre.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ...errors import InputError

KINDS = ("room", "object")


@dataclass
class SyntheticConfig:
    kind: str = "room"
    num_views: int = 10
    width: int = 64
    height: int = 64
    fov_deg: float = 65.0  # horizontal field of view
    min_objects: int = 3
    max_objects: int = 8
    ceiling: bool = False
    room_size_range: tuple[float, float] = (3.5, 6.0)  # full x and y extents of the room
    wall_height_range: tuple[float, float] = (2.5, 3.0)
    eye_height_range: tuple[float, float] = (1.3, 1.7)
    pitch_deg_range: tuple[float, float] = (12.0, 25.0)  # downward tilt of room cameras
    room_step_deg: float = 12.0  # angle walked on the camera ellipse per view
    object_elevation_deg: tuple[float, float] = (10.0, 60.0)
    object_radius: float = 1.0
    object_camera_distance: float = 2.4
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.45
    light_dir: tuple[float, float, float] = (0.35, 0.25, 0.9)

    def __post_init__(self):
        for f in fields(self):  # YAML gives lists; keep tuples
            if isinstance(getattr(self, f.name), list):
                setattr(self, f.name, tuple(getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        def bad(name, why):
            raise InputError(f"SyntheticConfig.{name}: {why} (got {getattr(self, name)!r})")

        if self.kind not in KINDS:
            bad("kind", f"expected one of {KINDS}")
        for name in ("num_views", "width", "height"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        if not 0.0 < self.fov_deg < 180.0:
            bad("fov_deg", "must lie in (0, 180)")
        if not 0 <= self.min_objects <= self.max_objects:
            bad("min_objects", "need 0 <= min_objects <= max_objects")
        for name in ("room_size_range", "wall_height_range", "eye_height_range", "pitch_deg_range", "object_elevation_deg"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                bad(name, "need low <= high")
        if self.room_size_range[0] < 2.0:
            bad("room_size_range", "rooms must be at least 2 m wide")
        if self.eye_height_range[1] >= self.wall_height_range[0] and self.ceiling:
            bad("eye_height_range", "cameras must stay below the ceiling")
        if not (-90.0 <= self.object_elevation_deg[0] and self.object_elevation_deg[1] <= 90.0):
            bad("object_elevation_deg", "must lie in [-90, 90]")
        if self.object_radius <= 0 or self.object_camera_distance <= self.object_radius:
            bad("object_camera_distance", "need 0 < object_radius < object_camera_distance")
        if len(self.background) != 3 or len(self.light_dir) != 3:
            bad("background", "background and light_dir need 3 values")
        if not 0.0 <= self.ambient <= 1.0:
            bad("ambient", "must lie in [0, 1]")
