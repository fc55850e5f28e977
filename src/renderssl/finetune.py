"""``renderssl finetune``: transfer an exported encoder (or the same architecture from scratch) to a
downstream task on held-out scenes, with the identical budget for both."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import InputError
from .eval.downstream import DownstreamConfig, compare_with_scratch, run_downstream
from .export import build_encoder, load_encoder, read_encoder_info
from .train.config import DataConfig


def encoder_factory(path, scratch: bool = False):
    """A callable returning a fresh copy of the exported encoder at ``path``, or, with ``scratch``, a
    freshly initialised encoder of the same architecture (the caller seeds the initialisation)."""
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

    data = dict(read_encoder_info(path).get("pretraining", {}).get("data") or {})
    data.update(overrides)
    return from_dict(DataConfig, data)


def run_finetune(encoder_path, data_cfg: DataConfig, cfg: DownstreamConfig, scratch: bool = False) -> dict:
    return run_downstream(encoder_factory(encoder_path, scratch), data_cfg, cfg)


def run_comparison(encoder_path, data_cfg: DataConfig, cfg: DownstreamConfig, seeds=(0, 1, 2)) -> dict:
    return compare_with_scratch(encoder_factory(encoder_path), encoder_factory(encoder_path, scratch=True), data_cfg, cfg, seeds)


def save_json(result: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return path
