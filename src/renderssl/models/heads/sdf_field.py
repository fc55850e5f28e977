"""PonderV2's rendering field: a dense feature volume -> SDF, ∇SDF, colour and semantic features at points.

A point p in the scene's unit cube is looked up in the feature volume (B, C, Z, Y, X) by twice-
differentiable trilinear interpolation (``render.grid.trilinear_lookup``), the C channels are split
into a geometry half and an appearance half (official ``share_volume=False``), and three shallow
IF-Net-style decoders turn them into an SDF value plus a geometry feature, an RGB colour and (optional)
a semantic embedding. ∇SDF is taken by autograd with ``create_graph`` so the eikonal loss can
back-propagate through it into the volume and the decoders.

Official indoor config (``configs/scannet/pretrain-ponder-spunet-v1m1-0-base.py``, latest version):
- ``SDFDecoder(in 64, hidden 128, n_blocks 1, out 65 = sdf 1 + geometry feature 64)``, Softplus(β=100).
- ``RGBDecoder(in 134, hidden 128, n_blocks 0)`` -> sigmoid. Its input is the concatenation
  [∇sdf 3, appearance half 64, geometry feature 64, view direction 3] (in that order).
- ``SemanticDecoder(in 131, hidden 128, n_blocks 0, out 512)``. 131 = the RGB decoder's input without
  the view direction: [∇sdf 3, appearance half 64, geometry feature 64].
- All three decoders have ``points_factor = 0.0``: the IF-Net position branch ``fc_p(xyz)`` is
  multiplied by 0, so the decoders see the volume features only. We keep it as a parameter
  (``SDFFieldConfig.points_factor``); at 0 the ``fc_p`` layer is not built at all (its output would be
  exactly 0 and it would get no gradient, which DDP without ``find_unused_parameters`` rejects).
- IF-Net decoder: x = fc_p(p)·points_factor; per layer l: x = x + fc_c[l](feat); x = lin[l](x), with
  the activation after every layer but the last. With n_blocks = 0 the decoder is one linear layer on
  the features (the RGB and semantic decoders), so there is no activation in them at all.
- Volume lookup ``padding_mode="zeros"`` (SmoothSampler's) with ``align_corners=True``.

Point normalisation (one function, :func:`unit_cube_to_grid`): the feature volume's cells tile ``box``
(default :data:`~renderssl.models.volume.UNIT_BOX` = [-0.5, 0.5]^3, the cube ``models.volume.densify``
writes), and a unit-cube point p is read at ``world_to_grid(p, *centre_bounds(grid_shape, box))``: the
align_corners=True coordinates in which ±1 are the centres of the first / last cells, so a feature
densified into a cell is read back exactly at that cell's centre. The grid shape (X, Y, Z) is the bound
volume's own. PonderV2 instead maps p / (1 + pad) + 0.5 (pad 0.1) into [0, 1] and ×2 − 1, i.e. its corner
voxel centres sit at ±0.55, half a cell and 5% away from the cells it densified into; not copied. The
collider (the renderer's ray box, PonderV2's [-0.55, 0.55]^3) is the caller's business: samples outside
the volume read zeros (``padding_mode="zeros"``, as the official SmoothSampler). Every consumer of the
field (the renderer, the NeuS up-sampler through ``sdf``) passes *unit-cube* points and the field
normalises them itself, in exactly one place. PonderV2's bug (1) (its sampler reads the volume with
un-normalised points) therefore cannot happen here: ``BoundSDFField.sdf`` and ``BoundSDFField.__call__``
share the same path.

Our choices where the paper and code are silent or where we differ:
- The decoders' ``points`` input (used only when points_factor != 0) is the normalised grid coordinate
  in [-1, 1], not the unit-cube point.
- The semantic decoder returns the raw 512-d output per sample; it is composited like the colour and
  L2-normalised *after* compositing, in the loss (``methods.ponder_losses``), as the official code
  does. Normalising per sample before compositing would change the function.
- ∇sdf is with respect to the unit-cube point (so the eikonal loss is in unit-cube units).
- Rendering batches scenes by flattening their rays scene-major: ``field.bind(volume)`` returns a
  :class:`BoundSDFField` (the ``render.volume`` field contract: ``sdf(points)`` and ``__call__(points,
  directions) -> NeuSField``) that accepts (B·R, S, 3) points, rays of scene b being rows b·R:(b+1)·R.
  Its features are [rgb 3 | semantic D] per sample; :meth:`VolumeSDFField.split_features` splits the
  composited result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ...errors import InputError, check_finite
from ...render.grid import PADDING_MODES, trilinear_lookup
from ...render.volume import AutogradSDFField, NeuSField
from ..volume.densify import UNIT_BOX, box_tensors, centre_bounds


def unit_cube_to_grid(points: Tensor, grid_shape, box=UNIT_BOX) -> Tensor:
    """Unit-cube points (..., 3) -> align_corners=True grid coordinates (..., 3) of a (X, Y, Z) grid whose
    cells tile ``box``: ±1 at the centres of the first / last cells (``models.volume.centre_bounds``)."""
    if min(int(n) for n in grid_shape) < 2:
        raise InputError(f"unit_cube_to_grid: grid_shape needs >= 2 cells per axis, got {tuple(grid_shape)}")
    lo, hi = centre_bounds(grid_shape, box, torch.float64)  # (3,) each, on the CPU: no device copy or sync per call
    scale = [2.0 / float(h - l) for l, h in zip(lo, hi)]  # world_to_grid's 2 (p - lo) / (hi - lo) - 1 per axis
    return torch.stack([points[..., a] * scale[a] - (float(lo[a]) * scale[a] + 1.0) for a in range(3)], dim=-1)


class IFNetDecoder(nn.Module):
    """IF-Net-style conditioned MLP: x = fc_p(p)·points_factor, then per layer x += fc_c(feat); x = lin(x)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128, n_blocks: int = 0,
                 points_factor: float = 0.0, activation: nn.Module | None = None):
        super().__init__()
        if min(in_dim, out_dim, hidden) < 1 or n_blocks < 0:
            raise InputError(f"IFNetDecoder: in_dim/out_dim/hidden must be >= 1 and n_blocks >= 0, "
                             f"got {in_dim}/{out_dim}/{hidden}/{n_blocks}")
        dims = [hidden] * (n_blocks + 1) + [out_dim]
        self.lins = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(len(dims) - 1))
        self.fc_c = nn.ModuleList(nn.Linear(in_dim, hidden) for _ in range(len(dims) - 1))
        self.points_factor = float(points_factor)
        self.fc_p = nn.Linear(3, hidden) if self.points_factor != 0.0 else None
        self.activation = activation if activation is not None else nn.ReLU()
        self.in_dim = in_dim

    def forward(self, points: Tensor, feats: Tensor) -> Tensor:
        """points (..., 3), feats (..., in_dim) -> (..., out_dim)."""
        if feats.shape[-1] != self.in_dim:
            raise InputError(f"IFNetDecoder: feats must end in {self.in_dim}, got {tuple(feats.shape)}")
        x = self.fc_p(points) * self.points_factor if self.fc_p is not None else 0.0  # (..., hidden) or 0
        last = len(self.lins) - 1
        for i, (lin, fc_c) in enumerate(zip(self.lins, self.fc_c)):
            x = lin(x + fc_c(feats))  # (..., hidden) or (..., out_dim) at the last layer
            if i < last:
                x = self.activation(x)
        return x


def SDFDecoder(in_dim: int = 64, hidden: int = 128, n_blocks: int = 1, out_dim: int = 65,
               points_factor: float = 0.0) -> IFNetDecoder:
    """sdf (1) + geometry feature (out_dim − 1) from the geometry half; Softplus(β=100) between layers."""
    return IFNetDecoder(in_dim, out_dim, hidden, n_blocks, points_factor, nn.Softplus(beta=100))


class RGBDecoder(IFNetDecoder):
    """Colour in [0, 1] from [∇sdf 3, appearance, geometry feature, direction 3] (official in 134)."""

    def __init__(self, in_dim: int = 134, hidden: int = 128, n_blocks: int = 0, points_factor: float = 0.0):
        super().__init__(in_dim, 3, hidden, n_blocks, points_factor, nn.ReLU())

    def forward(self, points: Tensor, feats: Tensor) -> Tensor:
        return torch.sigmoid(super().forward(points, feats))


def SemanticDecoder(in_dim: int = 131, out_dim: int = 512, hidden: int = 128, n_blocks: int = 0,
                    points_factor: float = 0.0) -> IFNetDecoder:
    """Raw semantic embedding (out_dim) from [∇sdf 3, appearance, geometry feature] (official in 131);
    L2-normalised after compositing, in the loss."""
    return IFNetDecoder(in_dim, out_dim, hidden, n_blocks, points_factor, nn.ReLU())


@dataclass
class SDFFieldConfig:
    """PonderV2's indoor field (official values as defaults)."""

    volume_channels: int = 128  # split into geometry (first half) and appearance (second half)
    hidden: int = 128
    geometry_feature_dim: int = 64  # the SDF decoder outputs 1 + this
    sdf_blocks: int = 1
    rgb_blocks: int = 0
    semantic_dim: int = 512  # 0 = no semantic decoder (CLIP ViT-B/16 text width otherwise)
    semantic_blocks: int = 0
    points_factor: float = 0.0
    box: tuple[tuple[float, float, float], tuple[float, float, float]] = UNIT_BOX  # (lo, hi) the volume's cells tile (densify's)
    padding_mode: str = "zeros"
    use_gradient: bool = True  # ∇sdf enters the colour and semantic decoders

    def __post_init__(self):
        box_tensors(self.box)  # (lo, hi) with 3 numbers each, hi > lo
        self.box = tuple(tuple(float(v) for v in b) for b in self.box)


class FieldOutput(NamedTuple):
    """The field at points (B, R, S, 3)."""

    sdf: Tensor  # (B, R, S)
    gradients: Tensor  # (B, R, S, 3) ∇sdf w.r.t. the unit-cube point
    rgb: Tensor  # (B, R, S, 3)
    semantic: Tensor | None  # (B, R, S, D) raw (not normalised)


class VolumeSDFField(nn.Module):
    """PonderV2's SDFField on a dense feature volume (B, C, Z, Y, X) with unit-cube query points."""

    def __init__(self, config: SDFFieldConfig | None = None):
        super().__init__()
        cfg = config or SDFFieldConfig()
        if cfg.volume_channels < 2 or cfg.volume_channels % 2:
            raise InputError(f"VolumeSDFField: volume_channels must be even and >= 2, got {cfg.volume_channels}")
        if cfg.padding_mode not in PADDING_MODES:
            raise InputError(f"VolumeSDFField: padding_mode {cfg.padding_mode!r} not in {PADDING_MODES}")
        self.config = cfg
        half, geo = cfg.volume_channels // 2, cfg.geometry_feature_dim
        grad = 3 if cfg.use_gradient else 0
        self.sdf_decoder = SDFDecoder(half, cfg.hidden, cfg.sdf_blocks, 1 + geo, cfg.points_factor)
        self.rgb_decoder = RGBDecoder(grad + half + geo + 3, cfg.hidden, cfg.rgb_blocks, cfg.points_factor)
        self.semantic_decoder = (SemanticDecoder(grad + half + geo, cfg.semantic_dim, cfg.hidden, cfg.semantic_blocks,
                                                 cfg.points_factor) if cfg.semantic_dim > 0 else None)

    @property
    def feature_dim(self) -> int:
        """Channels of the rendered features: rgb 3 (+ semantic D)."""
        return 3 + (self.config.semantic_dim if self.semantic_decoder is not None else 0)

    def check_volume(self, volume: Tensor) -> None:
        if not isinstance(volume, Tensor) or volume.dim() != 5 or volume.shape[1] != self.config.volume_channels:
            shape = tuple(volume.shape) if isinstance(volume, Tensor) else type(volume).__name__
            raise InputError(f"VolumeSDFField: volume must be (B, {self.config.volume_channels}, Z, Y, X), got {shape}")

    def lookup(self, volume: Tensor, points: Tensor, check_volume: bool = True) -> tuple[Tensor, Tensor]:
        """Unit-cube points (B, N, 3) -> grid coordinates (B, N, 3) and volume features (B, N, C)."""
        grid_shape = (volume.shape[4], volume.shape[3], volume.shape[2])  # (X, Y, Z)
        grid = unit_cube_to_grid(points, grid_shape, self.config.box)  # (B, N, 3), ±1 at the corner cells' centres
        return grid, trilinear_lookup(volume, grid, self.config.padding_mode, check_volume)  # (B, N, C)

    def sdf_and_features(self, volume: Tensor, points: Tensor, check_volume: bool = True) -> tuple[Tensor, Tensor]:
        """Unit-cube points (B, N, 3) -> sdf (B, N) and [grid coords 3 | appearance C/2 | geometry feature G]."""
        grid, feats = self.lookup(volume, points, check_volume)  # (B, N, 3), (B, N, C)
        geometry, appearance = feats.chunk(2, dim=-1)  # (B, N, C/2) each
        h = self.sdf_decoder(grid, geometry)  # (B, N, 1 + G)
        return h[..., 0], torch.cat([grid, appearance, h[..., 1:]], dim=-1)  # (B, N), (B, N, 3 + C/2 + G)

    def decode_features(self, carried: Tensor, directions: Tensor, gradients: Tensor) -> Tensor:
        """[grid | appearance | geometry feature] (..., 3 + C/2 + G), directions and ∇sdf (..., 3)
        -> rendered features (..., 3 [+ D]) = rgb [| semantic]."""
        grid, rest = carried[..., :3], carried[..., 3:]  # (..., 3), (..., C/2 + G)
        base = torch.cat([gradients, rest], dim=-1) if self.config.use_gradient else rest  # (..., [3 +] C/2 + G)
        rgb = self.rgb_decoder(grid, torch.cat([base, directions], dim=-1))  # (..., 3)
        if self.semantic_decoder is None:
            return rgb
        return torch.cat([rgb, self.semantic_decoder(grid, base)], dim=-1)  # (..., 3 + D)

    def bind(self, volume: Tensor) -> "BoundSDFField":
        """The field on one batch of volumes, as the NeuS renderer's field (see :class:`BoundSDFField`); the
        volume's values are checked here, once, not at each of its lookups."""
        self.check_volume(volume)
        check_finite("VolumeSDFField: volume", volume)
        return BoundSDFField(self, volume)

    def split_features(self, features: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Rendered (or per-sample) features (..., 3 [+ D]) -> rgb (..., 3), semantic (..., D) or None."""
        if features is None:
            return None, None
        if features.shape[-1] != self.feature_dim:
            raise InputError(f"VolumeSDFField.split_features: features must end in {self.feature_dim}, got {tuple(features.shape)}")
        return features[..., :3], (features[..., 3:] if self.semantic_decoder is not None else None)

    def forward(self, volume: Tensor, points: Tensor, directions: Tensor) -> FieldOutput:
        """volume (B, C, Z, Y, X), unit-cube points (B, R, S, 3), unit directions (B, R, S, 3)."""
        if points.dim() != 4 or points.shape[-1] != 3 or directions.shape != points.shape:
            raise InputError(f"VolumeSDFField: points and directions must both be (B, R, S, 3), "
                             f"got {tuple(points.shape)} and {tuple(directions.shape)}")
        B, R, S, _ = points.shape
        out = self.bind(volume)(points.reshape(B * R, S, 3), directions.reshape(B * R, S, 3))
        rgb, semantic = self.split_features(out.features.reshape(B, R, S, -1))
        return FieldOutput(out.sdf.reshape(B, R, S), out.gradients.reshape(B, R, S, 3), rgb, semantic)


class BoundSDFField(AutogradSDFField):
    """A :class:`VolumeSDFField` bound to volumes (B, C, Z, Y, X): the ``render.volume`` field contract.

    ``sdf(points)`` (what the NeuS up-sampler calls) and ``__call__(points, directions) -> NeuSField``
    (sdf (R, S), ∇sdf (R, S, 3) by autograd, features (R, S, 3 [+ D])) take the same unit-cube points
    (R, S, 3) with R = B · rays-per-scene, scene-major; both normalise them the same way.
    """

    def __init__(self, field: VolumeSDFField, volume: Tensor):
        self.field, self.volume = field, volume
        super().__init__(self.scene_sdf, self.scene_features)

    def scene_sdf(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(R, S, 3) -> sdf (R, S), carried features (R, S, F): rays regrouped per scene for the lookup."""
        B = self.volume.shape[0]
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] % B:
            raise InputError(f"VolumeSDFField: points must be (R, S, 3) with R a multiple of the {B} scenes "
                             f"(rays scene-major), got {tuple(points.shape)}")
        R, S, _ = points.shape
        sdf, carried = self.field.sdf_and_features(self.volume, points.reshape(B, (R // B) * S, 3),
                                                   check_volume=False)  # (B, N), (B, N, F): checked by bind
        return sdf.reshape(R, S), carried.reshape(R, S, -1)

    def scene_features(self, points: Tensor, directions: Tensor, gradients: Tensor, carried: Tensor) -> Tensor:
        return self.field.decode_features(carried, directions, gradients)  # (R, S, 3 [+ D])

    def __call__(self, points: Tensor, directions: Tensor) -> NeuSField:
        if directions.shape != points.shape:
            raise InputError(f"VolumeSDFField: directions {tuple(directions.shape)} must match points {tuple(points.shape)}")
        return super().__call__(points, directions)
