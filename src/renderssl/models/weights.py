"""Reading weights: state dict files (safetensors, or torch files read with ``weights_only=True`` so a
checkpoint never runs code), the encoder inside a method checkpoint, and an export's ``encoder.json``.

Methods that start from earlier weights (Mask3D's Stage I) read them through this module; writing
exports is :mod:`renderssl.export`'s job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..errors import InputError

FORMAT = "renderssl-encoder"
VERSION = 1
WEIGHTS_NAME = "encoder.safetensors"
META_NAME = "encoder.json"
ARCHITECTURE_NAMES = ("vit", "resnet", "sparse_unet", "pointnet2", "nerf_transformer")
NESTED_KEYS = ("model", "state_dict")  # checkpoint entries that hold the state dict, tried in this order
MAX_LISTED = 5  # keys named in mismatch messages


def _listed(keys: list[str]) -> str:
    more = f" ... ({len(keys)} in all)" if len(keys) > MAX_LISTED else ""
    return f"{keys[:MAX_LISTED]}{more}"


def state_dict_mismatch(expected: Mapping[str, Tensor], got: Mapping[str, Tensor]) -> str | None:
    """None when the key sets and shapes agree, else a message listing the first missing / unexpected /
    wrongly shaped keys."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    bad = [
        f"{k}: {tuple(got[k].shape)} vs expected {tuple(expected[k].shape)}"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_listed(unexpected)}")
    if bad:
        parts.append(f"shape mismatches {_listed(bad)}")
    return "; ".join(parts) or None



def _unwrap(obj, where) -> dict[str, Tensor]:
    """The name -> tensor mapping inside a checkpoint: follows nested 'model' / 'state_dict' entries and
    strips a leading 'module.' (DistributedDataParallel) from every key."""
    for _ in range(4):  # e.g. {'state_dict': {'model': {...}}}
        if not isinstance(obj, Mapping):
            break
        nested = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    if not isinstance(obj, Mapping):
        raise InputError(f"{where}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise InputError(
            f"{where}: expected a state dict (name -> tensor) or a checkpoint with a 'model' / 'state_dict' "
            f"entry; entries that are not tensors: {_listed(not_tensors)}"
        )
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_state_dict_file(path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or of a torch-saved ``.pt`` / ``.pth`` / ``.ckpt`` (read with
    ``weights_only=True``: no code runs). Nested 'model' / 'state_dict' entries are followed and a
    'module.' prefix is stripped. Raises :class:`InputError` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such weight file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, pickle with code, not a weight file
        raise InputError(f"{path}: could not read weights ({type(e).__name__}: {e})") from e
    return _unwrap(obj, path)


def encoder_state_from_checkpoint(state, prefix: str = "encoder.") -> dict[str, Tensor]:
    """The encoder's state dict inside a method checkpoint: the entries under ``prefix``, prefix removed.

    ``state`` is a checkpoint dict (e.g. ``{'model': method.state_dict(), 'step': ...}``), a method
    state dict, or a path to a weight file (read by :func:`load_state_dict_file`).
    """
    where = state if isinstance(state, (str, os.PathLike)) else "checkpoint"
    sd = load_state_dict_file(state) if isinstance(state, (str, os.PathLike)) else _unwrap(state, where)
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not out:
        heads = sorted({k.split(".", 1)[0] + "." for k in sd})
        raise InputError(f"{where}: no keys start with {prefix!r}; top-level names are {_listed(heads)}")
    return out


def _meta_path(path) -> Path:
    """folder -> folder/encoder.json; x.safetensors -> x.json; x.json -> itself."""
    path = Path(path)
    if path.suffix == ".json" and not path.is_dir():
        return path
    if path.suffix == ".safetensors" and not path.is_dir():
        return path.with_suffix(".json")
    return path / META_NAME


def read_encoder_info(path) -> dict:
    """The validated ``encoder.json`` of an export (``path`` = the folder, the json or the weights), plus
    ``"_path"``: the json file read."""
    meta_path = _meta_path(path)
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: no such file (expected an encoder folder written by export_encoder)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"{meta_path}: not a renderssl encoder description (format {found!r}, expected {FORMAT!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise InputError(f"{meta_path}: unsupported version {version!r} (this renderssl reads up to {VERSION})")
    if meta.get("architecture") not in ARCHITECTURE_NAMES:
        raise InputError(f"{meta_path}: architecture {meta.get('architecture')!r} is not one of {list(ARCHITECTURE_NAMES)}")
    if not isinstance(meta.get("config"), dict):
        raise InputError(f"{meta_path}: 'config' must be a mapping of the {meta['architecture']} config fields")
    meta["_path"] = str(meta_path)
    return meta
