"""Export and load pretrained encoders (the product of pretraining).

An export is a folder holding

* ``encoder.safetensors``: the encoder's state dict under timm (ViT) / torchvision (ResNet) / Pointcept
  (SparseUNet, spconv 2.x weight layout) / yanx27 PointNet++ key names, no ``encoder.`` prefix and
  nothing of the pretext heads or renderers;
* ``encoder.json``: ``{"format": "renderssl-encoder", "version": 1, "architecture": "vit"|"resnet"|
  "sparse_unet"|"pointnet2", "config": {<all dataclass fields>}, "weights": "encoder.safetensors",
  "timm_model"|"torchvision_model"|"pointcept_model"|"reference_model": <name or null>, "pretraining":
  {<free-form caller metadata>}}``.

Choices:

* :func:`export_encoder` checks that ``config`` rebuilds a model with exactly the encoder's keys and
  shapes (built on the meta device, so no memory or init cost) before writing anything, so every export
  loads back. Files are written to a temporary name and renamed, weights first, so a folder with an
  ``encoder.json`` always holds complete weights.
* The name hint is the timm / torchvision model whose state dict has the same keys and shapes:
  ``timm.create_model(hint, num_classes=0)`` for a ViT; ``torchvision.models.<hint>()`` for a ResNet
  (with ``num_classes=0`` replace its ``fc`` by ``nn.Identity()`` first, or pass ``num_classes=N``);
  Pointcept's ``SpUNet-v1m1`` with ``num_classes=0`` for a base-preset SparseUNet (any ``in_channels``);
  yanx27's ``pointnet2_sem_seg`` without its ``conv1/bn1/conv2`` head for an ``ssg`` PointNet++ with
  its 9 input channels.
  It is null when no such model exists (other image/patch size, widths, input channels).
* :func:`load_encoder` returns the model in ``eval()`` mode (frozen-feature use is the common case;
  call ``.train()`` to fine-tune).
* Weight files are read with ``safetensors`` or ``torch.load(weights_only=True)`` only: a checkpoint is
  never allowed to run code.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import InputError
from .models.weights import (
    ARCHITECTURE_NAMES, FORMAT, META_NAME, VERSION, WEIGHTS_NAME, encoder_state_from_checkpoint, load_state_dict_file,
    read_encoder_info, state_dict_mismatch,
)
from .models.encoders.resnet import ResNet, ResNetConfig
from .models.encoders.pointnet2 import PRESETS as POINTNET2_PRESETS
from .models.encoders.pointnet2 import PointNet2, PointNet2Config
from .models.encoders.sparse_unet import PRESETS as SPARSE_UNET_PRESETS
from .models.encoders.sparse_unet import SparseUNet, SparseUNetConfig
from .models.encoders.vit import PRESETS as VIT_PRESETS
from .models.encoders.vit import ViTConfig, VisionTransformer
from .models.nerf.generalizable_nerf import GeneralizableNeRF, GeneralizableNeRFConfig
from .typed_config import from_dict

ARCHITECTURES = {
    "vit": (ViTConfig, VisionTransformer),
    "resnet": (ResNetConfig, ResNet),
    "sparse_unet": (SparseUNetConfig, SparseUNet),
    "pointnet2": (PointNet2Config, PointNet2),
    "nerf_transformer": (GeneralizableNeRFConfig, GeneralizableNeRF),  # NPS: CNN features + GNT trunk
}
POINT_ARCHITECTURES = ("sparse_unet", "pointnet2")
VIEW_ARCHITECTURES = ("nerf_transformer",)  # render target rays from posed source views
assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES  # the names models.weights accepts in an encoder.json

# (preset, patch size, square image size) of timm's ViTs (sin-cos/learned pos embed have the same shape)
TIMM_VITS = {
    ("tiny", 16, 224), ("tiny", 16, 384),
    ("small", 8, 224), ("small", 16, 224), ("small", 16, 384), ("small", 32, 224), ("small", 32, 384),
    ("base", 8, 224), ("base", 16, 224), ("base", 16, 384), ("base", 32, 224), ("base", 32, 384),
    ("large", 16, 224), ("large", 16, 384), ("large", 32, 224), ("large", 32, 384),
}


# ---- building -------------------------------------------------------------------------------------


def make_config(architecture: str, config):
    """The config dataclass of ``architecture`` from a dict (or an instance); unknown keys are errors."""
    if architecture not in ARCHITECTURES:
        raise InputError(f"architecture: {architecture!r} is not one of {list(ARCHITECTURES)}")
    cls = ARCHITECTURES[architecture][0]
    if isinstance(config, cls):
        return dataclasses.replace(config)  # a copy, re-validated
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        raise InputError(f"{architecture} config: expected a {cls.__name__} or a dict, got {type(config).__name__}")
    if not isinstance(config, Mapping):
        raise InputError(f"{architecture} config: expected a mapping of {cls.__name__} fields, got {config!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise InputError(f"{architecture} config: unknown field(s) {unknown}; {cls.__name__} has {sorted(names)}")
    try:
        return from_dict(cls, dict(config), architecture)  # nested configs (nerf_transformer) from their dicts
    except TypeError as e:  # e.g. a value of a type the validation cannot compare
        raise InputError(f"{architecture} config: {e}") from e


def build_encoder(architecture: str, config) -> nn.Module:
    """A freshly initialised encoder of ``architecture`` (a key of ARCHITECTURES) from its config (dict or dataclass)."""
    cfg = make_config(architecture, config)
    return ARCHITECTURES[architecture][1](cfg)


def model_name_hint(architecture: str, config) -> tuple[str, str | None]:
    """(json key, name) of the timm / torchvision / Pointcept / reference model with the same state dict
    keys and shapes, or None."""
    cfg = make_config(architecture, config)
    if architecture == "sparse_unet":
        base = all(getattr(cfg, k) == v for k, v in SPARSE_UNET_PRESETS["base"].items())
        return "pointcept_model", "SpUNet-v1m1" if base else None
    if architecture == "pointnet2":
        ssg = all(getattr(cfg, k) == v for k, v in POINTNET2_PRESETS["ssg"].items())  # its sa1 takes 9 + 3 inputs
        return "reference_model", "yanx27/Pointnet_Pointnet2_pytorch pointnet2_sem_seg" if ssg and not cfg.fp1_skip else None
    if architecture == "resnet":
        return "torchvision_model", cfg.torchvision_name if cfg.in_chans == 3 else None
    if architecture == "nerf_transformer":  # GNT's layout with our module names (models/nerf/transformer.py)
        return "reference_model", None
    preset = next(
        (p for p, dims in VIT_PRESETS.items() if all(getattr(cfg, k) == v for k, v in dims.items())), None
    )
    H, W = cfg.img_size
    timm_like = cfg.in_chans == 3 and cfg.mlp_ratio == 4.0 and cfg.qkv_bias and H == W
    if timm_like and (preset, cfg.patch_size, H) in TIMM_VITS:
        return "timm_model", f"vit_{preset}_patch{cfg.patch_size}_{H}"
    return "timm_model", None


# ---- export ---------------------------------------------------------------------------------------


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def export_encoder(encoder: nn.Module, architecture: str, config, out_dir, pretraining: dict | None = None) -> Path:
    """Write ``out_dir/encoder.safetensors`` and ``out_dir/encoder.json``; returns ``out_dir``.

    ``config`` is the encoder's config (dict of dataclass fields, or the dataclass itself); it must
    describe ``encoder`` exactly (checked). ``pretraining`` is free-form JSON metadata (method, steps,
    data, ...) stored as is; values JSON cannot hold are written as strings.
    """
    from safetensors.torch import save_file

    cfg = make_config(architecture, config)
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    with torch.device("meta"):
        expected = ARCHITECTURES[architecture][1](cfg).state_dict()  # shapes only: no memory, no init cost
    problem = state_dict_mismatch(expected, state)
    if problem:
        raise InputError(f"export_encoder: the {architecture} config {dataclasses.asdict(cfg)} does not describe this encoder: {problem}")
    hint_key, hint = model_name_hint(architecture, cfg)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture,
        "config": dataclasses.asdict(cfg),
        "weights": WEIGHTS_NAME,
        hint_key: hint,
        "pretraining": dict(pretraining or {}),
    }
    text = json.dumps(meta, indent=2, default=str) + "\n"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    file_meta = {"format": FORMAT, "version": str(VERSION), "architecture": architecture}
    _atomic_write(out_dir / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata=file_meta))
    _atomic_write(out_dir / META_NAME, lambda p: p.write_text(text))
    return out_dir


# ---- load -----------------------------------------------------------------------------------------


def load_encoder(path) -> nn.Module:
    """Rebuild an exported encoder (``path`` = folder, ``encoder.json`` or the weights) and load its
    weights strictly. Returns the model in ``eval()`` mode."""
    meta = read_encoder_info(path)
    meta_path = Path(meta["_path"])
    try:
        model = build_encoder(meta["architecture"], meta["config"])
    except InputError as e:
        raise InputError(f"{meta_path}: {e}") from e
    weights = meta_path.parent / meta.get("weights", WEIGHTS_NAME)
    state = load_state_dict_file(weights)
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise InputError(f"{weights}: weights do not match the {meta['architecture']} encoder of {meta_path.name}: {problem}")
    model.load_state_dict(state, strict=True)
    return model.eval()


__all__ = [  # reading helpers live in renderssl.models.weights and are re-exported here
    "ARCHITECTURES", "POINT_ARCHITECTURES", "VIEW_ARCHITECTURES", "build_encoder", "encoder_state_from_checkpoint", "export_encoder",
    "load_encoder", "load_state_dict_file", "make_config", "model_name_hint", "read_encoder_info", "state_dict_mismatch",
]
