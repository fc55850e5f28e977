"""In-memory scene data exchanged by the synthetic generator, the format readers/writers and the
Datasets. Conventions: OpenCV cameras, K in pixels, c2w camera-to-world, z-depth in metres with
0 = invalid, labels int64 with -1 = ignore.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from ..geometry import Cameras


@dataclass
class ViewSet:
    """V posed views of one scene, all of one image size."""

    rgb: Tensor  # (V, 3, H, W) float32 in [0, 1]
    K: Tensor  # (V, 3, 3) pixels
    c2w: Tensor  # (V, 4, 4) OpenCV camera-to-world
    depth: Tensor | None = None  # (V, 1, H, W) z-depth in metres, 0 = invalid
    normals: Tensor | None = None  # (V, 3, H, W) world-space unit normals, 0 where no surface
    semantic: Tensor | None = None  # (V, H, W) int64 class id, -1 = ignore
    instance: Tensor | None = None  # (V, H, W) int64 instance id, -1 = ignore
    name: str = ""
    frame_names: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.frame_names:
            self.frame_names = [f"{i:06d}" for i in range(self.rgb.shape[0])]

    @property
    def height(self) -> int:
        return self.rgb.shape[-2]

    @property
    def width(self) -> int:
        return self.rgb.shape[-1]

    def __len__(self) -> int:
        return self.rgb.shape[0]

    def cameras(self) -> Cameras:
        return Cameras(self.K, self.c2w, self.width, self.height)

    def select(self, idx) -> "ViewSet":
        """The views at ``idx`` (a list, slice or index tensor) as a new ViewSet."""
        idx = torch.as_tensor(idx) if not isinstance(idx, slice) else idx
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = v[idx]
            elif f.name == "frame_names":
                ids = range(len(self))[idx] if isinstance(idx, slice) else idx.reshape(-1).tolist()
                out[f.name] = [v[i] for i in ids]
            else:
                out[f.name] = v
        return ViewSet(**out)


@dataclass
class PointCloud:
    """One point cloud in world coordinates."""

    points: Tensor  # (N, 3) float32
    colors: Tensor | None = None  # (N, 3) float32 in [0, 1]
    normals: Tensor | None = None  # (N, 3) unit normals
    semantic: Tensor | None = None  # (N,) int64, -1 = ignore
    instance: Tensor | None = None  # (N,) int64, -1 = ignore
    name: str = ""

    def __len__(self) -> int:
        return self.points.shape[0]

    def select(self, idx) -> "PointCloud":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return PointCloud(**{k: (v[idx] if isinstance(v, Tensor) else v) for k, v in kw.items()})
