"""Camera trajectories of the synthetic scenes.

A trajectory is a continuous function of a view parameter ``s``: view k of ``generate_scene`` has
s = k, and novel in-between views take fractional s (``scene_cameras``). Its parameters (python
floats) are drawn once per scene by ``room_path`` / ``object_path`` and kept in ``SceneLayout.path``.
  * Rooms: walking on an ellipse at eye height with a ``room_step_deg`` step, heading towards the room
    with a slow sinusoidal yaw wobble and a fixed downward pitch, so consecutive views overlap strongly.
    Objects are placed clear of the whole ellipse (``ellipse_points``), so cameras never start inside
    or against an object.
  * Objects: one turn of azimuth over the views, elevation oscillating smoothly inside
    ``object_elevation_deg``, looking at the origin.
Cameras are OpenCV (world z is up), square pixels, horizontal field of view ``fov_deg``, principal
point at the image centre.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...geometry import Cameras, focal_from_fov, intrinsics_matrix, look_at
from .config import SyntheticConfig
from .rng import uniform

if TYPE_CHECKING:
    from .layout import SceneLayout


def room_path(g: torch.Generator, cfg: SyntheticConfig, a: float, b: float) -> dict:
    """Trajectory parameters of a room of half extents ``a``, ``b``."""
    rho = uniform(g, 0.6, 0.75)
    return dict(
        ea=rho * a, eb=rho * b, phi0=uniform(g, 0.0, 2 * math.pi),
        step=math.radians(cfg.room_step_deg) * (1.0 if uniform(g, 0, 1) < 0.5 else -1.0),
        eye_h=uniform(g, *cfg.eye_height_range), bob=0.05, bob_freq=0.7,
        pitch=math.radians(uniform(g, *cfg.pitch_deg_range)),
        wobble=uniform(g, 0.15, 0.45), wobble_freq=uniform(g, 0.15, 0.3), wobble_phase=uniform(g, 0.0, 2 * math.pi),
    )


def object_path(g: torch.Generator, cfg: SyntheticConfig) -> dict:
    """Trajectory parameters of an object scene."""
    lo, hi = (math.radians(x) for x in cfg.object_elevation_deg)
    return dict(
        distance=cfg.object_camera_distance, az0=uniform(g, 0.0, 2 * math.pi),
        az_step=2 * math.pi / cfg.num_views * (1.0 if uniform(g, 0, 1) < 0.5 else -1.0),
        el_mid=0.5 * (lo + hi), el_amp=0.5 * (hi - lo) * uniform(g, 0.6, 1.0),
        el_freq=2 * math.pi * 2.0 / cfg.num_views, el_phase=uniform(g, 0.0, 2 * math.pi),
    )


def ellipse_points(path: dict, n: int) -> Tensor:
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
