"""Procedural 3D scenes rendered by exact analytic ray casting: the embedded default data.

Every recipe pretrains on these scenes and every downstream task in tests and demos is labelled by
them, so a fresh machine needs no download. A scene is a pure function of ``(seed, config)``.

Design choices
--------------
Scenes
  * ``"room"``: a floor, four walls (ceiling optional, off by default so that views from above the
    walls see in) and ``min_objects..max_objects`` objects standing on the floor. Objects are placed by
    vectorised rejection sampling of their footprint circles (circumscribed, so objects never
    interpenetrate), inside the walls and clear of the whole camera ellipse (cameras never start
    inside or against an object). When a class does not fit, another class is drawn.
  * ``"object"``: one object of an object class, scaled so that its bounding sphere (about the centre of
    its bounding box) has radius ``object_radius``, centred at the origin, on a white background, seen
    from cameras on the upper hemisphere (like NeRF-synthetic).
Classes (``CLASS_NAMES``; semantic ids index it) differ in primitive AND in size range: floor, wall,
  ceiling (quads), cabinet (tall box), table (wide low box), sofa (long low box), crate (small cube),
  ball (sphere), lamp (thin tall cylinder), cone, vase (tall ellipsoid). ``CLASS_SPECS`` holds the
  primitive and the full-size ranges (metres) of each class.
Instances: one primitive per object and per wall, so the instance id is the primitive's index in the
  layout (unique within a scene). Background (no hit) has semantic = instance = -1, depth 0, normal 0.
Primitives: four ray-cast kinds, each batched over all its primitives at once (P primitives x R rays,
  laid out (P, 3, R) so that per-component slices are contiguous):
  quads (planes bounded by a rectangle, two-sided), boxes, ellipsoids (spheres are ellipsoids with equal
  radii) and frustums (capped truncated cones: a cylinder has equal radii, a cone a zero top radius).
  Each primitive has a local frame (rotation ``(P, 3, 3)`` local-to-world and origin): quads lie in
  local z = 0, boxes and ellipsoids are centred on the origin, frustums stand on it along local +z.
  Objects rotate only about the vertical axis; walls are quads tilted upright. Quadratics use the
  numerically stable root pair (q / a, c / q); hits need t > ``T_MIN``.
Rays: ``Cameras.rays(normalize=False)`` has unit camera-z directions, so the ray parameter of the
  nearest hit IS the z-depth (pinhole and ortho), never a distance along the ray. Rays are cast in
  chunks of ``CHUNK_RAYS`` to bound memory at large sizes.
Normals: world-space unit normals from the analytic gradient at the hit point in the local frame,
  flipped to face the camera (quads are two-sided).
Textures are multi-view consistent: the albedo is a function of the hit point in the primitive's local
  frame and of per-primitive parameters only (base and second colour, pattern = stripes | checker |
  value noise, frequency, phase offset, stripe axis, noise seed), times a fine value-noise detail.
  Colours are HSV samples around a per-class hue, so colour is a cue for the class but not a key.
  The value noise hashes integer lattice coordinates by nested permutation polynomials mod 289
  (exact integer arithmetic in float32; no tables, no global state).
Shading is view-independent (no specular, no shadows): albedo * (ambient + (1 - ambient) *
  ((1 + n . L) / 2)^2) (half-Lambert, so faces turned from the light keep their texture and every
  orientation gets its own shade) with a fixed world light direction L, clamped to [0, 1]; so novel
  views are well posed.
Cameras: OpenCV, square pixels, horizontal field of view ``fov_deg``, principal point at the image
  centre. A trajectory is a continuous function of a view parameter ``s`` (view k has s = k, novel
  in-between views take fractional s; ``scene_cameras``). Rooms: walking on an ellipse at eye height
  with a ``room_step_deg`` step, heading towards the room with a slow sinusoidal yaw wobble and a fixed
  downward pitch, so consecutive views overlap strongly. Objects: one turn of azimuth over the views,
  elevation oscillating smoothly inside ``object_elevation_deg``, looking at the origin.
World z is up. All randomness comes from one ``torch.Generator`` seeded with the scene seed; the
  global RNG is never touched.
Speed: all rays of all views of a scene are cast together; per ray only the winning primitive's
  normal and texture are evaluated. 100 views of 64x64 (10 rooms x 10 views) take ~0.3-0.45 s on one
  or two cores of a 2-core CPU (tests/test_synthetic.py measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..geometry import Cameras, focal_from_fov, intrinsics_matrix, look_at
from .types import PointCloud, ViewSet

KINDS = ("room", "object")
QUAD, BOX, ELLIPSOID, FRUSTUM = 0, 1, 2, 3
PRIMITIVE_NAMES = ("quad", "box", "ellipsoid", "frustum")
STRIPES, CHECKER, NOISE = 0, 1, 2
T_MIN = 1e-4  # smallest accepted ray parameter (metres of z-depth for camera rays)
CHUNK_RAYS = 1 << 16
DETAIL_FREQ = 6.0  # cycles per metre of the fine albedo detail noise
DETAIL_GAIN = 0.3  # albedo *= 1 - gain / 2 + gain * noise
INF = float("inf")


@dataclass(frozen=True)
class ClassSpec:
    """A semantic class: its primitive, full-size ranges (metres) and colour prior (HSV)."""

    name: str
    primitive: int
    low: tuple[float, float, float] = (0.0, 0.0, 0.0)  # box: (x, y, z) extents; ellipsoid: diameters;
    high: tuple[float, float, float] = (0.0, 0.0, 0.0)  # frustum: (bottom diam., top diam., height)
    tie: str = ""  # "xyz": all dims equal the first; "xy": second equals the first
    hue: float = 0.0
    sat: tuple[float, float] = (0.4, 0.8)
    val: tuple[float, float] = (0.5, 0.9)


CLASS_SPECS: tuple[ClassSpec, ...] = (
    ClassSpec("floor", QUAD, hue=0.08, sat=(0.3, 0.6), val=(0.45, 0.75)),
    ClassSpec("wall", QUAD, hue=0.6, sat=(0.05, 0.25), val=(0.75, 0.95)),
    ClassSpec("ceiling", QUAD, hue=0.1, sat=(0.0, 0.1), val=(0.85, 0.98)),
    ClassSpec("cabinet", BOX, (0.5, 0.35, 1.4), (0.9, 0.6, 2.0), hue=0.58),
    ClassSpec("table", BOX, (0.9, 0.6, 0.65), (1.6, 1.0, 0.8), hue=0.1),
    ClassSpec("sofa", BOX, (1.6, 0.8, 0.4), (2.2, 1.0, 0.6), hue=0.95),
    ClassSpec("crate", BOX, (0.3, 0.3, 0.3), (0.5, 0.5, 0.5), tie="xyz", hue=0.15),
    ClassSpec("ball", ELLIPSOID, (0.24, 0.24, 0.24), (0.6, 0.6, 0.6), tie="xyz", hue=0.33),
    ClassSpec("lamp", FRUSTUM, (0.12, 0.12, 1.2), (0.3, 0.3, 1.9), tie="xy", hue=0.75),
    ClassSpec("cone", FRUSTUM, (0.4, 0.0, 0.4), (0.8, 0.0, 0.9), hue=0.03),
    ClassSpec("vase", ELLIPSOID, (0.24, 0.24, 0.5), (0.44, 0.44, 0.9), hue=0.5),
)
CLASS_NAMES: list[str] = [s.name for s in CLASS_SPECS]
FLOOR, WALL, CEILING = 0, 1, 2
OBJECT_CLASSES: tuple[int, ...] = tuple(i for i, s in enumerate(CLASS_SPECS) if s.primitive != QUAD)


# ==================================================================================================
# Config and layout
# ==================================================================================================
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


@dataclass
class SceneLayout:
    """The primitives of one scene (P of them), their appearance and its camera trajectory."""

    kind: str
    seed: int
    config: SyntheticConfig
    prim_type: Tensor  # (P,) int64 in {QUAD, BOX, ELLIPSOID, FRUSTUM}
    rotation: Tensor  # (P, 3, 3) local-to-world
    origin: Tensor  # (P, 3) local origin in world
    size: Tensor  # (P, 3) quad (half x, half y, 0); box half extents; ellipsoid radii; frustum (r_bottom, r_top, height)
    semantic: Tensor  # (P,) int64 class id
    instance: Tensor  # (P,) int64 instance id
    color_a: Tensor  # (P, 3) base albedo
    color_b: Tensor  # (P, 3) pattern albedo
    pattern: Tensor  # (P,) int64 in {STRIPES, CHECKER, NOISE}
    frequency: Tensor  # (P,) pattern cycles per metre
    phase: Tensor  # (P, 3) pattern offset (lattice units)
    stripe_axis: Tensor  # (P, 3) one-hot local axis of the stripes
    noise_seed: Tensor  # (P,) int64
    path: dict  # trajectory parameters (python floats), see ``scene_cameras``
    room_extent: tuple[float, float, float] | None = None  # (half x, half y, wall height) for rooms

    def __len__(self) -> int:
        return int(self.prim_type.shape[0])

    def type_index(self, ptype: int) -> Tensor:
        """(Pt,) indices of the primitives of one kind."""
        return (self.prim_type == ptype).nonzero().squeeze(1)

    def footprints(self) -> Tensor:
        """(P, 3) (x, y, radius) of the circumscribed floor footprint of each primitive (objects only meaningful)."""
        s = self.size
        # boxes: half diagonal; ellipsoids: largest horizontal radius; frustums: max(r_bottom, r_top)
        radius = torch.where(self.prim_type == BOX, s[:, :2].norm(dim=1), s[:, :2].amax(dim=1))  # (P,)
        return torch.cat([self.origin[:, :2], radius[:, None]], dim=1)


# ==================================================================================================
# Random helpers (all from one generator)
# ==================================================================================================
def _uniform(g: torch.Generator, low, high, n: int | None = None) -> Tensor | float:
    if n is None:
        return float(low + (high - low) * torch.rand((), generator=g))
    return low + (high - low) * torch.rand(n, generator=g)


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=g))


def _rot_z(yaw: float) -> list[list[float]]:
    c, s = math.cos(yaw), math.sin(yaw)
    return [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]


def _sample_dims(g: torch.Generator, spec: ClassSpec) -> list[float]:
    """Full sizes of one object of a class, honouring ``spec.tie``."""
    u = torch.rand(3, generator=g).tolist()
    d = [lo + (hi - lo) * ui for lo, hi, ui in zip(spec.low, spec.high, u)]
    if spec.tie == "xyz":
        d = [d[0]] * 3
    elif spec.tie == "xy":
        d[1] = d[0]
    return d


def _object_geometry(spec: ClassSpec, dims: list[float]) -> tuple[list[float], float, float]:
    """(size row, height of the local origin above the object's bottom, bounding radius about the box centre)."""
    if spec.primitive == FRUSTUM:
        r0, r1, h = dims[0] / 2, dims[1] / 2, dims[2]
        return [r0, r1, h], 0.0, math.hypot(max(r0, r1), h / 2)
    half = [d / 2 for d in dims]
    bound = math.sqrt(sum(x * x for x in half)) if spec.primitive == BOX else max(half)
    return half, half[2], bound


def _footprint_radius(spec: ClassSpec, size: list[float]) -> float:
    if spec.primitive == BOX:
        return math.hypot(size[0], size[1])
    return max(size[0], size[1])


# ==================================================================================================
# Layouts
# ==================================================================================================
def make_scene_layout(seed: int, config: SyntheticConfig | None = None) -> SceneLayout:
    """The primitives, appearance and camera trajectory of scene ``seed`` (a pure function of both)."""
    cfg = config or SyntheticConfig()
    g = torch.Generator().manual_seed(int(seed))
    if cfg.kind == "room":
        prims, path, extent = _room_primitives(g, cfg)
    else:
        prims, path, extent = _object_primitives(g, cfg), _object_path(g, cfg), None
    ptype, rot, origin, size, sem = (list(x) for x in zip(*prims))
    semantic = torch.tensor(sem, dtype=torch.int64)
    appearance = _sample_appearance(g, semantic, torch.tensor(ptype))
    if cfg.kind == "object":
        instance = torch.zeros(len(prims), dtype=torch.int64)
    else:
        instance = torch.arange(len(prims), dtype=torch.int64)
    return SceneLayout(
        kind=cfg.kind, seed=int(seed), config=cfg,
        prim_type=torch.tensor(ptype, dtype=torch.int64),
        rotation=torch.tensor(rot, dtype=torch.float32),  # (P, 3, 3)
        origin=torch.tensor(origin, dtype=torch.float32),  # (P, 3)
        size=torch.tensor(size, dtype=torch.float32),  # (P, 3)
        semantic=semantic, instance=instance, path=path, room_extent=extent, **appearance,
    )


def _room_primitives(g: torch.Generator, cfg: SyntheticConfig):
    a = 0.5 * _uniform(g, *cfg.room_size_range)
    b = 0.5 * _uniform(g, *cfg.room_size_range)
    wall_h = _uniform(g, *cfg.wall_height_range)
    path = _room_path(g, cfg, a, b)
    prims = _room_shell(a, b, wall_h, cfg.ceiling)
    prims += _place_objects(g, cfg, a, b, _ellipse_points(path, 96))
    return prims, path, (a, b, wall_h)


def _room_shell(a: float, b: float, wall_h: float, ceiling: bool) -> list:
    """Floor, four upright walls (local z = outward normal, local y = up) and an optional ceiling."""
    eye = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    shell = [(QUAD, eye, [0.0, 0.0, 0.0], [a, b, 0.0], FLOOR)]
    for nx, ny in ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)):
        along = [-ny, nx, 0.0]  # up x normal
        rot = [[along[i], [0.0, 0.0, 1.0][i], [nx, ny, 0.0][i]] for i in range(3)]  # columns (along, up, normal)
        half_along = b if nx != 0.0 else a
        shell.append((QUAD, rot, [nx * a, ny * b, wall_h / 2], [half_along, wall_h / 2, 0.0], WALL))
    if ceiling:
        shell.append((QUAD, eye, [0.0, 0.0, wall_h], [a, b, 0.0], CEILING))
    return shell


def _place_objects(g: torch.Generator, cfg: SyntheticConfig, a: float, b: float, path_xy: Tensor,
                   candidates: int = 128, gap: float = 0.05, clearance: float = 0.45) -> list:
    """Objects on the floor: footprint circles disjoint, inside the walls, clear of the camera path."""
    target = _randint(g, cfg.min_objects, cfg.max_objects)
    placed: list = []
    circles = torch.zeros(0, 3)  # (n, 3) x, y, radius
    for _ in range(6 * target + 10):
        if len(placed) >= target:
            break
        spec = CLASS_SPECS[OBJECT_CLASSES[_randint(g, 0, len(OBJECT_CLASSES) - 1)]]
        size, lift, _ = _object_geometry(spec, _sample_dims(g, spec))
        yaw = _uniform(g, 0.0, 2 * math.pi)
        radius = _footprint_radius(spec, size)
        box = torch.tensor([a - radius - 0.02, b - radius - 0.02])  # (2,) placement half-range
        if (box <= 0).any():
            continue
        xy = (2 * torch.rand(candidates, 2, generator=g) - 1) * box  # (M, 2)
        ok = _clear_of(xy, radius + clearance, path_xy) & _clear_of_circles(xy, radius + gap, circles)  # (M,)
        if not ok.any():
            continue
        x, y = xy[int(ok.nonzero()[0, 0])].tolist()
        placed.append((spec.primitive, _rot_z(yaw), [x, y, lift], size, CLASS_SPECS.index(spec)))
        circles = torch.cat([circles, torch.tensor([[x, y, radius]])])
    return placed


def _clear_of(xy: Tensor, radius: float, points: Tensor) -> Tensor:
    """(M,) True where a circle at xy (M, 2) of ``radius`` contains none of ``points`` (S, 2)."""
    return torch.cdist(xy, points).amin(dim=1) > radius


def _clear_of_circles(xy: Tensor, radius: float, circles: Tensor) -> Tensor:
    """(M,) True where a circle at xy (M, 2) is disjoint from every circle (n, 3)."""
    if circles.shape[0] == 0:
        return torch.ones(xy.shape[0], dtype=torch.bool)
    return (torch.cdist(xy, circles[:, :2]) > radius + circles[None, :, 2]).all(dim=1)


def _object_primitives(g: torch.Generator, cfg: SyntheticConfig) -> list:
    """One object of a random object class, bounding sphere of ``object_radius`` centred at the origin."""
    spec = CLASS_SPECS[OBJECT_CLASSES[_randint(g, 0, len(OBJECT_CLASSES) - 1)]]
    size, _, bound = _object_geometry(spec, _sample_dims(g, spec))
    scale = cfg.object_radius / bound
    size = [s * scale for s in size]
    yaw = _uniform(g, 0.0, 2 * math.pi)
    z0 = -size[2] / 2 if spec.primitive == FRUSTUM else 0.0  # frustums stand on their origin
    return [(spec.primitive, _rot_z(yaw), [0.0, 0.0, z0], size, CLASS_SPECS.index(spec))]


# ---- appearance ----------------------------------------------------------------------------------
def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    """(..., 3) HSV in [0, 1] -> (..., 3) RGB in [0, 1]."""
    h, s, v = hsv.unbind(-1)
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0  # (..., 3)
    return v[..., None] - v[..., None] * s[..., None] * (torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))


def _sample_appearance(g: torch.Generator, semantic: Tensor, ptype: Tensor) -> dict:
    """Per-primitive colours and texture parameters (P rows), colours around each class's hue."""
    P = semantic.shape[0]
    specs = [CLASS_SPECS[i] for i in semantic.tolist()]
    hue = torch.tensor([s.hue for s in specs]) + _uniform(g, -0.06, 0.06, P)  # (P,)
    sat_lo, sat_hi = torch.tensor([s.sat for s in specs]).unbind(1)
    val_lo, val_hi = torch.tensor([s.val for s in specs]).unbind(1)
    sat = sat_lo + (sat_hi - sat_lo) * torch.rand(P, generator=g)
    val = val_lo + (val_hi - val_lo) * torch.rand(P, generator=g)
    color_a = _hsv_to_rgb(torch.stack([hue % 1.0, sat, val], dim=1))  # (P, 3)
    hue_b = hue + _uniform(g, -0.12, 0.12, P)
    sat_b = (sat * _uniform(g, 0.6, 1.3, P)).clamp(0, 1)
    val_b = val * _uniform(g, 0.5, 0.8, P)
    color_b = _hsv_to_rgb(torch.stack([hue_b % 1.0, sat_b, val_b], dim=1))  # (P, 3)
    pattern = torch.randint(0, 3, (P,), generator=g)
    # quads: stripes run across the plane (local x or y), never along the normal (local z)
    axis = torch.where(ptype == QUAD, torch.randint(0, 2, (P,), generator=g), torch.randint(0, 3, (P,), generator=g))
    return dict(
        color_a=color_a, color_b=color_b, pattern=pattern,
        frequency=_uniform(g, 1.5, 4.0, P),
        phase=_uniform(g, 0.2, 0.8, P * 3).reshape(P, 3),  # keeps lattice boundaries off the faces
        stripe_axis=F.one_hot(axis, 3).float(),
        noise_seed=torch.randint(0, 1 << 20, (P,), generator=g),
    )


# ==================================================================================================
# Camera trajectories
# ==================================================================================================
def _room_path(g: torch.Generator, cfg: SyntheticConfig, a: float, b: float) -> dict:
    rho = _uniform(g, 0.6, 0.75)
    return dict(
        ea=rho * a, eb=rho * b, phi0=_uniform(g, 0.0, 2 * math.pi),
        step=math.radians(cfg.room_step_deg) * (1.0 if _uniform(g, 0, 1) < 0.5 else -1.0),
        eye_h=_uniform(g, *cfg.eye_height_range), bob=0.05, bob_freq=0.7,
        pitch=math.radians(_uniform(g, *cfg.pitch_deg_range)),
        wobble=_uniform(g, 0.15, 0.45), wobble_freq=_uniform(g, 0.15, 0.3), wobble_phase=_uniform(g, 0.0, 2 * math.pi),
    )


def _object_path(g: torch.Generator, cfg: SyntheticConfig) -> dict:
    lo, hi = (math.radians(x) for x in cfg.object_elevation_deg)
    return dict(
        distance=cfg.object_camera_distance, az0=_uniform(g, 0.0, 2 * math.pi),
        az_step=2 * math.pi / cfg.num_views * (1.0 if _uniform(g, 0, 1) < 0.5 else -1.0),
        el_mid=0.5 * (lo + hi), el_amp=0.5 * (hi - lo) * _uniform(g, 0.6, 1.0),
        el_freq=2 * math.pi * 2.0 / cfg.num_views, el_phase=_uniform(g, 0.0, 2 * math.pi),
    )


def _ellipse_points(path: dict, n: int) -> Tensor:
    """(n, 2) points on the full camera ellipse of a room (objects keep clear of all of it)."""
    phi = torch.linspace(0.0, 2 * math.pi, n + 1)[:-1]
    return torch.stack([path["ea"] * phi.cos(), path["eb"] * phi.sin()], dim=1)


def _room_eyes_targets(path: dict, s: Tensor) -> tuple[Tensor, Tensor]:
    phi = path["phi0"] + path["step"] * s  # (V,)
    eye = torch.stack([path["ea"] * phi.cos(), path["eb"] * phi.sin(),
                       path["eye_h"] + path["bob"] * torch.sin(path["bob_freq"] * s)], dim=1)  # (V, 3)
    heading = torch.atan2(-eye[:, 1], -eye[:, 0]) + path["wobble"] * torch.sin(path["wobble_freq"] * s + path["wobble_phase"])
    cp, sp = math.cos(path["pitch"]), math.sin(path["pitch"])
    forward = torch.stack([cp * heading.cos(), cp * heading.sin(), torch.full_like(heading, -sp)], dim=1)  # (V, 3)
    return eye, eye + forward


def _object_eyes_targets(path: dict, s: Tensor) -> tuple[Tensor, Tensor]:
    az = path["az0"] + path["az_step"] * s  # (V,)
    el = path["el_mid"] + path["el_amp"] * torch.sin(path["el_freq"] * s + path["el_phase"])  # (V,)
    eye = path["distance"] * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=1)  # (V, 3)
    return eye, torch.zeros_like(eye)


def scene_cameras(layout: SceneLayout, s: Tensor | None = None, width: int | None = None,
                  height: int | None = None, fov_deg: float | None = None) -> Cameras:
    """Cameras of the scene's trajectory at view parameters ``s`` (V,) (default 0..num_views-1).

    View k of ``generate_scene`` is s = k; fractional s gives novel in-between views.
    """
    cfg = layout.config
    s = torch.arange(cfg.num_views, dtype=torch.float32) if s is None else torch.as_tensor(s, dtype=torch.float32).reshape(-1)
    width, height = width or cfg.width, height or cfg.height
    fov = math.radians(fov_deg or cfg.fov_deg)
    eyes_targets = _room_eyes_targets if layout.kind == "room" else _object_eyes_targets
    eye, target = eyes_targets(layout.path, s)
    f = focal_from_fov(fov, width)
    K = intrinsics_matrix(f, f, width / 2, height / 2).expand(s.shape[0], 3, 3).clone()  # (V, 3, 3)
    return Cameras(K, look_at(eye, target), width, height)


# ==================================================================================================
# Ray casting (local frames; R rays x Pt primitives of one kind per call)
# ==================================================================================================
def _rays_to_local(origin: Tensor, rotation: Tensor, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """World rays (R, 3) -> local rays (Pt, 3, R) of Pt primitives (rotation local-to-world).

    Components first and rays last, so every per-component slice is contiguous along the rays.
    """
    o_local = torch.einsum("pji,pjr->pir", rotation, o.T[None] - origin[:, :, None])  # (Pt, 3, R) = R^T (o - origin)
    d_local = torch.einsum("pji,jr->pir", rotation, d.T)  # (Pt, 3, R)
    return o_local, d_local


def _positive(t: Tensor, valid: Tensor) -> Tensor:
    """t where valid and t > T_MIN, else inf (NaN-safe)."""
    return torch.where(valid & (t > T_MIN), t, INF)


def _stable_roots(a: Tensor, half_b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Roots of a t^2 + 2 half_b t + c (numerically stable pair) and the mask of real roots."""
    disc = half_b * half_b - a * c
    real = disc >= 0
    q = -(half_b + torch.where(half_b >= 0, 1.0, -1.0) * disc.clamp(min=0).sqrt())
    return q / a, c / q, real


def _safe(d: Tensor) -> Tensor:
    """Direction components bounded away from 0 (keeps slab and plane divisions finite)."""
    return torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)


def intersect_quads(o: Tensor, d: Tensor, size: Tensor) -> Tensor:
    """Local rays (P, 3, R) vs rectangles z = 0, |x| <= size_x, |y| <= size_y (size (P, 3)) -> t (P, R), inf = miss."""
    t = -o[:, 2] / _safe(d[:, 2])  # (P, R)
    x = o[:, 0] + t * d[:, 0]
    y = o[:, 1] + t * d[:, 1]
    return _positive(t, (x.abs() <= size[:, 0, None]) & (y.abs() <= size[:, 1, None]))


def intersect_boxes(o: Tensor, d: Tensor, half: Tensor) -> Tensor:
    """Local rays (P, 3, R) vs centred boxes of half extents (P, 3) -> nearest t (P, R)."""
    inv = 1.0 / _safe(d)
    half = half[:, :, None]  # (P, 3, 1)
    t1, t2 = (-half - o) * inv, (half - o) * inv  # (P, 3, R)
    t_near = torch.minimum(t1, t2).amax(dim=1)  # (P, R)
    t_far = torch.maximum(t1, t2).amin(dim=1)
    t = torch.where(t_near > T_MIN, t_near, t_far)
    return _positive(t, t_far >= t_near)


def intersect_ellipsoids(o: Tensor, d: Tensor, radii: Tensor) -> Tensor:
    """Local rays (P, 3, R) vs centred axis-aligned ellipsoids of radii (P, 3) -> nearest t (P, R)."""
    inv_r = 1.0 / radii[:, :, None]  # (P, 3, 1)
    os, ds = o * inv_r, d * inv_r  # unit-sphere space, same t
    a = (ds * ds).sum(1)  # (P, R)
    half_b = (os * ds).sum(1)
    c = (os * os).sum(1) - 1.0
    r1, r2, real = _stable_roots(a, half_b, c)
    t_lo, t_hi = torch.minimum(r1, r2), torch.maximum(r1, r2)
    t = torch.where(t_lo > T_MIN, t_lo, t_hi)
    return _positive(t, real)


def intersect_frustums(o: Tensor, d: Tensor, size: Tensor) -> Tensor:
    """Local rays (P, 3, R) vs capped frustums on z in [0, h], radius r0 -> r1 (size (P, 3) = r0, r1, h) -> t (P, R)."""
    r0, r1, h = size[:, :, None].unbind(1)  # (P, 1) each
    k = (r1 - r0) / h  # radius slope
    ox, oy, oz = o.unbind(1)  # (P, R) each
    dx, dy, dz = d.unbind(1)
    rz = r0 + k * oz  # (P, R) radius at the origin's height
    a = dx * dx + dy * dy - k * k * dz * dz
    half_b = ox * dx + oy * dy - k * rz * dz
    c = ox * ox + oy * oy - rz * rz
    s1, s2, real = _stable_roots(a, half_b, c)
    sides = torch.stack([s1, s2])  # (2, P, R)
    z_side = oz + sides * dz
    side_ok = real & (z_side >= 0) & (z_side <= h) & sides.isfinite()
    inv_dz = 1.0 / _safe(dz)
    caps = torch.stack([-oz * inv_dz, (h - oz) * inv_dz])  # (2, P, R) bottom, top
    cap_x, cap_y = ox + caps * dx, oy + caps * dy
    cap_r = torch.stack([r0, r1])  # (2, P, 1)
    cap_ok = cap_x * cap_x + cap_y * cap_y <= cap_r * cap_r
    t = _positive(torch.cat([sides, caps]), torch.cat([side_ok, cap_ok]))  # (4, P, R)
    return t.amin(dim=0)


_INTERSECTORS = {QUAD: intersect_quads, BOX: intersect_boxes, ELLIPSOID: intersect_ellipsoids, FRUSTUM: intersect_frustums}


def cast_rays(layout: SceneLayout, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest hit of world rays (R, 3) -> (t (R,) with inf = miss, primitive index (R,), -1 = miss)."""
    R = origins.shape[0]
    if len(layout) == 0:
        return origins.new_full((R,), INF), torch.full((R,), -1, dtype=torch.int64)
    t_all = origins.new_full((len(layout), R), INF)  # (P, R)
    for ptype, intersect in _INTERSECTORS.items():
        ids = layout.type_index(ptype)
        if ids.numel():
            o_l, d_l = _rays_to_local(layout.origin[ids], layout.rotation[ids], origins, dirs)
            t_all[ids] = intersect(o_l, d_l, layout.size[ids])
    t, prim = t_all.min(dim=0)  # (R,)
    return t, torch.where(t.isfinite(), prim, -1)


# ==================================================================================================
# Surface attributes at hits
# ==================================================================================================
def _local_normals(ptype: Tensor, size: Tensor, p: Tensor) -> Tensor:
    """Unit outward normals (N, 3) in the local frame at local hit points p (N, 3)."""
    size = size.clamp(min=1e-6)
    # quad
    n_quad = torch.zeros_like(p)
    n_quad[:, 2] = 1.0
    # box: the face whose normalised coordinate is largest
    q = p / size
    n_box = F.one_hot(q.abs().argmax(dim=1), 3).to(p) * q.sign()
    # ellipsoid: gradient of sum (p / r)^2
    n_ell = p / (size * size)
    # frustum: side gradient or a cap, whichever surface the point is closest to
    r0, r1, h = size.unbind(-1)
    k = (r1 - r0) / h
    rz = r0 + k * p[:, 2]
    n_side = torch.stack([p[:, 0], p[:, 1], -k * rz], dim=1)
    dist = torch.stack([(p[:, :2].norm(dim=1) - rz).abs() / torch.sqrt(1 + k * k), p[:, 2].abs(), (p[:, 2] - h).abs()], dim=1)
    caps = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    part = dist.argmin(dim=1)  # (N,) 0 side, 1 bottom, 2 top
    n_fru = torch.where((part == 0)[:, None], n_side, caps[part])
    t = ptype[:, None]
    n = torch.where(t == QUAD, n_quad, torch.where(t == BOX, n_box, torch.where(t == ELLIPSOID, n_ell, n_fru)))
    return F.normalize(n, dim=1)


def _permute289(x: Tensor) -> Tensor:
    """The permutation polynomial (34 x^2 + x) mod 289 on integer-valued floats (exact in float32)."""
    return torch.remainder((34.0 * x + 1.0) * x, 289.0)


def _corner_hashes(cell: Tensor, seed: Tensor) -> Tensor:
    """Hashes (N, 2, 2, 2) in [0, 1] of the 8 lattice corners above integer-valued cells (N, 3), seeds (N,).

    Nested permutations mod 289 (as in webgl-noise), built axis by axis so that each level only
    touches the corners it needs: float32 arithmetic on exact integers, cheaper than int64 hashing.
    """
    c = torch.remainder(cell[:, :, None] + torch.tensor([0.0, 1.0]), 289.0)  # (N, 3, 2)
    hx = _permute289(c[:, 0] + seed[:, None])  # (N, 2)
    hxy = _permute289(hx[:, :, None] + c[:, 1, None, :])  # (N, 2, 2)
    return _permute289(hxy[..., None] + c[:, 2, None, None, :]) / 288.0  # (N, 2, 2, 2)


def value_noise(q: Tensor, seed: Tensor) -> Tensor:
    """Smooth 3D value noise in [0, 1] at points q (N, 3) (lattice units) with per-point seeds (N,)."""
    base = q.floor()
    f = q - base
    u = f * f * (3.0 - 2.0 * f)  # (N, 3) smoothstep weights
    v = _corner_hashes(base, torch.remainder(seed, 289).to(q.dtype))  # (N, 2, 2, 2) indexed (x, y, z)
    v = torch.lerp(v[..., 0], v[..., 1], u[:, 2, None, None])  # (N, 2, 2) along z
    v = torch.lerp(v[..., 0], v[..., 1], u[:, 1, None])  # (N, 2) along y
    return torch.lerp(v[:, 0], v[:, 1], u[:, 0])  # (N,) along x


def _albedo(layout: SceneLayout, prim: Tensor, p: Tensor) -> Tensor:
    """Albedo (N, 3) at local points p (N, 3) of primitives prim (N,): pattern blend times detail noise."""
    q = p * layout.frequency[prim, None] + layout.phase[prim]  # (N, 3) lattice units
    seed = layout.noise_seed[prim]
    stripes = (0.5 + 2.0 * torch.sin(2 * math.pi * (q * layout.stripe_axis[prim]).sum(1))).clamp(0.0, 1.0)
    checker = (q.floor().sum(dim=1) % 2.0).abs()
    pattern = layout.pattern[prim]
    v = torch.where(pattern == STRIPES, stripes, checker)  # (N,)
    noisy = (pattern == NOISE).nonzero().squeeze(1)
    v[noisy] = (value_noise(q[noisy], seed[noisy]) * 1.6 - 0.3).clamp(0.0, 1.0)
    base = torch.lerp(layout.color_a[prim], layout.color_b[prim], v[:, None])  # (N, 3)
    detail = value_noise(p * DETAIL_FREQ + layout.phase[prim], seed + 7919)
    return base * (1.0 - DETAIL_GAIN / 2 + DETAIL_GAIN * detail[:, None])


def _shade(layout: SceneLayout, albedo: Tensor, normals: Tensor) -> Tensor:
    """View-independent Lambert shading (N, 3) in [0, 1] with a fixed world light."""
    light = F.normalize(torch.tensor(layout.config.light_dir, dtype=normals.dtype), dim=0)
    ambient = layout.config.ambient
    shade = ambient + (1.0 - ambient) * (0.5 + 0.5 * (normals @ light)) ** 2  # (N,) half-Lambert
    return (albedo * shade[:, None]).clamp(0.0, 1.0)


def _surface(layout: SceneLayout, prim: Tensor, x: Tensor, d: Tensor) -> dict:
    """Colour and normals (N, 3) at world hit points x (N, 3) of primitives prim (N,) seen along d (N, 3)."""
    rot = layout.rotation[prim]  # (N, 3, 3)
    p = ((x - layout.origin[prim])[:, None, :] @ rot).squeeze(1)  # (N, 3) local = R^T (x - origin)
    n_local = _local_normals(layout.prim_type[prim], layout.size[prim], p)
    n = (rot @ n_local[:, :, None]).squeeze(2)  # (N, 3) world
    n = torch.where(((n * d).sum(1) > 0)[:, None], -n, n)  # face the camera
    return dict(rgb=_shade(layout, _albedo(layout, prim, p), n), normals=n)


def render_rays(layout: SceneLayout, origins: Tensor, dirs: Tensor, chunk: int = CHUNK_RAYS) -> dict:
    """Render world rays (R, 3): t (inf = miss), rgb, normals (R, 3), semantic, instance, primitive (R,) (-1 = miss)."""
    outs = [_render_chunk(layout, o, d) for o, d in zip(origins.split(chunk), dirs.split(chunk))]
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


@torch.no_grad()
def _render_chunk(layout: SceneLayout, origins: Tensor, dirs: Tensor) -> dict:
    R = origins.shape[0]
    t, prim = cast_rays(layout, origins, dirs)  # (R,), (R,)
    hit = prim >= 0
    rgb = torch.tensor(layout.config.background, dtype=torch.float32).repeat(R, 1)  # (R, 3)
    normals = torch.zeros(R, 3)
    idx = hit.nonzero().squeeze(1)
    if idx.numel():
        ph = prim[idx]
        surf = _surface(layout, ph, origins[idx] + t[idx, None] * dirs[idx], dirs[idx])
        rgb[idx], normals[idx] = surf["rgb"], surf["normals"]
    safe = prim.clamp(min=0)
    return dict(
        t=t, rgb=rgb, normals=normals, primitive=prim,
        semantic=torch.where(hit, layout.semantic[safe], -1), instance=torch.where(hit, layout.instance[safe], -1),
    )


def render_layout(layout: SceneLayout, cameras: Cameras) -> dict:
    """Render a layout from cameras (V,): rgb (V, 3, H, W), depth (V, 1, H, W) z-depth (0 = none),
    normals (V, 3, H, W) world, semantic and instance (V, H, W) int64 (-1 = none)."""
    cams = cameras.reshape(-1)
    V, H, W = cams.batch_shape[0], cams.height, cams.width
    origins, dirs = cams.rays(normalize=False)  # (V, H, W, 3), unit camera-z: t is z-depth
    out = render_rays(layout, origins.reshape(-1, 3), dirs.reshape(-1, 3))
    depth = torch.where(out["primitive"] >= 0, out["t"], 0.0)  # (R,)

    def image(x: Tensor, c: int) -> Tensor:
        return x.reshape(V, H, W, c).permute(0, 3, 1, 2).contiguous()

    return dict(
        rgb=image(out["rgb"], 3), depth=image(depth[:, None], 1), normals=image(out["normals"], 3),
        semantic=out["semantic"].reshape(V, H, W), instance=out["instance"].reshape(V, H, W),
    )


# ==================================================================================================
# Public entry points
# ==================================================================================================
def generate_scene(seed: int, config: SyntheticConfig | None = None) -> ViewSet:
    """Scene ``seed`` rendered from its trajectory: a ViewSet named f"{kind}_{seed:05d}"."""
    cfg = config or SyntheticConfig()
    layout = make_scene_layout(seed, cfg)
    cams = scene_cameras(layout)
    out = render_layout(layout, cams)
    return ViewSet(
        rgb=out["rgb"], K=cams.K, c2w=cams.c2w, depth=out["depth"], normals=out["normals"],
        semantic=out["semantic"], instance=out["instance"], name=f"{cfg.kind}_{int(seed):05d}",
        class_names=list(CLASS_NAMES),
    )


def generate_scenes(seeds, config: SyntheticConfig | None = None) -> list[ViewSet]:
    """``generate_scene`` for each seed."""
    return [generate_scene(s, config) for s in seeds]


def viewset_to_pointcloud(viewset: ViewSet, stride: int = 1, max_points: int | None = None,
                          generator: torch.Generator | None = None) -> PointCloud:
    """Back-project the valid depth of every ``stride``-th pixel of every view into one world point
    cloud with colours, normals, semantic and instance labels. ``max_points`` keeps a random subset
    (in original order) drawn from ``generator`` (seed 0 if None, so the result stays deterministic)."""
    if viewset.depth is None:
        raise InputError(f"viewset_to_pointcloud: viewset {viewset.name!r} has no depth")
    if int(stride) < 1:
        raise InputError(f"viewset_to_pointcloud: stride must be >= 1, got {stride}")
    world = viewset.cameras().backproject_depth(viewset.depth)  # (V, H, W, 3)
    grid = (slice(None), slice(None, None, stride), slice(None, None, stride))
    valid = viewset.depth[:, 0][grid] > 0  # (V, h, w)

    def gather(x: Tensor | None, channels_first: bool) -> Tensor | None:
        if x is None:
            return None
        x = x.permute(0, 2, 3, 1) if channels_first else x  # (V, H, W, C) or (V, H, W)
        return x[grid][valid]

    cloud = PointCloud(
        points=gather(world, False), colors=gather(viewset.rgb, True), normals=gather(viewset.normals, True),
        semantic=gather(viewset.semantic, False), instance=gather(viewset.instance, False), name=viewset.name,
    )
    if max_points is not None and len(cloud) > max_points:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        keep = torch.randperm(len(cloud), generator=g)[:max_points].sort().values
        cloud = cloud.select(keep)
    return cloud


__all__ = [
    "CLASS_NAMES", "CLASS_SPECS", "ClassSpec", "KINDS", "OBJECT_CLASSES", "PRIMITIVE_NAMES", "SceneLayout",
    "SyntheticConfig", "cast_rays", "generate_scene", "generate_scenes", "intersect_boxes", "intersect_ellipsoids",
    "intersect_frustums", "intersect_quads", "make_scene_layout", "render_layout", "render_rays", "scene_cameras",
    "value_noise", "viewset_to_pointcloud",
]
