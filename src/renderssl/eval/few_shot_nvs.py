"""Few-shot novel view synthesis of an NPS run on an unseen scene (NPS Sec. 4.1.3), zero-shot novel views
on any scene folder, and the camera-path video: ``renderssl evaluate RUN [--scene DIR] [--few-shot 3,6,10]
[--video]``.

NPS Sec. 4.1.3: "the pretrained model is first fine-tuned with a few observed views (as few as 3) from the
target unseen scene, and then applied to the target scene ... During the inference phase, we utilize the
same views from the finetuning stage as source views" (LLFF with 3 / 6 / 10 views, Blender with 6 / 12).
NPS publishes no code; everything below not quoted is our choice.

- Evaluation scenes: ``--scene DIR`` (any scene folder the readers detect: ScanNet-style, 7-Scenes
  sequence, Blender / NeRF synthetic, LLFF), else the first ``scenes`` (``--few-shot-scenes``, default 1)
  readable scenes of the run's test split (``--split``); the video's scene: ``--scene`` or the first. Frames brought to the run's training size (``data.height`` x ``data.width``) by
  ``data.resize``, as every evaluate path (:func:`load_eval_scene`).
- Views (:func:`few_shot_views`, deterministic, no seed): held-out test views are every ``test_every``-th
  frame (frames 0, 8, 16, ...: LLFF's test views in the NeRF / RegNeRF protocols), the same for every k so
  the k's compare; the k training ("observed") views are evenly spaced over the remaining frames in stored
  order (indices round(i (n - 1) / (k - 1)), i = 0 .. k - 1, of the n remaining frames, as LLFF few-shot
  protocols pick them). A scene with fewer than k remaining frames is skipped for that k and listed.
  (Blender's published few-shot splits pick specific frames; we use the same rule for every format.)
- Near / far (:func:`scene_bounds`): from the valid depth of the views the model may look at (the k
  training views; for zero-shot on a folder, every non-test view) as in pretraining
  (:func:`~renderssl.data.datasets.near_far`: 1st / 99th percentiles x 0.9 / 1.1); else the LLFF bounds
  of the scene (min near, max far over its ``poses_bounds.npy`` rows); else, for a Blender scene, the NeRF
  synthetic convention 2 .. 6; else an error naming the scene. The recipe then widens them (GNT's
  0.9 / 1.5, :meth:`~renderssl.methods.nps.NPS.bounds`).
- Fine-tuning (:func:`fine_tune`): a COPY of the pretrained method trained by its own objective
  (:meth:`NPS.forward`: ``rays_per_target`` random rays, stratified samples, MSE) on the k views only:
  per sample a random target among them and as sources the other k - 1 views' nearest
  min(k - 1, ``eval_source_views``) by camera centre; ``batch_size`` samples per step; Adam with the run's
  betas at constant learning rates (the run's ``optim.lr`` for the transformer, ``nps.feature_lr`` for the
  CNN as in pretraining; no warm-up or decay in so short a budget), ``steps`` steps (default 200). Measured
  for nps_tiny (64x48, 256 rays x 32 samples, 2 samples a step) on one thread of a loaded 2-core CPU (load
  5.3): 0.7 / 0.85 / 1.1 s a step for k = 3 / 6 / 10 and 4-7 s to render 2 held-out views, so one
  fine-tuning of 200 steps takes 2.5-4 min and the default table (k = 3, 6, 10; fine-tuned and scratch;
  one test scene, ``scenes`` = 1) about 20-25 min; ``--few-shot-steps`` trades budget for time. Dropout
  active, as in training.
- Inference (:func:`render_views`): every held-out view from its nearest min(k, ``eval_source_views``) of
  the k training views ("the same views from the finetuning stage as source views"), every pixel,
  deterministic samples (``render_image``), clamped to [0, 1].
- Compared, on the same views: ``fine_tuned``; ``zero_shot`` (the pretrained model as is); ``scratch``
  (the same architecture freshly initialised, seeded by ``seed``, fine-tuned identically: what per-scene
  training from scratch gives in that budget); ``nearest_training_view`` (the floor: the training view
  nearest the target copied, :func:`~renderssl.eval.novel_views.nearest_context`). PSNR / SSIM per image,
  means over the held-out images of all scenes; LPIPS when the recipe has weight files (NPS has none: n/a).
  Also each model's training loss on the k views before and after fine-tuning (fixed rays and samples,
  :func:`few_shot_loss`).
- Zero-shot on ``--scene`` (:func:`zero_shot_scene`): every held-out view from its nearest
  ``eval_source_views`` of all the other frames vs copying the nearest of them (``novel_views`` in
  evaluation.json, as the test-split evaluation; it replaces the run's test split).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..data.datasets import near_far
from ..data.types import ViewSet
from ..errors import InputError
from .camera_path import nearest_frames
from .metrics import psnr, ssim
from .novel_views import gather_views, nearest_context

TEST_EVERY = 8  # held-out test views: every 8th frame (LLFF's)
BLENDER_NEAR_FAR = (2.0, 6.0)  # NeRF synthetic's bounds (the NeRF / GNT Blender loaders)
FINE_TUNED, ZERO_SHOT, SCRATCH, FLOOR = "fine_tuned", "zero_shot", "scratch", "nearest_training_view"


@dataclass
class FewShotConfig:
    shots: tuple[int, ...] = (3, 6, 10)  # k observed views (NPS: LLFF 3 / 6 / 10, Blender 6 / 12)
    steps: int = 200  # fine-tuning steps per (scene, k, model)
    batch_size: int = 2  # samples (target + sources) per step
    lr: float | None = None  # transformer lr; None: the run's optim.lr (the CNN's scales with it)
    test_every: int = TEST_EVERY  # held-out test views: frames 0, 8, 16, ... (LLFF's)
    scenes: int = 1  # test-split scenes evaluated when no --scene is given
    scratch: bool = True  # also fine-tune a freshly initialised twin
    seed: int = 0

    def __post_init__(self):
        self.shots = tuple(int(k) for k in self.shots)
        if not self.shots or min(self.shots) < 2:
            raise InputError(f"few-shot: each k (--few-shot) must be >= 2 (a target and a source), got {list(self.shots)}")
        for name in ("steps", "batch_size", "test_every", "scenes"):
            if int(getattr(self, name)) < (0 if name == "steps" else 1):
                raise InputError(f"few-shot: {name} must be >= {0 if name == 'steps' else 1}, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"few-shot: lr must be > 0 or None, got {self.lr}")


def parse_shots(text: str) -> tuple[int, ...]:
    """``"3,6,10"`` -> (3, 6, 10) (the ``--few-shot`` option)."""
    try:
        shots = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise InputError(f"--few-shot: expected comma-separated view counts such as 3,6,10, got {text!r}") from None
    if not shots or min(shots) < 2:
        raise InputError(f"--few-shot: each view count must be >= 2, got {text!r}")
    return shots


# ---- views and bounds -----------------------------------------------------------------------------
def few_shot_views(num_frames: int, k: int, test_every: int = TEST_EVERY) -> tuple[Tensor, Tensor]:
    """(k,) training frame indices and (T,) held-out test frame indices of a scene of ``num_frames`` frames
    (module docstring): tests every ``test_every``-th frame from 0, training views evenly spaced over the rest."""
    if num_frames < 1 or k < 1 or test_every < 1:
        raise InputError(f"few_shot_views: need num_frames, k, test_every >= 1, got {num_frames}, {k}, {test_every}")
    test = torch.arange(0, num_frames, test_every)  # (T,)
    rest = torch.tensor([i for i in range(num_frames) if i % test_every], dtype=torch.long)  # (n,)
    n = len(rest)
    if k > n:
        raise InputError(f"few-shot: {k} training views wanted, but only {n} of the scene's {num_frames} frames are not "
                         f"test views (every {test_every}th)")
    pick = torch.zeros(1, dtype=torch.long) if k == 1 else (torch.arange(k) * (n - 1) + (k - 1) // 2) // (k - 1)  # (k,)
    return rest[pick], test


@dataclass
class EvalScene:
    """One evaluation scene wholly in memory at the model's size, and where its bounds can come from."""

    views: ViewSet
    format: str | None = None  # the reader's format of a folder scene (None: synthetic)
    llff_bounds: Tensor | None = None  # (V, 2) LLFF near / far rows

    @property
    def name(self) -> str:
        return self.views.name


def scene_bounds(scene: EvalScene, ids: Tensor) -> tuple[float, float, str]:
    """(near, far, where from) for the views ``ids`` of ``scene`` (module docstring)."""
    if scene.views.depth is not None:
        depth = scene.views.depth[ids]  # (n, 1, H, W)
        if bool((depth > 0).any()):
            near, far = near_far(depth, (0.0, 0.0))
            return float(near), float(far), "the views' depth"
    if scene.llff_bounds is not None:
        return float(scene.llff_bounds[:, 0].min()), float(scene.llff_bounds[:, 1].max()), "the LLFF bounds"
    if scene.format == "blender":
        return (*BLENDER_NEAR_FAR, "NeRF synthetic's 2..6 (Blender scene without depth)")
    raise InputError(f"few-shot: scene {scene.name!r} has no depth and no bounds (LLFF's poses_bounds.npy) to take near "
                     "and far from")


def native_bounds(scene) -> Tensor | None:
    """The LLFF ``near_far`` (V, 2) of an opened scene, looking through subsets and resizers."""
    while scene is not None:
        if getattr(scene, "near_far", None) is not None:
            return scene.near_far
        scene = getattr(scene, "scene", None)
    return None


def load_eval_scene(item, data, size: tuple[int, int]) -> EvalScene:
    """A scene folder path or a split's SceneRef, opened at ``size`` (H, W) by ``data.resize`` and loaded
    (frames that cannot be read skipped as the readers do, stopping past ``data.max_bad_fraction``)."""
    from ..data.build import scene_ref
    from ..data.formats import detect_format
    from ..data.scenes import Scene, SceneRef

    fmt = None
    if not isinstance(item, SceneRef):
        path = Path(item)
        fmt = detect_format(path)  # names the problem when the folder is no scene
        item = scene_ref(path, data)
    elif item.points:
        raise InputError(f"few-shot: {item.name} is a point cloud, not posed views")
    item = dataclasses.replace(item, size=tuple(size), resize=data.resize)
    opened = item.open()
    views = opened.load(data.max_bad_fraction) if isinstance(opened, Scene) else opened
    return EvalScene(views, fmt or scene_format(opened), native_bounds(opened))


def scene_format(scene) -> str | None:
    """The reader format of an opened folder scene (looking through subsets and resizers), None otherwise."""
    from ..data.formats.blender import BlenderScene
    from ..data.formats.llff import LLFFScene

    while scene is not None:
        if isinstance(scene, BlenderScene):
            return "blender"
        if isinstance(scene, LLFFScene):
            return "llff"
        scene = getattr(scene, "scene", None)
    return None


# ---- batches, fine-tuning, rendering --------------------------------------------------------------
def source_table(c2w: Tensor, count: int) -> Tensor:
    """(k, count) for each of k views (c2w (k, 4, 4)) the ``count`` nearest OTHER views by camera centre
    (ties: the lower index)."""
    dist = torch.cdist(c2w[:, :3, 3].double(), c2w[:, :3, 3].double())  # (k, k)
    dist.fill_diagonal_(float("inf"))
    return torch.sort(dist, dim=1, stable=True).indices[:, :count]  # (k, count)


def make_batch(views: ViewSet, targets: Tensor, sources: Tensor, near: float, far: float) -> dict:
    """A multi-view batch: per row b the frames sources[b] (B, C) then targets[b] (B,) of ``views``."""
    ids = torch.cat([sources, targets[:, None]], dim=1)  # (B, C + 1)
    B = len(ids)
    batch = {"rgb": views.rgb[ids], "K": views.K[ids].float(), "c2w": views.c2w[ids].float(),  # (B, C + 1, ...)
             "near": torch.full((B,), float(near)), "far": torch.full((B,), float(far))}
    if views.depth is not None:
        batch["depth"] = views.depth[ids]  # (B, C + 1, 1, H, W)
    return batch


def adam_for(method, lr: float, feature_lr: float, betas=(0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the CNN (``encoder.feature_net``) at ``feature_lr`` and everything else at ``lr``."""
    cnn = [p for n, p in method.named_parameters() if n.startswith("encoder.feature_net.")]
    rest = [p for n, p in method.named_parameters() if not n.startswith("encoder.feature_net.")]
    return torch.optim.Adam([{"params": rest, "lr": lr}, {"params": cnn, "lr": feature_lr}], betas=tuple(betas))


def fine_tune(method, views: ViewSet, train_ids: Tensor, near: float, far: float, steps: int, lr: float,
              feature_lr: float, batch_size: int = 2, seed: int = 0, betas=(0.9, 0.999)) -> list[float]:
    """Train ``method`` (in place; pass a copy) by its own objective on the views ``train_ids`` only (module
    docstring) for ``steps`` steps -> the loss of each step."""
    from ..methods.base import StepContext

    k = len(train_ids)
    if k < 2:
        raise InputError(f"fine_tune: need at least 2 training views (a target and a source), got {k}")
    count = min(k - 1, method.config.eval_source_views)
    table = train_ids[source_table(views.c2w[train_ids], count)]  # (k, C) frame indices
    generator = torch.Generator().manual_seed(seed)
    opt = adam_for(method, lr, feature_lr, betas)
    method.train()
    losses = []
    for step in range(steps):
        pick = torch.randint(0, k, (batch_size,), generator=generator)  # (B,)
        batch = make_batch(views, train_ids[pick], table[pick], near, far)
        out = method(batch, StepContext(generator, step + 1, steps))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    method.eval()
    return losses


@torch.no_grad()
def few_shot_loss(method, views: ViewSet, train_ids: Tensor, near: float, far: float, seed: int = 0) -> float:
    """The method's loss (eval mode) with each training view once as the target of its nearest
    min(k - 1, eval_source_views) others, rays and samples drawn from a generator seeded by ``seed``."""
    from ..methods.base import StepContext

    was_training = method.training
    method.eval()
    count = min(len(train_ids) - 1, method.config.eval_source_views)
    table = train_ids[source_table(views.c2w[train_ids], count)]  # (k, C)
    loss = float(method(make_batch(views, train_ids, table, near, far), StepContext(torch.Generator().manual_seed(seed))).loss)
    method.train(was_training)
    return loss


@torch.no_grad()
def render_views(method, views: ViewSet, source_ids: Tensor, target_ids: Tensor, near: float, far: float,
                 batch: int = 4) -> Tensor:
    """(T, 3, H, W) in [0, 1]: each target frame rendered from its nearest min(|sources|, eval_source_views)
    frames among ``source_ids`` (every pixel, deterministic samples)."""
    method.eval()
    count = min(len(source_ids), method.config.eval_source_views)
    table = source_ids[nearest_frames(views.c2w[source_ids], views.c2w[target_ids], count)]  # (T, C)
    out = []
    for start in range(0, len(target_ids), batch):
        b = make_batch(views, target_ids[start:start + batch], table[start:start + batch], near, far)
        lo, hi = method.bounds(b)  # (b,) widened as in training
        sources = method.encoder.encode_sources(b["rgb"][:, :-1], b["K"][:, :-1], b["c2w"][:, :-1])
        rgb, _ = method.encoder.render_image(sources, b["K"][:, -1], b["c2w"][:, -1], lo, hi, method.config.num_samples,
                                             method.config.eval_chunk)  # (b, 3, H, W)
        out.append(rgb.clamp(0, 1))
    return torch.cat(out)


def nearest_copy(views: ViewSet, source_ids: Tensor, target_ids: Tensor) -> Tensor:
    """(T, 3, H, W): for each target the frame among ``source_ids`` nearest it (the floor)."""
    index = nearest_context(views.c2w[source_ids][None], views.c2w[target_ids][None])  # (1, T)
    return gather_views(views.rgb[source_ids][None], index)[0]  # (T, 3, H, W)


def image_scores(pred: Tensor, truth: Tensor, lpips=None) -> dict[str, Tensor]:
    """Per-image {psnr, ssim[, lpips]} (N,) of pred and truth (N, 3, H, W)."""
    scores = {"psnr": psnr(pred, truth), "ssim": ssim(pred, truth)}
    if lpips is not None:
        scores["lpips"] = lpips(pred, truth)
    return scores


class Sums:
    """Running sums of per-image scores per name; means over images."""

    def __init__(self):
        self.sums: dict[str, dict[str, float]] = {}
        self.images = 0

    def add(self, name: str, scores: dict[str, Tensor]) -> None:
        target = self.sums.setdefault(name, {})
        for metric, values in scores.items():
            target[metric] = target.get(metric, 0.0) + float(values.double().sum())

    def means(self, name: str) -> dict[str, float]:
        return {m: v / self.images for m, v in self.sums.get(name, {}).items()} if self.images else {}


# ---- the evaluations ------------------------------------------------------------------------------
@torch.no_grad()
def zero_shot_scene(method, scene: EvalScene, test_every: int = TEST_EVERY, lpips=None) -> tuple[dict, dict[str, list[Tensor]]]:
    """Zero-shot novel views of one scene (module docstring) -> {model, nearest_context_view: {metric: mean},
    images, scenes, test_views, near_far} and example rows (target, rendering, nearest view)."""
    from .novel_views import FLOOR as NV_FLOOR, MODEL

    n = len(scene.views)
    test = torch.arange(0, n, test_every)  # (T,)
    others = torch.tensor([i for i in range(n) if i % test_every], dtype=torch.long)
    if len(others) < 1:
        raise InputError(f"evaluate --scene: {scene.name!r} has {n} frame(s); at least 2 are needed (a test view and a source)")
    near, far, where = scene_bounds(scene, others)
    rendering = render_views(method, scene.views, others, test, near, far)  # (T, 3, H, W)
    nearest = nearest_copy(scene.views, others, test)
    truth = scene.views.rgb[test]
    sums = Sums()
    sums.images = len(test)
    sums.add(MODEL, image_scores(rendering, truth, lpips))
    sums.add(NV_FLOOR, image_scores(nearest, truth, lpips))
    result = {MODEL: sums.means(MODEL), NV_FLOOR: sums.means(NV_FLOOR), "scenes": 1, "images": len(test),
              "test_views": test.tolist(), "near_far": [near, far], "near_far_from": where,
              "context_views": min(len(others), method.config.eval_source_views)}
    rows = {"target": list(truth[:4]), "rendering": list(rendering[:4]), "nearest view": list(nearest[:4])}
    return result, rows


def evaluate_few_shot(method, scenes: list[EvalScene], config: FewShotConfig, lr: float, feature_lr: float,
                      betas=(0.9, 0.999), lpips=None, log=print) -> dict:
    """For each k of ``config.shots`` and each scene: the few-shot protocol of the module docstring ->
    {"k": {str(k): {fine_tuned, zero_shot, scratch, nearest_training_view: {metric: mean}, images, scenes,
    views, train_loss, seconds}}, "skipped": [...], settings}; one log line per k."""
    result = {"steps": config.steps, "batch_size": config.batch_size, "lr": lr, "feature_lr": feature_lr,
              "test_every": config.test_every, "scenes": [s.name for s in scenes], "k": {}, "skipped": []}
    for k in config.shots:
        start = time.perf_counter()
        sums, per_scene, losses = Sums(), {}, {FINE_TUNED: [], SCRATCH: []}
        for scene in scenes:
            try:
                train_ids, test_ids = few_shot_views(len(scene.views), k, config.test_every)
            except InputError as err:
                result["skipped"].append(f"k={k}, {scene.name}: {err}")
                continue
            near, far, where = scene_bounds(scene, train_ids)
            truth = scene.views.rgb[test_ids]  # (T, 3, H, W)
            sums.images += len(test_ids)
            sums.add(FLOOR, image_scores(nearest_copy(scene.views, train_ids, test_ids), truth, lpips))
            sums.add(ZERO_SHOT, image_scores(render_views(method, scene.views, train_ids, test_ids, near, far), truth, lpips))
            models = [(FINE_TUNED, copy.deepcopy(method))]
            if config.scratch:
                with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
                    torch.manual_seed(config.seed)
                    models.append((SCRATCH, type(method)(method.config)))
            for name, model in models:
                before = few_shot_loss(model, scene.views, train_ids, near, far, config.seed)
                fine_tune(model, scene.views, train_ids, near, far, config.steps, lr, feature_lr, config.batch_size,
                          config.seed, betas)
                losses[name].append([before, few_shot_loss(model, scene.views, train_ids, near, far, config.seed)])
                sums.add(name, image_scores(render_views(model, scene.views, train_ids, test_ids, near, far), truth, lpips))
                del model
            per_scene[scene.name] = {"train_views": train_ids.tolist(), "test_views": test_ids.tolist(),
                                     "near_far": [near, far], "near_far_from": where}
        if not per_scene:
            log(f"few-shot k={k}: no scene has enough frames (skipped)")
            continue
        entry = {name: sums.means(name) for name in (FINE_TUNED, ZERO_SHOT, SCRATCH, FLOOR) if name in sums.sums}
        entry.update(images=sums.images, scenes=len(per_scene), source_views=min(k, method.config.eval_source_views),
                     views=per_scene, train_loss={n: v for n, v in losses.items() if v},
                     seconds=round(time.perf_counter() - start, 1))
        result["k"][str(k)] = entry
        log(format_few_shot_line(k, entry, config.steps))
    return result


def format_few_shot_line(k: int, entry: dict, steps: int) -> str:
    """``few-shot k=3 (2 scenes, 4 held-out views, 200 steps): PSNR fine-tuned 18.20 / zero-shot ... dB; SSIM ...``."""
    names = [n for n in (FINE_TUNED, ZERO_SHOT, SCRATCH, FLOOR) if n in entry]
    words = {FINE_TUNED: "fine-tuned", ZERO_SHOT: "zero-shot", SCRATCH: "scratch", FLOOR: "nearest training view"}
    parts = []
    for metric, digits, unit in (("psnr", 2, " dB"), ("ssim", 3, ""), ("lpips", 4, "")):
        if metric in entry[names[0]]:
            values = " / ".join(f"{entry[n][metric]:.{digits}f}" for n in names)
            parts.append(f"{metric.upper()} {values}{unit}")
    return (f"few-shot k={k} ({entry['scenes']} scene(s), {entry['images']} held-out views, {steps} steps; "
            f"{' / '.join(words[n] for n in names)}): " + "; ".join(parts))


# ---- renderssl evaluate -------------------------------------------------------------------------------
def evaluate_nps_run(run_dir, cfg, method, split: str, max_scenes: int, log, overrides, batch: int = 16,
                     scene=None, few_shot: FewShotConfig | None = None, video: bool = False,
                     video_frames: int | None = None) -> dict:
    """``renderssl evaluate`` of an NPS run with ``--scene`` / ``--few-shot`` / ``--video``: zero-shot novel
    views (the test split's, or ``scene``'s), then the few-shot table and the camera path; evaluation.json."""
    from ..data.build import load_split
    from ..evaluate import SPLIT_KEYS, data_overrides, empty_split, evaluate_novel_view_run, model_size
    from ..viz import save_grid
    from .camera_path import MAX_FRAMES, MP4_NEEDS, PER_PAIR, camera_path, render_camera_path, write_gif, write_mp4
    from .novel_views import FLOOR as NV_FLOOR, MODEL, format_comparison, lpips_or_reason

    run_dir = Path(run_dir)
    H, W = model_size(cfg)
    changed = data_overrides(run_dir, overrides, cfg.method, method.evaluation_fields)
    if changed is not None:
        fields = {name: getattr(changed.recipe, name) for name in method.evaluation_fields}
        method.config = dataclasses.replace(method.config, **fields)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(changed.data, height=H, width=W),
                                  recipe=dataclasses.replace(cfg.recipe, **fields))
    lpips, no_lpips = lpips_or_reason(getattr(cfg.recipe, "lpips_weights", None), f"{cfg.method}.lpips_weights", (H, W))

    loaded: dict[int, list[EvalScene]] = {}  # each count's scenes loaded once

    def scene_list(count: int) -> list[EvalScene]:
        if count not in loaded:
            loaded[count] = load_scenes(count)
        return loaded[count]

    def load_scenes(count: int) -> list[EvalScene]:
        if scene is not None:
            return [load_eval_scene(scene, cfg.data, (H, W))]
        refs = load_split(cfg.data, split)
        if not refs:
            raise empty_split(cfg, split, f" ({SPLIT_KEYS[split]}={getattr(cfg.data, SPLIT_KEYS[split][5:])})")
        out, problems = [], []
        for ref in refs:
            if len(out) == count:
                break
            try:
                out.append(load_eval_scene(ref, cfg.data, (H, W)))
            except InputError as err:
                problems.append(str(err))
        if not out:
            raise InputError(f"evaluate: no readable scene among the {split} scenes: " + "; ".join(problems[:3]))
        return out

    test_every = few_shot.test_every if few_shot is not None else TEST_EVERY
    if scene is None:
        result = evaluate_novel_view_run(run_dir, cfg, method, split, max_scenes, log, (), batch)
    else:
        evaluation_scene = scene_list(1)[0]
        log(f"evaluate: {cfg.method} zero-shot novel views on {scene} ({evaluation_scene.format}, {len(evaluation_scene.views)} "
            f"frames brought to {W}x{H} by data.resize={cfg.data.resize}): every {test_every}th frame held out, "
            f"each rendered from its {method.config.eval_source_views} nearest other frames")
        scores, rows = zero_shot_scene(method, evaluation_scene, test_every, lpips)
        for metric in ("psnr", "ssim", "lpips"):
            if metric in scores[MODEL]:
                log("  " + format_comparison(metric, scores[MODEL][metric], scores[NV_FLOOR][metric]))
            else:
                log(f"  LPIPS: n/a ({no_lpips})")
        result = {"method": cfg.method, "scene": str(scene), "resolution": [H, W], "resize": cfg.data.resize,
                  "novel_views": scores, "skipped": list(getattr(evaluation_scene.views, "skipped", []) or [])}
        picture = save_grid(list(rows.values()), run_dir / "evaluation.png", scale=2)
        log(f"wrote {picture} (rows: {', '.join(rows)})")
    if few_shot is not None:
        scenes = scene_list(few_shot.scenes)
        lr = few_shot.lr if few_shot.lr is not None else float(cfg.optim.lr)
        feature_lr = lr * (method.config.feature_lr / float(cfg.optim.lr)) if method.config.feature_lr else lr
        log(f"few-shot NVS (NPS Sec. 4.1.3) on {', '.join(s.name for s in scenes)}: k = {list(few_shot.shots)} training views, "
            f"every {few_shot.test_every}th frame held out; {few_shot.steps} Adam steps (lr {lr:g}, CNN {feature_lr:g}) each")
        result["few_shot"] = evaluate_few_shot(method, scenes, few_shot, lr, feature_lr, tuple(getattr(cfg.optim, "betas", (0.9, 0.999))),
                                               lpips, log)
        if no_lpips is not None:
            result["few_shot"]["lpips"] = f"n/a ({no_lpips})"
    if video:
        path_scene = scene_list(1)[0]
        views = path_scene.views
        near, far, _ = scene_bounds(path_scene, torch.arange(len(views)))
        lo, hi = method.bounds({"near": torch.tensor([near]), "far": torch.tensor([far])})
        path_c2w, path_K, keys = camera_path(views.c2w.double(), views.K.double(), PER_PAIR, video_frames or MAX_FRAMES)
        start = time.perf_counter()
        frames = render_camera_path(method.encoder.eval(), views.rgb, views.K, views.c2w, path_K.float(), path_c2w.float(),
                                    float(lo[0]), float(hi[0]), method.config.eval_source_views, method.config.num_samples,
                                    method.config.eval_chunk)
        gif = write_gif(frames, run_dir / "path.gif")
        mp4 = write_mp4(frames, run_dir / "path.mp4")
        result["video"] = {"scene": path_scene.name, "frames": len(frames), "keyframes": keys.tolist(), "per_pair": PER_PAIR,
                           "gif": str(gif), "mp4": str(mp4) if mp4 else f"n/a ({MP4_NEEDS})",
                           "seconds": round(time.perf_counter() - start, 1)}
        log(f"wrote {gif} ({len(frames)} frames through {len(keys)} frames of {path_scene.name}, each from its "
            f"{min(method.config.eval_source_views, len(views))} nearest frames)" + (f" and {mp4}" if mp4 else f"; {MP4_NEEDS}"))
    (run_dir / "evaluation.json").write_text(json.dumps(result, indent=2))
    log(f"wrote {run_dir / 'evaluation.json'}")
    return result


__all__ = ["EvalScene", "FewShotConfig", "evaluate_few_shot", "evaluate_nps_run", "few_shot_loss", "few_shot_views", "fine_tune",
           "load_eval_scene", "parse_shots", "render_views", "scene_bounds", "zero_shot_scene"]
