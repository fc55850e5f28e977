"""Semantic classes of the synthetic scenes and the primitive kinds they are made of.

Classes (``CLASS_NAMES``; semantic ids index it) differ in primitive AND in size range: floor, wall,
ceiling (quads), cabinet (tall box), table (wide low box), sofa (long low box), crate (small cube),
ball (sphere), lamp (thin tall cylinder), cone, vase (tall ellipsoid). ``CLASS_SPECS`` holds the
primitive and the full-size ranges (metres) of each class, and the colour prior (HSV) that textures
are drawn around, so colour is a cue for the class but not a key.

Primitives: quads (planes bounded by a rectangle, two-sided), boxes, ellipsoids (spheres are
ellipsoids with equal radii) and frustums (capped truncated cones: a cylinder has equal radii, a cone a
zero top radius). ``intersect.py`` casts rays against each kind.
"""

from __future__ import annotations

from dataclasses import dataclass

QUAD, BOX, ELLIPSOID, FRUSTUM = 0, 1, 2, 3
PRIMITIVE_NAMES = ("quad", "box", "ellipsoid", "frustum")


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
