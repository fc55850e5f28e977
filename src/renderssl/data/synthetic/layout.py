"""Scene layouts: the primitives of one scene, their appearance and its camera trajectory.

``make_scene_layout(seed, config)`` is a pure function of both: every draw comes, in a fixed order,
from one ``torch.Generator`` seeded with ``seed`` (``rng.py``).

Rooms: a floor and four upright walls (quads; a ceiling when ``config.ceiling``), then
  ``min_objects..max_objects`` objects standing on the floor. Objects are placed by vectorised
  rejection sampling of their footprint circles (circumscribed, so objects never interpenetrate),
  inside the walls and clear of the whole camera ellipse (cameras never start inside or against an
  object). When a class does not fit, another class is drawn.
Objects: one object of a random object class, scaled so that its bounding sphere (about the centre of
  its bounding box) has radius ``object_radius``, centred at the origin.
Instances: one primitive per object and per wall, so the instance id is the primitive's index in the
  layout (unique within a scene); an object scene's single object is instance 0.
Local frames: each primitive has a rotation ``(P, 3, 3)`` local-to-world and an origin: quads lie in
  local z = 0, boxes and ellipsoids are centred on the origin, frustums stand on it along local +z.
  Objects rotate only about the vertical axis (world z is up); walls are quads tilted upright.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import ellipse_points, object_path, room_path
from .classes import BOX, CEILING, CLASS_SPECS, FLOOR, FRUSTUM, OBJECT_CLASSES, QUAD, WALL, ClassSpec
from .config import SyntheticConfig
from .rng import randint, uniform
from .texture import sample_appearance


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


def make_scene_layout(seed: int, config: SyntheticConfig | None = None) -> SceneLayout:
    """The primitives, appearance and camera trajectory of scene ``seed`` (a pure function of both)."""
    cfg = config or SyntheticConfig()
    g = torch.Generator().manual_seed(int(seed))
    if cfg.kind == "room":
        prims, path, extent = _room_primitives(g, cfg)
    else:
        prims, path, extent = _object_primitives(g, cfg), object_path(g, cfg), None
    ptype, rot, origin, size, sem = (list(x) for x in zip(*prims))
    semantic = torch.tensor(sem, dtype=torch.int64)
    appearance = sample_appearance(g, semantic, torch.tensor(ptype))
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


# ---- object geometry -----------------------------------------------------------------------------
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


# ---- rooms ---------------------------------------------------------------------------------------
def _room_primitives(g: torch.Generator, cfg: SyntheticConfig):
    a = 0.5 * uniform(g, *cfg.room_size_range)
    b = 0.5 * uniform(g, *cfg.room_size_range)
    wall_h = uniform(g, *cfg.wall_height_range)
    path = room_path(g, cfg, a, b)
    prims = _room_shell(a, b, wall_h, cfg.ceiling)
    prims += _place_objects(g, cfg, a, b, ellipse_points(path, 96))
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
    target = randint(g, cfg.min_objects, cfg.max_objects)
    placed: list = []
    circles = torch.zeros(0, 3)  # (n, 3) x, y, radius
    for _ in range(6 * target + 10):
        if len(placed) >= target:
            break
        spec = CLASS_SPECS[OBJECT_CLASSES[randint(g, 0, len(OBJECT_CLASSES) - 1)]]
        size, lift, _ = _object_geometry(spec, _sample_dims(g, spec))
        yaw = uniform(g, 0.0, 2 * math.pi)
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


# ---- object scenes -------------------------------------------------------------------------------
def _object_primitives(g: torch.Generator, cfg: SyntheticConfig) -> list:
    """One object of a random object class, bounding sphere of ``object_radius`` centred at the origin."""
    spec = CLASS_SPECS[OBJECT_CLASSES[randint(g, 0, len(OBJECT_CLASSES) - 1)]]
    size, _, bound = _object_geometry(spec, _sample_dims(g, spec))
    scale = cfg.object_radius / bound
    size = [s * scale for s in size]
    yaw = uniform(g, 0.0, 2 * math.pi)
    z0 = -size[2] / 2 if spec.primitive == FRUSTUM else 0.0  # frustums stand on their origin
    return [(spec.primitive, _rot_z(yaw), [0.0, 0.0, z0], size, CLASS_SPECS.index(spec))]
