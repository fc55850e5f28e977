"""Class-name text embeddings for PonderV2's semantic term, read from a local file (never downloaded).

PonderV2 encodes each class name with CLIP ViT-B/16's text encoder over 21 prompt templates, normalises
each prompt's embedding, averages over the templates and normalises again (512-d). renderssl does not
run CLIP: it reads the result from a file the user prepares, in one of two formats:

- ``.pt`` / ``.pth`` (``torch.load(weights_only=True)``): either a dict ``{class name: vector (D,)}``,
  or a dict ``{"names": [K class names], "embeddings": tensor (K, D)}``.
- ``.npz`` (``numpy.load(allow_pickle=False)``): arrays ``names`` (K,) of strings and ``embeddings`` (K, D).

``load_class_embeddings(path, class_names)`` returns the rows of ``class_names`` in that order, as
float32 (K, D), L2-normalised (a file may hold more classes than asked for). ``path`` None or empty
returns None: the semantic term is then off and the caller says so once with ``SEMANTIC_OFF_MESSAGE``.
A path that does not exist is an ``InputError`` (a mistyped path should not silently switch the term
off) unless ``missing_ok=True``, which returns None as well. A file without one of the classes, with a
zero or non-finite vector, or of another shape is an ``InputError`` naming the file and the class.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError

SEMANTIC_OFF_MESSAGE = "semantic term off: no text embeddings (set ponder.text_embeddings=PATH)"
TORCH_SUFFIXES = (".pt", ".pth")


def _read_torch(path: Path) -> dict[str, Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable or not a weights-only pickle
        raise InputError(f"text embeddings {path}: cannot read ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise InputError(f"text embeddings {path}: expected a dict name -> vector or {{'names', 'embeddings'}}, "
                         f"got {type(data).__name__}")
    if set(data) == {"names", "embeddings"}:
        return _pair(path, list(data["names"]), torch.as_tensor(data["embeddings"]))
    for name, vec in data.items():
        if not isinstance(name, str) or not isinstance(vec, Tensor) or vec.dim() != 1:
            raise InputError(f"text embeddings {path}: entry {name!r} must map a class name to a vector (D,)")
    return dict(data)


def _read_npz(path: Path) -> dict[str, Tensor]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            if "names" not in data or "embeddings" not in data:
                raise InputError(f"text embeddings {path}: an .npz needs arrays 'names' and 'embeddings', has {sorted(data.files)}")
            names, emb = [str(n) for n in data["names"].tolist()], torch.from_numpy(np.asarray(data["embeddings"]))
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"text embeddings {path}: cannot read ({type(err).__name__}: {err})") from None
    return _pair(path, names, emb)


def _pair(path: Path, names: list, emb: Tensor) -> dict[str, Tensor]:
    if emb.dim() != 2 or emb.shape[0] != len(names):
        raise InputError(f"text embeddings {path}: embeddings must be (K, D) with K = {len(names)} names, got {tuple(emb.shape)}")
    if len(set(names)) != len(names):
        raise InputError(f"text embeddings {path}: duplicate class names")
    return {str(n): emb[i] for i, n in enumerate(names)}


def load_class_embeddings(path, class_names, missing_ok: bool = False) -> Tensor | None:
    """Class embeddings (K, D) float32, L2-normalised, rows in ``class_names`` order, or None (no path)."""
    if path is None or str(path) == "":
        return None
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return None
        raise InputError(f"text embeddings: {path} does not exist (set ponder.text_embeddings=PATH or leave it empty)")
    if not class_names or isinstance(class_names, str):
        raise InputError(f"load_class_embeddings: class_names must be a non-empty list of names, got {class_names!r}")
    if path.suffix in TORCH_SUFFIXES:
        table = _read_torch(path)
    elif path.suffix == ".npz":
        table = _read_npz(path)
    else:
        raise InputError(f"text embeddings {path}: unknown format {path.suffix!r} (use .pt/.pth or .npz)")
    rows = []
    for name in class_names:
        if name not in table:
            raise InputError(f"text embeddings {path}: no embedding for class {name!r}")
        vec = table[name].to(torch.float32)
        if not bool(torch.isfinite(vec).all()) or float(vec.norm()) == 0.0:
            raise InputError(f"text embeddings {path}: the embedding of class {name!r} is zero or not finite")
        rows.append(vec)
    if len({v.shape[0] for v in rows}) != 1:
        raise InputError(f"text embeddings {path}: the classes' vectors differ in length")
    return F.normalize(torch.stack(rows), dim=-1)  # (K, D)
