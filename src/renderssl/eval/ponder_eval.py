"""PonderV2 evaluation on held-out scenes (issue 12, item 6 and its figures): novel-frame RGB-D rendering
and surfaces by marching cubes on the SDF.

Per held-out scene (the first ``max_scenes`` readable scenes of the split, one at a time):

1. Input: the run's own context selection (``ponder.views``: ``count`` random frames) plus ONE target frame
   (``num_targets=1``, ``views.targets="random"``: any other frame of the scene), drawn from the sample's
   generator seeded by ``data.seed`` and the scene's index (the same frames for every run on the same
   data), frames at ``data.height`` x ``data.width`` by ``data.resize``. The encoder's cloud is the scene's
   fused cloud exactly as in pretraining (``ponder.scene_cloud``: every frame, at its pixel stride), but
   through :class:`PonderEvalTransform` instead of the training transform: grid sampling only (mode
   ``center``: the point nearest each voxel centre, deterministic), NO augmentation (the world frame is
   kept, so meshes come out in scene metres) and NO input masking (every grid-sampled point is seen).
   The target is novel as a view (never a context frame), not as geometry: the fused cloud covers every
   frame, as PonderV2's input does. The feature volume is built by ``Ponder.render_volume`` from the batch
   cut to its context frames (:func:`context_views`), so a branch that lifts frames never sees the target.
2. Novel frames (:func:`render_target_frames`, the ``Method.render_targets`` contract plus depth): every
   pixel of the target frame, a unit ray through its centre (j + 0.5, i + 0.5), rendered in chunks of
   ``chunk`` pixels per scene (B x chunk rays at once, scene-major) with the training renderer
   (``Ponder.render``: NeuS, ``n_samples`` + ``n_importance``), deterministic (``stratified=False``: bin
   midpoints), without parameter gradients (the field's ∇sdf is taken by autograd locally, graph not kept).
   Rays that miss the collider render black with depth 0. Depth: the rendered ``depth_normalized``
   (Σ w t / Σ w, unit-cube ray distance) -> z-depth in metres, ``z = t (d · axis) / s`` with axis the
   camera's optical axis and s the unit-cube scale (:func:`unit_distance_to_z_metres`).
   Scores per target image, averaged over images: PSNR and SSIM of the rendering clamped to [0, 1]
   (``eval.metrics``) against the target; depth AbsRel = mean |d - d*| / d* over the image's valid
   ground-truth pixels (d* > 0; an image without one is left out). Floor (RGB only): the context frame
   nearest the target (``eval.novel_views.nearest_context``) copied as the prediction. No depth floor.
3. Surfaces (:func:`scene_mesh`): the SDF of the scene's feature volume (``field.sdf_and_features``: the
   path the renderer's up-sampler reads) on a regular grid over the box of the scene's input cloud in the
   unit cube, widened by ``MARGIN_SAMPLES`` grid steps per side (so walls at the box's faces are
   straddled) and clipped to PonderV2's collider [-0.55, 0.55]^3; spacing 1 / ``resolution`` unit-cube
   units, ``resolution`` = max(96, 2 x the largest feature-volume size) unless given. The box is the cloud's
   and not the whole cube because the field is unsupervised away from the scene (an indoor scene fills
   z only up to its height): a surface there is no reconstruction of anything. Marching cubes at level 0
   (``eval.surfaces.extract_mesh``), vertices mapped back to world metres by S^-1, the mesh written as
   ``<run>/meshes/<scene>.ply``. A field with no zero crossing in the box gives "no surface" (no PLY;
   chamfer inf, F-score 0), not an error.
   Metrics (``chamfer_and_fscore``, threshold 5 cm): ``surface_points`` points sampled uniformly on the
   mesh against as many on the true surface: synthetic scenes (whose opened scene carries its
   ``layout``) the exact primitives' surface seen by the scene's camera trajectory
   (``synthetic_surface_points``); other sources the scene's fused ground-truth depth (its
   ``ponder.scene_cloud`` fusion of every frame, randomly subsampled; reported as "fused depth", an
   approximation of the truth). Means over scenes: a scene with no surface counts as inf (chamfer,
   accuracy, completeness) and 0 (precision, recall, F-score); ``meshed`` counts the scenes with a surface.
   Sampling generators are seeded by (``seed``, scene index).
4. ``evaluation.json``: ``novel_frames`` {psnr, ssim, depth_abs_rel, nearest_context_view {psnr, ssim},
   scenes, images}, ``surfaces`` {chamfer, accuracy, completeness, precision, recall, fscore, threshold,
   meshed, scenes, reference, resolution, per_scene}, ``skipped``; ``evaluation.png`` rows: context 0,
   target, rendering, rendered depth, ground-truth depth (both depths coloured with the ground truth's
   2-98% range), up to four scenes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..data.datasets import MultiViewDataset, collate_stacked
from ..data.points import grid_sample, select_points
from ..errors import InputError
from ..geometry import Cameras
from ..methods.ponder import COLLIDER, RayBatch, collider_bounds, sample_cloud
from ..models.volume import apply_to_cameras, apply_to_points, scale_of
from ..render.volume import z_depth_from_ray_distance
from ..train.trainer import move_to_device
from .metrics import depth_metrics, psnr, ssim
from .novel_views import FLOOR, gather_views, nearest_context, novel_view_scenes
from .surfaces import chamfer_and_fscore, extract_mesh, sample_surface, synthetic_surface_points, write_mesh_ply

CHUNK = 4096  # pixels per scene per rendering pass
SURFACE_POINTS = 100_000  # points sampled on the mesh and on the true surface
THRESHOLD = 0.05  # F-score distance, metres
MIN_RESOLUTION = 96  # grid samples per unit-cube length, at least
MARGIN_SAMPLES = 3  # grid steps added to each side of the cloud's box
EXAMPLES = 4  # scenes shown in evaluation.png
PER_VIEW_KEYS = ("rgb", "depth", "K", "c2w", "view_ids", "semantic", "instance")
NO_SURFACE = "no surface"
SYNTHETIC_REFERENCE = "synthetic: exact primitive surface seen by the scene's cameras"
FUSED_REFERENCE = "fused ground-truth depth of every frame (ponder.scene_cloud fusion)"


# ---- the data --------------------------------------------------------------------------------------
@dataclass
class PonderEvalTransform:
    """The evaluation's per-sample transform (picklable): grid sampling only, no augmentation, no
    masking; zero normals for a cloud without them (as the training transform)."""

    grid_size: float = 0.02

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        cloud = sample_cloud(sample)
        cloud = select_points(cloud, grid_sample(cloud["points"], self.grid_size, mode="center"))
        return dict(sample, cloud=cloud)


def ponder_eval_dataset(scenes: list, data, recipe, size: tuple[int, int]) -> MultiViewDataset:
    """``scenes`` as one sample each: ``recipe.views`` context frames + 1 random other frame, the scene's
    fused cloud through :class:`PonderEvalTransform`, at ``size`` (H, W) by ``data.resize``."""
    views = dataclasses.replace(recipe.views, targets="random")
    return MultiViewDataset(scenes, seed=data.seed, size=size, resize=data.resize, views=views, num_targets=1,
                            cache_scenes=1, cache_mb=0, scene_cloud=recipe.scene_cloud,
                            transform=PonderEvalTransform(recipe.grid_size))


# ---- novel frames ----------------------------------------------------------------------------------
def unit_distance_to_z_metres(distance: Tensor, directions: Tensor, optical_axis: Tensor, scale: Tensor) -> Tensor:
    """Ray distance (R,) in unit-cube units along unit ``directions`` (R, 3) -> z-depth (R,) in scene units
    (metres): ``t (d · axis) / s`` for optical axes (R, 3) and unit-cube scales s (R,) (``scale_of(S)``)."""
    return z_depth_from_ray_distance(distance, directions, optical_axis) / scale  # (R,)


def pixel_centres(H: int, W: int, dtype=torch.float32, device=None) -> Tensor:
    """(H W, 2) pixel centres (j + 0.5, i + 0.5), row-major (flat index i W + j)."""
    i, j = torch.meshgrid(torch.arange(H, dtype=dtype, device=device), torch.arange(W, dtype=dtype, device=device),
                          indexing="ij")
    return torch.stack([j.reshape(-1) + 0.5, i.reshape(-1) + 0.5], dim=-1)  # (H W, 2)


def render_rays(method, volume: Tensor, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """Rays (B n, 3) scene-major in the unit cube -> (rgb (B n, 3), ray distance (B n,)) rendered through
    ``volume`` (B, C, Z, Y, X) by ``method.render``, deterministically; missed rays give 0 and 0."""
    near, far, hit = collider_bounds(origins, directions)  # (B n,) each
    empty = origins.new_zeros(0)
    rays = RayBatch(origins, directions, near, far, hit, empty, empty, None, empty)
    out = method.render(volume, rays, None, stratified=False)
    rgb, _ = method.field.split_features(out.features)  # (B n, 3)
    return rgb * hit[:, None], out.depth_normalized * hit  # (B n, 3), (B n,)


@torch.no_grad()
def render_target_frames(method, batch: dict, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """Every pixel of the batch's target frames (views ``method.num_context`` ..) rendered from its cloud
    -> (rgb (B, T, 3, H, W) in [0, 1], z-depth (B, T, 1, H, W) in metres, 0 where a ray misses).
    ``chunk`` pixels per scene per pass; the result does not depend on it."""
    volume, S = method.render_volume(context_views(batch, method.num_context))  # (B, C, Z, Y, X), (B, 4, 4)
    return render_frames_from_volume(method, batch, volume, S, chunk)


def context_views(batch: dict, num_context: int) -> dict:
    """The batch with its per-view entries (B, V, ...) cut to the first ``num_context`` views: what the
    feature volume may read (an image branch lifts every frame it is given; the target must not be one)."""
    return {k: (v[:, :num_context] if k in PER_VIEW_KEYS and isinstance(v, Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def render_frames_from_volume(method, batch: dict, volume: Tensor, S: Tensor, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """:func:`render_target_frames` from the batch's feature volume (B, C, Z, Y, X) and unit-cube
    similarities S (B, 4, 4), already computed."""
    if int(chunk) < 1:
        raise InputError(f"render_target_frames: chunk must be >= 1, got {chunk}")
    C = method.num_context
    rgb = batch["rgb"]  # (B, V, 3, H, W)
    B, V, _, H, W = rgb.shape
    T = V - C
    if T < 1:
        raise InputError(f"render_target_frames: batch['rgb'] has {V} views, no target after the {C} context views")
    dtype = volume.dtype
    c2w = apply_to_cameras(batch["c2w"][:, C:].to(dtype), S.to(dtype))  # (B, T, 4, 4) unit cube
    uv = pixel_centres(H, W, dtype, rgb.device).expand(B, T, H * W, 2)  # (B, T, H W, 2)
    origins, directions = Cameras(batch["K"][:, C:].to(dtype), c2w, W, H).rays_at(uv, normalize=True)  # (B, T, H W, 3)
    origins, directions = origins.reshape(B, T * H * W, 3), directions.reshape(B, T * H * W, 3)
    axis = c2w[..., :3, 2][:, :, None].expand(B, T, H * W, 3).reshape(B, T * H * W, 3)  # (B, T H W, 3)
    scale = scale_of(S).to(dtype)[:, None].expand(B, T * H * W)  # (B, T H W)
    colours, depths = [], []
    for start in range(0, T * H * W, int(chunk)):
        part = slice(start, min(start + int(chunk), T * H * W))
        o, d = origins[:, part].reshape(-1, 3), directions[:, part].reshape(-1, 3)  # (B n, 3) scene-major
        colour, distance = render_rays(method, volume, o, d)  # (B n, 3), (B n,)
        z = unit_distance_to_z_metres(distance, d, axis[:, part].reshape(-1, 3), scale[:, part].reshape(-1))  # (B n,)
        colours.append(colour.reshape(B, -1, 3))
        depths.append(z.reshape(B, -1))
    colour = torch.cat(colours, dim=1).reshape(B, T, H, W, 3).permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W)
    depth = torch.cat(depths, dim=1).reshape(B, T, 1, H, W)  # (B, T, 1, H, W)
    return colour.clamp(0, 1), depth


def score_frames(batch: dict, num_context: int, rendering: Tensor, depth: Tensor) -> dict[str, Tensor]:
    """Per-target-image scores (B T,): psnr, ssim, depth_abs_rel of the model; floor_psnr, floor_ssim of the
    nearest context frame copied."""
    C = num_context
    rgb, c2w = batch["rgb"], batch["c2w"]  # (B, V, 3, H, W), (B, V, 4, 4)
    truth = rgb[:, C:].flatten(0, 1)  # (B T, 3, H, W)
    nearest = gather_views(rgb[:, :C], nearest_context(c2w[:, :C], c2w[:, C:])).flatten(0, 1)  # (B T, 3, H, W)
    pred = rendering.flatten(0, 1).to(truth.dtype)  # (B T, 3, H, W)
    return {"psnr": psnr(pred, truth), "ssim": ssim(pred, truth),
            "depth_abs_rel": depth_metrics(depth.flatten(0, 1), batch["depth"][:, C:].flatten(0, 1))["abs_rel"].to(truth.dtype),
            "floor_psnr": psnr(nearest, truth), "floor_ssim": ssim(nearest, truth)}


# ---- surfaces --------------------------------------------------------------------------------------
def unit_to_world(points: Tensor, S: Tensor) -> Tensor:
    """Unit-cube points (N, 3) -> world points (N, 3) of the scene with similarity S (4, 4): S^-1 p."""
    inv = torch.linalg.inv(S.double())  # (4, 4)
    return (points.double() @ inv[:3, :3].T + inv[:3, 3]).to(points.dtype)  # (N, 3)


def default_resolution(grid_shape) -> int:
    """Grid samples per unit-cube length: max(96, 2 x the largest feature-volume size)."""
    return max(MIN_RESOLUTION, 2 * max(int(n) for n in grid_shape))


def surface_box(points_unit: Tensor, spacing: float) -> tuple[Tensor, Tensor]:
    """The box (lo (3,), hi (3,)) of unit-cube points (N, 3), widened by MARGIN_SAMPLES x ``spacing`` per
    side and clipped to the collider."""

    lo = (points_unit.amin(0).double() - MARGIN_SAMPLES * spacing).clamp_min(COLLIDER[0][0])  # (3,)
    hi = (points_unit.amax(0).double() + MARGIN_SAMPLES * spacing).clamp_max(COLLIDER[1][0])  # (3,)
    return lo.cpu(), hi.cpu()


def scene_mesh(method, volume: Tensor, S: Tensor, points_unit: Tensor, resolution: int,
               sdf_fn=None) -> tuple[Tensor, Tensor]:
    """Marching cubes at 0 on one scene's SDF -> (vertices (V, 3) world metres, faces (F, 3)); empty when
    the SDF does not cross 0 in the box of ``points_unit`` (N, 3) (module docstring, step 3).

    ``volume`` (1, C, Z, Y, X) and S (4, 4) are the scene's; ``sdf_fn`` (unit-cube points (n, 3) -> (n,))
    replaces the field's SDF (tests)."""
    if sdf_fn is None:
        def sdf_fn(p: Tensor) -> Tensor:
            return method.field.sdf_and_features(volume, p[None].to(volume.dtype))[0][0]  # (n,)
    spacing = 1.0 / resolution
    lo, hi = surface_box(points_unit, spacing)
    samples = [max(2, int(math.ceil(float(h - l) / spacing)) + 1) for l, h in zip(lo, hi)]  # (X, Y, Z)
    hi = lo + spacing * (torch.tensor(samples, dtype=torch.float64) - 1)  # exact spacing on every axis
    vertices, faces = extract_mesh(sdf_fn, lo, hi, resolution=tuple(samples), device=points_unit.device)
    return unit_to_world(vertices, S.cpu()), faces


def true_surface(dataset: MultiViewDataset, index: int, n: int, generator: torch.Generator) -> tuple[Tensor, str]:
    """``n`` points (n, 3) on scene ``index``'s true surface and what they are (module docstring, step 3)."""
    scene = dataset.scenes[index]
    layout = getattr(scene, "layout", None)
    if layout is not None:
        return synthetic_surface_points(layout, n, generator), SYNTHETIC_REFERENCE
    points = dataset.fused_cloud(index, scene)["points"]  # (M, 3)
    if len(points) > n:
        points = points[torch.randperm(len(points), generator=generator)[:n]]
    return points.float(), FUSED_REFERENCE


def score_surface(vertices: Tensor, faces: Tensor, truth: Tensor, n: int, threshold: float,
                  generator: torch.Generator) -> dict[str, float]:
    """Chamfer / F-score of ``n`` points sampled on the mesh against ``truth`` (M, 3)."""
    return chamfer_and_fscore(sample_surface(vertices, faces, n, generator), truth, threshold)


def mean_surfaces(per_scene: dict[str, dict]) -> dict[str, float]:
    keys = ("chamfer", "accuracy", "completeness", "precision", "recall", "fscore")
    n = max(len(per_scene), 1)
    return {k: (sum(s[k] for s in per_scene.values()) / n if per_scene else float("nan")) for k in keys}


# ---- the evaluation --------------------------------------------------------------------------------
def evaluate_ponder(run_dir, cfg, method, split: str = "test", max_scenes: int = 8, log=print, chunk: int = CHUNK,
                    surface_points: int | None = None, resolution: int | None = None, threshold: float = THRESHOLD,
                    seed: int = 0) -> dict:
    """Novel frames and surfaces of a PonderV2 run (module docstring) on the first ``max_scenes`` readable
    scenes of ``split`` (config ``cfg``: an ExperimentConfig, data overrides applied) -> the result dict,
    also written to ``<run_dir>/evaluation.json``, with ``evaluation.png`` and ``meshes/<scene>.ply``."""
    from ..viz import colorize_depth_batch, save_grid, scalar_range

    run_dir = Path(run_dir)
    if int(max_scenes) < 1:
        raise InputError(f"evaluate: --max-frames (scenes) must be >= 1, got {max_scenes}")
    recipe, data = cfg.recipe, cfg.data
    H, W = int(data.height), int(data.width)
    scenes = novel_view_scenes(data, split)
    if not scenes:
        raise InputError(f"evaluate: the {split} split of {data.source} is empty; give it scenes (data.{split}_scenes=N)")
    dataset = ponder_eval_dataset(scenes, data, recipe, (H, W))
    resolution = int(resolution or default_resolution(recipe.grid_shape))
    surface_points = int(surface_points or SURFACE_POINTS)
    device = next(method.parameters()).device
    method.eval()
    log(f"evaluate: ponder on {split} scenes of {data.source} at {W}x{H}: {method.num_context} context frames + 1 random "
        f"target each, the scene's fused cloud grid-sampled at {recipe.grid_size} (no augmentation, no masking); "
        f"surfaces at {resolution} samples per unit-cube length, F-score at {threshold} m")

    sums = dict.fromkeys(("psnr", "ssim", "floor_psnr", "floor_ssim"), 0.0)
    depth_sum, depth_images, images = 0.0, 0, 0
    per_scene: dict[str, dict] = {}
    references: set[str] = set()
    rows: dict[str, list[Tensor]] = {}
    skipped: list[str] = []
    for index in range(len(dataset)):
        if len(per_scene) >= int(max_scenes):
            break
        try:
            batch = move_to_device(collate_stacked([dataset[index]]), device)
        except InputError as err:
            skipped.append(str(err))
            continue
        name = batch["scene"][0]
        volume, S = method.render_volume(context_views(batch, method.num_context))  # (1, C, Z, Y, X), (1, 4, 4)
        rendering, depth = render_frames_from_volume(method, batch, volume, S, chunk)  # (1, T, 3, H, W), (1, T, 1, H, W)
        scores = score_frames(batch, method.num_context, rendering, depth)
        for key in sums:
            sums[key] += float(scores[key].double().sum())
        rel = scores["depth_abs_rel"]
        depth_sum += float(rel[~rel.isnan()].double().sum())
        depth_images += int((~rel.isnan()).sum())
        images += len(scores["psnr"])

        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + index)
        with torch.no_grad():
            cloud = batch["cloud"]["points"]  # (N, 3) one scene
            points_unit = apply_to_points(cloud, torch.zeros(len(cloud), dtype=torch.int64, device=cloud.device), S)
            vertices, faces = scene_mesh(method, volume, S[0], points_unit, resolution)
        truth, reference = true_surface(dataset, index, surface_points, generator)
        references.add(reference)
        entry = score_surface(vertices, faces, truth, surface_points, threshold, generator)
        if len(faces):
            entry["mesh"] = str(write_mesh_ply(run_dir / "meshes" / f"{name}.ply", vertices, faces))
        else:
            entry["mesh"] = NO_SURFACE
        entry.update(vertices=len(vertices), faces=len(faces), reference=reference)
        per_scene[name] = entry
        log(f"  {name}: PSNR {float(scores['psnr'].mean()):.2f} dB (nearest context {float(scores['floor_psnr'].mean()):.2f}), "
            f"depth AbsRel {float(rel.nanmean()):.3f}; surface: "
            + (f"chamfer {entry['chamfer'] * 100:.1f} cm, F@{threshold * 100:.0f}cm {entry['fscore']:.3f}" if len(faces) else NO_SURFACE))

        if len(rows.get("target", [])) < EXAMPLES:
            C = method.num_context
            gt_depth = batch["depth"][:, C]  # (1, 1, H, W)
            lo, hi = scalar_range(gt_depth[:, 0], gt_depth[:, 0] > 0)
            new = {"context 0": batch["rgb"][0, 0], "target": batch["rgb"][0, C], "rendering": rendering[0, 0],
                   "rendered depth": colorize_depth_batch(depth[:, 0], lo, hi)[0],
                   "true depth": colorize_depth_batch(gt_depth, lo, hi)[0]}
            for key, value in new.items():
                rows.setdefault(key, []).append(value.detach().float().cpu())
    if skipped:
        log(f"evaluate: skipped {len(skipped)} unreadable scene(s): " + "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if not per_scene:
        raise InputError(f"evaluate: no readable scene among the {split} scenes of {data.source}: " + "; ".join(skipped[:3]))

    frames = {"psnr": sums["psnr"] / images, "ssim": sums["ssim"] / images,
              "depth_abs_rel": depth_sum / depth_images if depth_images else float("nan"),
              FLOOR: {"psnr": sums["floor_psnr"] / images, "ssim": sums["floor_ssim"] / images},
              "scenes": len(per_scene), "images": images}
    meshed = sum(1 for s in per_scene.values() if s["mesh"] != NO_SURFACE)
    surfaces = {**mean_surfaces(per_scene), "threshold": threshold, "meshed": meshed, "scenes": len(per_scene),
                "reference": sorted(references), "resolution": resolution, "surface_points": surface_points,
                "per_scene": per_scene}
    log(f"ponder novel frames on {len(per_scene)} {split} scenes at {W}x{H}: PSNR {frames['psnr']:.2f} dB vs nearest "
        f"context frame {frames[FLOOR]['psnr']:.2f} dB ({frames['psnr'] - frames[FLOOR]['psnr']:+.2f}); SSIM "
        f"{frames['ssim']:.3f} vs {frames[FLOOR]['ssim']:.3f}; depth AbsRel {frames['depth_abs_rel']:.4f}")
    log(f"ponder surfaces: {meshed} of {len(per_scene)} scenes meshed; chamfer {surfaces['chamfer']:.4f} m (accuracy "
        f"{surfaces['accuracy']:.4f}, completeness {surfaces['completeness']:.4f}), F@{threshold} m {surfaces['fscore']:.3f} "
        f"(P {surfaces['precision']:.3f}, R {surfaces['recall']:.3f}) against {'; '.join(sorted(references))}")
    result = {"method": cfg.method, "split": split, "source": str(data.source), "resolution": [H, W],
              "resize": data.resize, "novel_frames": frames, "surfaces": surfaces, "skipped": skipped}
    run_dir.mkdir(parents=True, exist_ok=True)
    picture = save_grid(list(rows.values()), run_dir / "evaluation.png", scale=2)
    (run_dir / "evaluation.json").write_text(json.dumps(result, indent=2))
    log(f"wrote {run_dir / 'evaluation.json'}, {picture} (rows: {', '.join(rows)}) and {meshed} mesh(es) in {run_dir / 'meshes'}")
    return result


__all__ = ["PonderEvalTransform", "context_views", "evaluate_ponder", "pixel_centres", "ponder_eval_dataset",
           "render_frames_from_volume", "render_rays", "render_target_frames", "scene_mesh", "score_frames", "surface_box", "true_surface",
           "unit_distance_to_z_metres", "unit_to_world"]
