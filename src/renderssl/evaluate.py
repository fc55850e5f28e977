"""``renderssl evaluate RUN [data.key=value ...]``: how a pretraining run does on held-out frames
(reconstruction for the image recipes, novel views for the multi-view recipes).

- Resolution: the model runs at its training resolution, the input size of its encoder (``img_size`` in
  the run's config), whatever the size of the frames: every frame is brought to it when read, by the
  run's ``data.resize`` (``crop``: centre crop to the model's aspect ratio, then an antialiased resize;
  ``stretch``: resize only; :mod:`renderssl.data.datasets`). ``data.width`` / ``data.height`` of an
  override do not change this (the model has one input size).
- Streaming: frames are read through the split's Dataset batch by batch (scenes opened one at a time,
  no frame cache); only running sums, the edge maps at the model's size of the frames scored for edges
  (at most ``max_frames``) and four examples for the picture are kept. ``max_frames`` = the first that
  many readable frames of the split, in split order. A frame that cannot be read is skipped, named in
  the log and listed in ``evaluation.json`` (``skipped``).
- Data: the run's own data config; ``data.*`` overrides point it elsewhere (``data.source=DIR``,
  ``data.test_scenes=2``, ``data.resize=stretch``, ...). Any data source works: synthetic, scene folders
  or a folder of plain images (then the images' own split, :mod:`renderssl.data.formats.image_folder`).
  An empty split is refused with one line naming the split and the keys to change.
- Reconstruction: PSNR and SSIM (means over frames of the per-frame values) of the method's
  reconstruction of masked frames (the configured mask ratio; the mask of a batch seeded by the index of
  its first frame, so a frame gets the same mask at any frame size), over the whole image: MAE's
  prediction pasted into the visible patches, GMAE's full rendering.
- GMAE zero-shot edges (paper section 4.3): encode the whole image (mask ratio 0), sort the Gaussians
  by depth into ``num_layers`` groups, and take edges at layer discontinuities; scored with the BSDS500
  protocol (ODS / OIS / AP) against the instance boundaries of the frames that carry instance labels
  (at the model's size), "n/a (no instance labels)" when none does; or against BSDS-format ground truth
  for any folder of images (``--images DIR --gt DIR``; there the whole image is scored, so images are
  stretched to the model's input size and the edge maps stretched back, not cropped).
- Novel views (the multi-view recipes, ``sample_type == "multiview"``: GS³ now; :mod:`renderssl.eval.novel_views`):
  feed-forward novel view synthesis on held-out scenes. For each of the first ``max_frames`` readable
  scenes of the split, the run's own context selection (``<recipe>.views``) and ONE target view, a frame
  strictly between an interval pair (i, i + d) drawn uniformly (pixelSplat's interpolation targets; a
  random other frame in overlap mode or when d == 1), seeded by ``data.seed`` and the scene's index; the
  model renders the target from the context views alone (``Method.render_targets``: no masking, no
  augmentation). Frames at the run's training size, ``data.height`` x ``data.width`` of the run (the
  multi-view encoders have no fixed input size; overrides do not change it), by ``data.resize``. PSNR
  and SSIM per target image (means over images) for the model and for the floor, the nearest context
  view (nearest camera centre; ties: smaller rotation, then the first) copied as the prediction; LPIPS
  for both when the run's ``<recipe>.lpips_weights`` files exist, else "n/a" with the keys to set. One
  log line per metric: model vs floor and the difference. ``evaluation.json``: ``novel_views`` {model,
  nearest_context_view: {psnr, ssim, lpips}, scenes, images}; ``evaluation.png`` rows: context 0,
  context 1, target, rendering, nearest view (up to four scenes). An unreadable scene (or one with too
  few frames) is skipped and listed.
- NPS extras (:mod:`renderssl.eval.few_shot_nvs`, :mod:`renderssl.eval.camera_path`; refused for other
  recipes, from the run's config.yaml before any checkpoint is read): ``--scene DIR`` evaluates any scene
  folder instead of the test split (every 8th frame held out, each from its ``eval_source_views`` nearest
  other frames); ``--few-shot 3,6,10`` fine-tunes copies on k views of each evaluation scene (NPS Sec.
  4.1.3) and scores them against the zero-shot model, a scratch twin and the nearest training view
  (``few_shot`` in evaluation.json, one log line per k); ``--video`` writes ``<run>/path.gif`` (and
  ``path.mp4`` with imageio-ffmpeg), a camera path through the scene.
- PonderV2 (``method: ponder``; :mod:`renderssl.eval.ponder_eval`): per held-out scene (the first
  ``max_frames`` readable scenes of the split) the run's ``ponder.views`` context frames and one random other
  frame as target; the scene's fused cloud as in pretraining but grid-sampled only (no augmentation, no
  input masking), at the size of ``data.height`` x ``data.width`` (overrides apply: the renderer takes any
  size). Novel frames: every pixel of the target rendered (NeuS, deterministic samples), PSNR / SSIM
  against the target and the nearest context frame as floor, depth AbsRel of the rendered z-depth in
  metres over valid ground-truth pixels. Surfaces: marching cubes at 0 on the SDF over the scene's cloud
  box, the mesh in world metres written to ``meshes/<scene>.ply``, Chamfer and F-score at 5 cm against the
  true surface (synthetic: the exact primitives seen by the scene's cameras; otherwise the fused
  ground-truth depth); a field without a zero crossing is "no surface" (chamfer inf, F-score 0).
  ``evaluation.json``: ``novel_frames``, ``surfaces`` (means and ``per_scene``); ``evaluation.png`` rows:
  context 0, target, rendering, rendered depth, true depth.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.build import image_split, load_split
from .data.datasets import ImageDataset, collate_stacked
from .data.formats.images import read_rgb
from .errors import InputError
from .eval.boundaries import evaluate_boundaries, read_bsds_ground_truth, segmentation_boundaries
from .eval.metrics import psnr, ssim
from .eval.novel_views import (
    FLOOR, MODEL, describe_views, evaluate_novel_views, format_comparison, lpips_or_reason, novel_view_dataset, novel_view_scenes,
)
from .eval.zeroshot import (
    NO_INSTANCE_LABELS, figure_ground, format_scores, labelled, layer_assignment, not_available, render_layers,
    zero_shot_edges,
)
from .experiment import RECIPES, ExperimentConfig, load_experiment, load_run
from .methods.base import Method, StepContext
from .viz import colorize_labels, save_grid

RECONSTRUCTION_KEY = {"mae": "reconstruction + visible", "gmae": "rendering"}
SPLIT_KEYS = {"train": "data.train_scenes", "val": "data.val_scenes", "test": "data.test_scenes"}
EXAMPLES = 4  # frames shown in evaluation.png


def model_size(cfg: ExperimentConfig) -> tuple[int, int]:
    """(H, W) the run's model takes: its encoder's input size; for a multi-view recipe (whose encoders take
    any size) the size of its training views, ``data.height`` x ``data.width``."""
    if RECIPES[cfg.method].sample_type == "multiview":
        return int(cfg.data.height), int(cfg.data.width)
    size = cfg.method_config.encoder.img_size
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def empty_split(cfg: ExperimentConfig, split: str, why: str = "") -> InputError:
    other = " or ".join(f"--split {s}" for s in SPLIT_KEYS if s != split)
    return InputError(f"evaluate: the {split} split of {cfg.data.source} is empty{why}; evaluate {other}, or give the "
                      f"{split} split data ({SPLIT_KEYS[split]}=N or data.source=DIR as overrides after the run folder)")


def evaluation_frames(cfg: ExperimentConfig, split: str, size: tuple[int, int]) -> ImageDataset:
    """The frames of ``split`` as an :class:`ImageDataset` at ``size`` (H, W) by ``data.resize``: samples
    ``image`` (3, H, W) and, from scenes, ``semantic`` / ``instance`` (H, W) where the scene has them."""
    images = image_split(cfg.data, split)
    if images is not None:
        if len(images) == 0:
            raise empty_split(cfg, split, " (no images in it)")
        return ImageDataset(images, size=size, resize=cfg.data.resize)
    scenes = load_split(cfg.data, split)
    if not scenes:
        raise empty_split(cfg, split, f" ({SPLIT_KEYS[split]}={getattr(cfg.data, SPLIT_KEYS[split][5:])})")
    dataset = ImageDataset(scenes, size=size, resize=cfg.data.resize, label_maps=True, cache_scenes=1, cache_mb=0)
    if len(dataset) == 0:
        raise empty_split(cfg, split, " (its scenes have no frames)")
    return dataset


def frame_batches(dataset, max_frames: int, batch: int, skipped: list[str]):
    """Batches (collated dicts) of the first ``max_frames`` readable samples of ``dataset``; unreadable
    samples are skipped and their problems appended to ``skipped``."""
    i = taken = 0
    while i < len(dataset) and taken < max_frames:
        samples = []
        while len(samples) < min(batch, max_frames - taken) and i < len(dataset):
            try:
                samples.append(dataset[i])
            except InputError as err:
                skipped.append(str(err))
            i += 1
        if samples:
            taken += len(samples)
            yield collate_stacked(samples)


@torch.no_grad()
def reconstruct(cfg: ExperimentConfig, method: Method, images: torch.Tensor, first: int) -> torch.Tensor:
    """(B, 3, H, W) reconstruction of masked ``images``; the mask generator is seeded by ``first`` (the
    index of the batch's first frame)."""
    return method({"image": images}, StepContext(torch.Generator().manual_seed(first))).renders[RECONSTRUCTION_KEY[cfg.method]]


@torch.no_grad()
def gmae_edges(method, images: torch.Tensor, num_layers: int, batch: int = 16) -> torch.Tensor:
    """(N, H, W) zero-shot edge strength from whole-image (unmasked) Gaussians."""
    out = []
    for i in range(0, len(images), batch):
        gaussians, _, camera = method.predict_gaussians(images[i:i + batch], mask_ratio=0.0)
        out.append(zero_shot_edges(gaussians, camera, num_layers, background=method.background, hierarchical=True))
    return torch.cat(out)


@torch.no_grad()
def gmae_layer_pictures(method, images: torch.Tensor, num_layers: int = 4) -> tuple[list, list]:
    """Renders of the front group alone and figure-ground masks (front group) of a few images."""
    gaussians, _, camera = method.predict_gaussians(images, mask_ratio=0.0)
    layers = render_layers(gaussians, camera, num_layers, background=method.background)  # (B, L, 3, H, W)
    masks = figure_ground(layer_assignment(layers, background=method.background), num_front=1)  # (B, H, W)
    return list(layers[:, 0].clamp(0, 1)), [m.float().expand(3, -1, -1) for m in masks]


def edge_scores(edges, gt_lists: list[list[np.ndarray]]) -> dict:
    result = evaluate_boundaries([np.asarray(e) for e in edges], gt_lists)
    return {k: float(result[k]) for k in ("ods", "ois", "ap")}


def zero_shot_folder(cfg: ExperimentConfig, method, images_dir, gt_dir, num_layers: int) -> dict:
    """BSDS protocol on a folder of images with ``<stem>.mat`` ground truth in ``gt_dir``, one image at a
    time: stretched to the model's size, edges stretched back to the image's size."""
    images_dir, gt_dir = Path(images_dir), Path(gt_dir)
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: images folder not found (--images)")
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise InputError(f"{images_dir}: no .jpg or .png images")
    H, W = model_size(cfg)
    preds, gts = [], []
    for path in paths:
        gt_path = gt_dir / f"{path.stem}.mat"
        if not gt_path.is_file():
            raise InputError(f"{path}: no ground truth {gt_path}")
        x = read_rgb(path)[None]  # (1, 3, h, w)
        edges = gmae_edges(method, F.interpolate(x, size=(H, W), mode="bilinear", antialias=True, align_corners=False), num_layers)
        preds.append(F.interpolate(edges[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy())
        gts.append(read_bsds_ground_truth(gt_path))
    return {**edge_scores(preds, gts), "num_layers": num_layers, "images": len(paths)}


def data_overrides(run_dir: Path, overrides, method: str = "", evaluation_fields=()) -> ExperimentConfig | None:
    """The run's config with ``data.*`` overrides and overrides of the recipe's ``evaluation_fields``
    (``<method>.<field>``) applied (others refused: the model is the run's)."""
    overrides = list(overrides)
    if not overrides:
        return None
    allowed = tuple(f"{method}.{name}{end}" for name in evaluation_fields for end in ("=", "."))
    bad = [o for o in overrides if not o.startswith("data.") and not o.startswith(allowed)]
    if bad:
        extra = f" and {', '.join(f'{method}.{name}' for name in evaluation_fields)}" if evaluation_fields else ""
        raise InputError(f"evaluate: {bad[0]}: only data.* keys{extra} can be overridden (the model is the run's)")
    return load_experiment(run_dir / "config.yaml", overrides)


def evaluate_run(run_dir, split: str = "test", max_frames: int = 64, num_layers: int = 16,
                 images_dir=None, gt_dir=None, log=print, overrides=(), batch: int = 16, scene=None, few_shot=None,
                 video: bool = False, video_frames: int | None = None) -> dict:
    run_dir = Path(run_dir)
    nps_only = [name for name, given in (("--scene", scene is not None), ("--few-shot", few_shot is not None),
                                         ("--video", video)) if given]
    if nps_only:  # checked from config.yaml before any checkpoint is loaded (eval/few_shot_nvs.py)
        recipe = load_experiment(run_dir / "config.yaml").method if (run_dir / "config.yaml").is_file() else None
        if recipe is not None and recipe != "nps":
            raise InputError(f"evaluate: {', '.join(nps_only)} {'is' if len(nps_only) == 1 else 'are'} for NPS runs only; "
                             f"{run_dir} is a {recipe} run")
    cfg, method = load_run(run_dir)
    multiview = method.sample_type == "multiview"
    if cfg.method not in RECONSTRUCTION_KEY and not multiview:
        raise InputError(f"evaluate: {run_dir} is a {cfg.method} run; evaluate covers {sorted(RECONSTRUCTION_KEY)} "
                         "and the multi-view recipes (score other encoders downstream with renderssl compare / finetune)")
    if max_frames < 1:
        raise InputError(f"evaluate: --max-frames must be >= 1, got {max_frames}")
    if cfg.method == "ponder":  # novel RGB-D frames and surfaces (module docstring; eval/ponder_eval.py)
        from .eval.ponder_eval import evaluate_ponder

        changed = data_overrides(run_dir, overrides)
        cfg = cfg if changed is None else dataclasses.replace(cfg, data=changed.data)
        return evaluate_ponder(run_dir, cfg, method, split, max_frames, log)
    if nps_only:  # NPS: --scene / --few-shot / --video (eval/few_shot_nvs.py)
        from .eval.few_shot_nvs import evaluate_nps_run

        return evaluate_nps_run(run_dir, cfg, method, split, max_frames, log, overrides, batch, scene=scene,
                                few_shot=few_shot, video=video, video_frames=video_frames)
    if multiview:
        return evaluate_novel_view_run(run_dir, cfg, method, split, max_frames, log, overrides, batch)
    changed = data_overrides(run_dir, overrides)
    if changed is not None:
        cfg = dataclasses.replace(cfg, data=changed.data)
    H, W = model_size(cfg)
    dataset = evaluation_frames(cfg, split, (H, W))
    log(f"evaluate: {cfg.method} at its training resolution {W}x{H}; {split} frames of {cfg.data.source} brought "
        f"to it by data.resize={cfg.data.resize}")

    skipped: list[str] = []
    sums = {"psnr": 0.0, "ssim": 0.0}
    count, edge_maps, gt_lists, examples = 0, [], [], {}
    for b in frame_batches(dataset, max_frames, batch, skipped):
        images = b["image"]  # (B, 3, H, W)
        recon = reconstruct(cfg, method, images, count)  # (B, 3, H, W)
        sums["psnr"] += float(psnr(recon, images).sum())
        sums["ssim"] += float(ssim(recon, images).sum())
        instance = b.get("instance")  # (B, H, W) or None
        keep = labelled(instance) if instance is not None else torch.zeros(len(images), dtype=torch.bool)  # (B,)
        if cfg.method == "gmae" and (bool(keep.any()) or not examples):
            edges = gmae_edges(method, images, num_layers)  # (B, H, W)
            if bool(keep.any()):
                edge_maps += [e.numpy() for e in edges[keep]]
                gt_lists += [[segmentation_boundaries(m.numpy())] for m in instance[keep]]
        if not examples:
            examples = {"input": list(images[:EXAMPLES]), "reconstruction": list(recon[:EXAMPLES].clamp(0, 1))}
            if cfg.method == "gmae":
                examples["edges"] = [e.expand(3, -1, -1) for e in edges[:EXAMPLES]]
                if instance is not None:
                    examples["instances"] = [colorize_labels(i) for i in instance[:EXAMPLES]]
                examples["front"], examples["figure_ground"] = gmae_layer_pictures(method, images[:EXAMPLES])
        count += len(images)
    if skipped:
        log(f"evaluate: skipped {len(skipped)} unreadable frame(s): " + "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if count == 0:
        raise InputError(f"evaluate: no readable frame among the {split} frames of {cfg.data.source}: " + "; ".join(skipped[:3]))

    recon_scores = {"psnr": sums["psnr"] / count, "ssim": sums["ssim"] / count, "frames": count}
    log(f"{cfg.method} reconstruction on {count} {split} frames at {W}x{H}: PSNR {recon_scores['psnr']:.2f} dB, "
        f"SSIM {recon_scores['ssim']:.3f}")
    result = {"method": cfg.method, "split": split, "source": str(cfg.data.source), "resolution": [H, W],
              "resize": cfg.data.resize, "reconstruction": recon_scores, "skipped": skipped}
    if cfg.method == "gmae":
        if edge_maps:
            edges = {**edge_scores(edge_maps, gt_lists), "num_layers": num_layers, "frames": len(edge_maps)}
        else:
            edges = not_available(NO_INSTANCE_LABELS, num_layers=num_layers, frames=0)
        where = f" ({len(edge_maps)} of {count} frames have them)" if edge_maps and len(edge_maps) < count else ""
        log(f"zero-shot edges ({num_layers} layers) vs instance boundaries: {format_scores(edges)}{where}")
        result["zero_shot_edges"] = edges
        if images_dir is not None:
            result["bsds"] = zero_shot_folder(cfg, method, images_dir, gt_dir, num_layers)
            log(f"zero-shot edges on {images_dir}: {format_scores(result['bsds'])}")
    picture = save_grid(list(examples.values()), run_dir / "evaluation.png", scale=2)
    (run_dir / "evaluation.json").write_text(json.dumps(result, indent=2))
    log(f"wrote {run_dir / 'evaluation.json'} and {picture} (rows: {', '.join(examples)})")
    return result


def evaluate_novel_view_run(run_dir: Path, cfg: ExperimentConfig, method: Method, split: str, max_scenes: int, log,
                            overrides, batch: int) -> dict:
    """Novel view synthesis of a multi-view run (module docstring): the first ``max_scenes`` readable
    scenes of ``split``, one target each, at the run's training size; evaluation.json and evaluation.png."""
    H, W = model_size(cfg)  # the run's own size, before data overrides
    changed = data_overrides(run_dir, overrides, cfg.method, method.evaluation_fields)
    if changed is not None:
        fields = {name: getattr(changed.recipe, name) for name in method.evaluation_fields}
        method.config = dataclasses.replace(method.config, **fields)
        cfg = dataclasses.replace(cfg, data=changed.data, recipe=dataclasses.replace(cfg.recipe, **fields))
    scenes = novel_view_scenes(cfg.data, split)
    if not scenes:
        raise empty_split(cfg, split, f" ({SPLIT_KEYS[split]}={getattr(cfg.data, SPLIT_KEYS[split][5:])})")
    dataset = novel_view_dataset(scenes, cfg.data, cfg.recipe.views, (H, W), method.num_context)
    key = f"{cfg.method}.lpips_weights"
    lpips, no_lpips = lpips_or_reason(getattr(cfg.recipe, "lpips_weights", None), key, (H, W))
    log(f"evaluate: {cfg.method} novel views at its training resolution {W}x{H}: {split} scenes of {cfg.data.source}, "
        f"{method.num_context} context views ({describe_views(cfg.recipe.views)}), brought to it by "
        f"data.resize={cfg.data.resize}")

    skipped: list[str] = []
    scores, rows = evaluate_novel_views(method, frame_batches(dataset, max_scenes, batch, skipped), lpips, EXAMPLES)
    if skipped:
        log(f"evaluate: skipped {len(skipped)} unreadable scene(s): " + "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if scores["scenes"] == 0:
        raise InputError(f"evaluate: no readable scene among the {split} scenes of {cfg.data.source}: " + "; ".join(skipped[:3]))

    log(f"{cfg.method} novel views on {scores['scenes']} {split} scenes ({scores['images']} target images) at {W}x{H}:")
    for metric in ("psnr", "ssim", "lpips"):
        if metric in scores[MODEL]:
            log("  " + format_comparison(metric, scores[MODEL][metric], scores[FLOOR][metric]))
        else:
            log(f"  LPIPS: n/a ({no_lpips})")
    if no_lpips is not None:
        for name in (MODEL, FLOOR):
            scores[name]["lpips"] = f"n/a ({no_lpips})"
    result = {"method": cfg.method, "split": split, "source": str(cfg.data.source), "resolution": [H, W],
              "resize": cfg.data.resize,
              "novel_views": {MODEL: scores[MODEL], FLOOR: scores[FLOOR], "scenes": scores["scenes"], "images": scores["images"],
                              "context_views": method.num_context},
              "skipped": skipped}
    picture = save_grid(list(rows.values()), run_dir / "evaluation.png", scale=2)
    (run_dir / "evaluation.json").write_text(json.dumps(result, indent=2))
    log(f"wrote {run_dir / 'evaluation.json'} and {picture} (rows: {', '.join(rows)})")
    return result
