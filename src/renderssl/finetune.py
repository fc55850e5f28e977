"""``renderssl finetune``: transfer an exported encoder (or the same architecture from scratch) to a
downstream task on held-out scenes, with the identical budget for both.

Choices:

* Any of the four export architectures goes in: an encoder folder (``renderssl export``), its
  ``encoder.json`` / weights, or a ``renderssl pretrain`` run folder (standing for its ``encoder/``).
* The task family follows the encoder (:mod:`renderssl.eval.tasks`): without ``downstream.task`` an
  image encoder (ViT, ResNet) runs ``segmentation`` and a point encoder (SparseUNet, PointNet++)
  ``segmentation3d``; a task of the other family is a one-line :class:`InputError` naming the task and
  the encoder.
* For a point encoder without ``downstream.points.features``, the features are the ones giving its
  ``in_channels`` (3: ``color``, 6: ``color_normal``); other channel counts keep the default, and the
  3D task reports the mismatch.
* The scratch baseline rebuilds the encoder's architecture and config with fresh weights; the caller
  seeds its initialisation (:func:`renderssl.eval.transfer.run_on_splits` does, per seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import InputError
from .eval.tasks import DownstreamConfig, architecture_family, check_task_fits, default_task, features_for_channels
from .eval.transfer import compare_with_scratch, run_downstream
from .export import build_encoder, load_encoder, read_encoder_info
from .models.weights import META_NAME
from .train.config import DataConfig


def resolve_encoder(path) -> Path:
    """A run folder stands for its exported ``encoder/``; other paths are returned as they are."""
    path = Path(path)
    return path / "encoder" if (path / "encoder" / META_NAME).is_file() else path


def encoder_architecture(path) -> str:
    """The architecture recorded in the export at ``path`` (folder, json, weights or run folder)."""
    return read_encoder_info(resolve_encoder(path))["architecture"]


def encoder_factory(path, scratch: bool = False):
    """A callable returning a fresh copy of the exported encoder at ``path``, or, with ``scratch``, a
    freshly initialised encoder of the same architecture (the caller seeds the initialisation)."""
    path = resolve_encoder(path)
    info = read_encoder_info(path)

    def make() -> torch.nn.Module:
        if scratch:
            return build_encoder(info["architecture"], info["config"])
        return load_encoder(path).train()

    return make


def architecture_factory(spec: str, **fields):
    """A callable returning a freshly initialised encoder from ``"<architecture>[:<preset>][:key=value...]"``
    (e.g. ``sparse_unet:small``, ``pointnet2:scene``, ``sparse_unet:small:grid_size=0.05``; values are
    YAML) and extra config fields (the spec's own ``key=value`` win)."""
    import yaml

    architecture, *parts = spec.split(":")
    config = dict(fields)
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            config["preset"] = part
        elif key:
            config[key] = yaml.safe_load(value)
        else:
            raise InputError(f"encoder spec {spec!r}: expected key=value, got {part!r}")
    build_encoder(architecture, config)  # fail now, naming the spec, not in the middle of a comparison

    def make() -> torch.nn.Module:
        return build_encoder(architecture, config)

    return make


def data_config_of(path, **overrides) -> DataConfig:
    """The pretraining data config stored with an exported encoder (so the downstream splits are the
    same scenes: fine-tuning on the train split, scoring on the test split), with overrides."""
    from .train.config import from_dict

    data = dict((read_encoder_info(resolve_encoder(path)).get("pretraining") or {}).get("data") or {})
    data.update(overrides)
    return from_dict(DataConfig, data)


def downstream_config_for(path, overrides: dict | None = None) -> DownstreamConfig:
    """The downstream config of ``overrides`` (a ``downstream`` section) with the task, and for point
    encoders the input features, taken from the encoder at ``path`` where the section leaves them out."""
    from .train.config import from_dict

    info = read_encoder_info(resolve_encoder(path))
    architecture = info["architecture"]
    section = dict(overrides or {})
    section.setdefault("task", default_task(architecture))
    if architecture_family(architecture) == "points":
        points = section.get("points", {})
        features = features_for_channels(info["config"].get("in_channels"))
        if isinstance(points, dict) and "features" not in points and features is not None:
            section["points"] = {**points, "features": features}
    cfg = from_dict(DownstreamConfig, section, "downstream")
    check_task_fits(cfg.task, architecture, str(path))
    return cfg


def run_finetune(encoder_path, data_cfg: DataConfig, cfg: DownstreamConfig, scratch: bool = False) -> dict:
    check_task_fits(cfg.task, encoder_architecture(encoder_path), str(encoder_path))
    return run_downstream(encoder_factory(encoder_path, scratch), data_cfg, cfg)


def run_comparison(encoder_path, data_cfg: DataConfig, cfg: DownstreamConfig, seeds=(0, 1, 2)) -> dict:
    check_task_fits(cfg.task, encoder_architecture(encoder_path), str(encoder_path))
    return compare_with_scratch(encoder_factory(encoder_path), encoder_factory(encoder_path, scratch=True), data_cfg, cfg, seeds)


def save_json(result: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return path
