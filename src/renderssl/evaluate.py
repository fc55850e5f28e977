"""``renderssl evaluate RUN``: how a pretraining run does on held-out scenes.

- Reconstruction: PSNR and SSIM of the method's reconstruction of masked test-split frames (the
  configured mask ratio, a fixed mask seed), over the whole image: MAE's prediction pasted into the
  visible patches, GMAE's full rendering.
- GMAE zero-shot edges (paper section 4.3): encode the whole image (mask ratio 0), sort the Gaussians
  by depth into ``num_layers`` groups, and take edges at layer discontinuities; scored with the BSDS500
  protocol (ODS / OIS / AP) against the instance boundaries of the held-out synthetic frames, or
  against BSDS-format ground truth for any folder of images (``--images DIR --gt DIR``; images are
  resized to the model's input size and edge maps resized back).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.build import load_split
from .data.scenes import SceneList
from .errors import InputError
from .eval.boundaries import evaluate_boundaries, read_bsds_ground_truth, segmentation_boundaries
from .eval.metrics import psnr, ssim
from .eval.zeroshot import figure_ground, layer_assignment, render_layers, zero_shot_edges
from .experiment import ExperimentConfig, load_run
from .methods.base import Method, StepContext
from .viz import colorize_labels, save_grid

RECONSTRUCTION_KEY = {"mae": "reconstruction + visible", "gmae": "rendering"}


def split_frames(cfg: ExperimentConfig, split: str, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) images and (N, H, W) instance maps (-1 where a scene has none) of the first
    ``max_frames`` frames of a split, read scene by scene (no more is decoded)."""
    scenes = SceneList(load_split(cfg.data, split), cache_scenes=1, cache_mb=0)
    images, instance = [], []
    for i in range(len(scenes)):
        for f in range(min(len(scenes[i]), max_frames - len(images))):
            frame = scenes.frame(i, f)
            images.append(frame["rgb"])  # (3, H, W)
            instance.append(frame.get("instance", torch.full(frame["rgb"].shape[1:], -1, dtype=torch.int64)))  # (H, W)
        if len(images) == max_frames:
            break
    return torch.stack(images), torch.stack(instance)


@torch.no_grad()
def reconstruction_scores(cfg: ExperimentConfig, method: Method, images: torch.Tensor, batch: int = 16) -> dict:
    key = RECONSTRUCTION_KEY[cfg.method]
    recon = torch.cat([
        method({"image": images[i:i + batch]}, StepContext(torch.Generator().manual_seed(i))).renders[key] for i in range(0, len(images), batch)
    ])
    return {"psnr": float(psnr(recon, images).mean()), "ssim": float(ssim(recon, images).mean()), "frames": len(images),
            "examples": recon[:4]}


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


def edge_scores(edges: torch.Tensor, gt_lists: list[list[np.ndarray]]) -> dict:
    result = evaluate_boundaries([e.numpy() for e in edges], gt_lists)
    return {k: float(result[k]) for k in ("ods", "ois", "ap")}


def zero_shot_synthetic(method, images: torch.Tensor, instance: torch.Tensor, num_layers: int) -> dict:
    edges = gmae_edges(method, images, num_layers)
    gt = [[segmentation_boundaries(inst.numpy())] for inst in instance]
    return {**edge_scores(edges, gt), "num_layers": num_layers, "frames": len(images), "examples": edges[:4]}


def zero_shot_folder(cfg: ExperimentConfig, method, images_dir, gt_dir, num_layers: int) -> dict:
    """BSDS protocol on a folder of images with ``<stem>.mat`` ground truth in ``gt_dir``."""
    from PIL import Image

    images_dir, gt_dir = Path(images_dir), Path(gt_dir)
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise InputError(f"{images_dir}: no .jpg or .png images")
    H, W = cfg.method_config.encoder.img_size
    preds, gts = [], []
    for path in paths:
        gt_path = gt_dir / f"{path.stem}.mat"
        if not gt_path.is_file():
            raise InputError(f"{path}: no ground truth {gt_path}")
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except OSError as err:
            raise InputError(f"{path}: unreadable image ({err})") from None
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, 3, h, w)
        edges = gmae_edges(method, F.interpolate(x, size=(H, W), mode="bilinear", antialias=True, align_corners=False), num_layers)
        preds.append(F.interpolate(edges[:, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0].clamp(0, 1))
        gts.append(read_bsds_ground_truth(gt_path))
    return {**edge_scores(preds, gts), "num_layers": num_layers, "images": len(paths)}


def evaluate_run(run_dir, split: str = "test", max_frames: int = 64, num_layers: int = 16,
                 images_dir=None, gt_dir=None, log=print) -> dict:
    run_dir = Path(run_dir)
    cfg, method = load_run(run_dir)
    if cfg.method not in RECONSTRUCTION_KEY:
        raise InputError(f"evaluate: {run_dir} is a {cfg.method} run; evaluate covers {sorted(RECONSTRUCTION_KEY)} "
                         "(score other encoders downstream with renderssl compare / finetune)")
    images, instance = split_frames(cfg, split, max_frames)
    recon = reconstruction_scores(cfg, method, images)
    log(f"{cfg.method} reconstruction on {recon['frames']} {split} frames: PSNR {recon['psnr']:.2f} dB, SSIM {recon['ssim']:.3f}")
    result = {"method": cfg.method, "split": split, "reconstruction": recon}
    rows = [list(images[:4]), list(recon["examples"])]
    if cfg.method == "gmae":
        edges = zero_shot_synthetic(method, images, instance, num_layers)
        log(f"zero-shot edges ({num_layers} layers) vs instance boundaries: ODS {edges['ods']:.3f}, OIS {edges['ois']:.3f}, AP {edges['ap']:.3f}")
        result["zero_shot_edges"] = edges
        rows.append([e.expand(3, -1, -1) for e in edges["examples"]])
        rows.append([colorize_labels(i) for i in instance[:4]])
        front, masks = gmae_layer_pictures(method, images[:4])
        rows += [front, masks]
        if images_dir is not None:
            result["bsds"] = zero_shot_folder(cfg, method, images_dir, gt_dir, num_layers)
            log(f"zero-shot edges on {images_dir}: ODS {result['bsds']['ods']:.3f}, OIS {result['bsds']['ois']:.3f}, AP {result['bsds']['ap']:.3f}")
    picture = save_grid(rows, run_dir / "evaluation.png", scale=2)  # rows: input, reconstruction[, edges, instances, front layer, figure-ground]
    for part in ("reconstruction", "zero_shot_edges"):
        result.get(part, {}).pop("examples", None)
    (run_dir / "evaluation.json").write_text(json.dumps(result, indent=2))
    log(f"wrote {run_dir / 'evaluation.json'} and {picture}")
    return result
