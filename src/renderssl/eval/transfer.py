"""Downstream runs on data splits, for any task: pick the label subset, build the encoder, and hand it
to the trainer of the task's family; and the pretrained-vs-scratch comparison.

Design choices
--------------
Dispatch (:func:`run_on_splits`)
  The task's family (:func:`~renderssl.eval.tasks.task_family`) picks the trainer and the scorer:
  ``image`` tasks :func:`~renderssl.eval.downstream.train_downstream` /
  :func:`~renderssl.eval.downstream.evaluate_downstream`, ``points`` tasks
  :func:`~renderssl.eval.segmentation3d.train_point_segmentation` /
  :func:`~renderssl.eval.segmentation3d.evaluate_point_segmentation`, ``views`` tasks (NPS)
  :func:`~renderssl.eval.view_tasks.train_view_task` / :func:`~renderssl.eval.view_tasks.evaluate_view_task`.
  This module is the only one that imports the trainers; they import neither each other nor this
  module. An encoder of one of the export architectures is checked against the task's family before
  training (a one-line :class:`InputError` naming both); other modules are passed through as they are.
Splits (:func:`run_on_splits`, :func:`run_downstream`)
  Train on ``select_label_fraction(train split, label_fraction, seed)`` and score on the TEST split
  only; :func:`~renderssl.eval.splits.check_disjoint_scenes` raises if a scene name is in both (or a
  name is missing). The encoder factory is called under ``fork_rng`` seeded with ``cfg.seed``, so a
  scratch encoder's initialisation is deterministic too and differs between seeds; the global RNG is
  left as it was.
Scratch comparison (:func:`compare_with_scratch`)
  Pretrained and scratch runs share splits, label subset, head init, batches and budget per seed; the
  summary gives per-seed metrics and the mean and sample standard deviation (ddof 1; 0 for one seed)
  of every scalar metric, and ``delta`` = pretrained mean - scratch mean.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Callable

import torch
from torch import nn

from ..data.build import load_split
from ..data.scenes import SceneCache
from ..errors import InputError
from ..export import ARCHITECTURES
from ..train.config import DataConfig
from .downstream import evaluate_downstream, train_downstream
from .segmentation3d import evaluate_point_segmentation, train_point_segmentation
from .splits import check_disjoint_scenes, select_label_fraction
from .tasks import DownstreamConfig, check_task_fits, task_family
from .view_tasks import evaluate_view_task, train_view_task

EncoderFactory = Callable[[], nn.Module]
TRAINERS = {  # task family -> (train(encoder, train scenes, cfg) -> model, evaluate(model, test scenes, cfg) -> metrics)
    "image": (train_downstream, evaluate_downstream),
    "points": (train_point_segmentation, evaluate_point_segmentation),
    "views": (train_view_task, evaluate_view_task),
}


def architecture_of(encoder: nn.Module) -> str | None:
    """The export architecture whose model class ``encoder`` is (None for other modules)."""
    return next((name for name, (_, cls) in ARCHITECTURES.items() if isinstance(encoder, cls)), None)


def run_downstream(encoder_factory: EncoderFactory, data_cfg: DataConfig, cfg: DownstreamConfig) -> dict:
    """Train on a label fraction of the train split, score on the test split.

    Returns ``{"metrics": {...}, "train_scenes": [names], "test_scenes": [names], "task", "mode", "seed"}``.
    """
    train_all, test = load_split(data_cfg, "train"), load_split(data_cfg, "test")
    return run_on_splits(encoder_factory, train_all, test, cfg)


def run_on_splits(encoder_factory: EncoderFactory, train_all: list, test: list, cfg: DownstreamConfig,
                  cache: SceneCache | None = None) -> dict:
    """:func:`run_downstream` on given train and test scenes (ViewSets, PointClouds or references).
    ``cache``: decoded frames shared by the runs of a comparison (image and view tasks), so each is decoded once."""
    check_disjoint_scenes(train_all, test)
    train = select_label_fraction(train_all, cfg.label_fraction, cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        encoder = encoder_factory()
    architecture = architecture_of(encoder)
    if architecture is not None:
        check_task_fits(cfg.task, architecture, type(encoder).__name__)
    family = task_family(cfg.task)
    train_fn, evaluate_fn = TRAINERS[family]
    if family in ("image", "views") and cache is not None:
        train_fn, evaluate_fn = partial(train_fn, cache=cache), partial(evaluate_fn, cache=cache)
    metrics = evaluate_fn(train_fn(encoder, train, cfg), test, cfg)
    return {
        "metrics": metrics,
        "train_scenes": [v.name for v in train],
        "test_scenes": [v.name for v in test],
        "task": cfg.task, "mode": cfg.mode, "seed": cfg.seed,
    }


def compare_with_scratch(pretrained_factory: EncoderFactory, scratch_factory: EncoderFactory, data_cfg: DataConfig,
                         cfg: DownstreamConfig, seeds=(0, 1, 2)) -> dict:
    """Both encoders under the same splits, label subsets, budget and seeds.

    Returns ``{"seeds": [...], "pretrained": summary, "scratch": summary, "delta": {metric: mean
    difference}}`` with ``summary = {"runs": [run_downstream result per seed], "mean": {...}, "std": {...}}``.
    """
    if not seeds:
        raise InputError("compare_with_scratch: give at least one seed")
    train_all, test = load_split(data_cfg, "train"), load_split(data_cfg, "test")
    out, cache = {"seeds": list(seeds)}, SceneCache(data_cfg.cache_scenes, data_cfg.cache_mb)
    for label, factory in (("pretrained", pretrained_factory), ("scratch", scratch_factory)):
        runs = [run_on_splits(factory, train_all, test, with_seed(cfg, s), cache) for s in seeds]
        out[label] = summarise_runs(runs)
    out["delta"] = {k: out["pretrained"]["mean"][k] - out["scratch"]["mean"][k] for k in out["pretrained"]["mean"]}
    return out


def with_seed(cfg: DownstreamConfig, seed: int) -> DownstreamConfig:
    new = copy.copy(cfg)
    new.seed = int(seed)
    return new


def summarise_runs(runs: list[dict]) -> dict:
    """Mean and sample std (ddof 1; 0 for one run) of every scalar metric over runs."""
    keys = [k for k, v in runs[0]["metrics"].items() if isinstance(v, float)]  # counts are ints, iou a list
    values = {k: torch.tensor([r["metrics"][k] for r in runs], dtype=torch.float64) for k in keys}  # (runs,) each
    return {
        "runs": runs,
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std()) if v.numel() > 1 else 0.0 for k, v in values.items()},
    }


__all__ = [
    "EncoderFactory", "architecture_of", "compare_with_scratch", "run_downstream", "run_on_splits", "summarise_runs",
    "with_seed",
]
