"""Folders of plain images: class-per-folder collections for classification (ImageNet-style), and
any folder of images as a ``data.source`` for 2D pretraining (the image recipes GMAE and MAE).

Classification (:func:`read_image_folder`), on disk::

    <root>/<class name>/<any name>.png | .jpg | .jpeg     (extensions case-insensitive)

Classes are the sub-folder names sorted alphabetically; class index = position in that order.
Images inside a class are sorted by file name. Files with other extensions and hidden entries are
ignored. Images load lazily (``ImageFolder[i]``) as (3, H, W) float32 in [0, 1] plus the class index;
a corrupt file raises an :class:`InputError` naming it when it is loaded.

Pretraining source (:func:`image_source_splits`): every image file under the folder at any nesting --
flat (``photos/*.jpg``), BSDS500-style (``images/{train,val,test}/*.jpg``) or ImageNet-style class
folders (``train/n01440764/*.JPEG``); no labels, cameras or depth are read.

- Which folders: a folder is a plain image source when its tree holds image files and none of the scene
  formats' marker files (:data:`SCENE_MARKERS`: ``transforms*.json``, ``poses_bounds.npy``,
  ``*.pose.txt``, ``*.ply``, a ``pose/`` folder), so a folder of ScanNet/7-Scenes/Blender/LLFF scenes
  is never mistaken for one.
- Listing: every ``.png``/``.jpg``/``.jpeg`` file (any case) under the folder, recursively, following
  links to folders (each folder once); hidden files and folders (``.name``) are skipped. Images are
  identified by their path relative to the folder (``/``-separated) and sorted by it (plain string
  order). Only the listing is kept (as one byte-string array, so 1.3M ImageNet paths cost ~60 MB and
  no per-object memory in DataLoader workers); an image is decoded when it is read.
- Split, by image: when the folder's own sub-folders include ``train`` and ``val`` and/or ``test`` (the
  published BSDS500 / ImageNet layouts), those folders are the splits (each split: the images below its
  folder; a split without a folder is empty, images outside them are not used). Otherwise the sorted
  images are shuffled by a permutation seeded by ``data.seed`` and cut in the proportions
  ``data.train_scenes : data.val_scenes : data.test_scenes`` (counts read as proportions of the images:
  val = round(n v / (t + v + s)), test likewise, at least one image each when its weight is > 0, train
  the rest, at least one); train takes the first part of the permutation, then val, then test, and
  each split is read in path order. The rule and the counts are printed, and the image lists saved in
  the run folder (``splits.json``, :func:`renderssl.data.build.split_manifest`).
- Unreadable images (truncated, not an image) raise an :class:`InputError` naming the file when read:
  training skips and counts them (:mod:`renderssl.data.unreadable`).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from .images import IMAGE_EXTENSIONS, is_image_file, read_rgb, require_dir, write_rgb

SPLIT_FOLDERS = ("train", "val", "test")
# files or folders whose presence anywhere in a tree marks it as holding posed scenes, not plain images
SCENE_MARKERS = {"files": ("transforms*.json", "poses_bounds.npy", "*.pose.txt", "*.ply"), "folders": ("pose",)}


@dataclass
class ImageFolder:
    """Index of an image folder: ``paths[i]`` has class ``labels[i]`` named ``class_names[labels[i]]``."""

    root: Path
    paths: list[Path]
    labels: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """(image (3, H, W) float32 in [0, 1], class index)."""
        return read_rgb(self.paths[i]), self.labels[i]


def read_image_folder(root) -> ImageFolder:
    """Index ``root/<class>/*.png|jpg`` (see the module docstring); images are read on access."""
    root = require_dir(root, "image folder")
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    if not class_dirs:
        raise InputError(f"{root}: no class sub-folders found (expected <root>/<class>/<image>.png|jpg)")
    paths, labels = [], []
    for index, d in enumerate(class_dirs):
        files = sorted((p for p in d.iterdir() if is_image_file(p) and not p.name.startswith(".")), key=lambda p: p.name)
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise InputError(f"{root}: the class folders {[d.name for d in class_dirs][:5]} hold no .png/.jpg images")
    return ImageFolder(root, paths, labels, [d.name for d in class_dirs])


def write_image_folder(images, labels, class_names: list[str], root, ext: str = "png") -> Path:
    """Write (N, 3, H, W) images (or a list of (3, H, W)) with class indices into ``root/<class>/<i>.<ext>``.

    A test/demo helper (the format itself is read-only in the pipeline). Returns ``root``.
    """
    root = Path(root)
    for i, (img, lab) in enumerate(zip(images, labels)):
        lab = int(lab)
        if not 0 <= lab < len(class_names):
            raise InputError(f"write_image_folder: label {lab} of image {i} is outside [0, {len(class_names)})")
        write_rgb(root / class_names[lab] / f"{i:06d}.{ext}", img)
    return root


# ---- any folder of images as a pretraining source ---------------------------------------------------
@dataclass
class ImageFiles:
    """Unlabelled images ``root / relative[i]`` (relative paths as UTF-8 bytes, one numpy array), read
    lazily: ``files[i]`` is ``(image (3, H, W) float32 in [0, 1], None)`` (no class label)."""

    root: Path
    relative: np.ndarray  # (N,) bytes

    def __len__(self) -> int:
        return len(self.relative)

    def path(self, i: int) -> Path:
        return self.root / self.relative[i].decode("utf-8")

    def names(self) -> list[str]:
        return [r.decode("utf-8") for r in self.relative]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, None]:
        return read_rgb(self.path(i)), None


def _marker(name: str, is_dir: bool) -> bool:
    if is_dir:
        return name in SCENE_MARKERS["folders"]
    return any(fnmatch.fnmatch(name.lower(), pattern) for pattern in SCENE_MARKERS["files"])


def scan_images(root) -> list[str] | None:
    """The images under ``root`` as sorted relative paths, or None when the tree holds a scene marker
    (see the module docstring); stops at the first marker."""
    root = Path(root)
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(_marker(d, True) for d in dirs) or any(_marker(f, False) for f in files):
            return None
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        found += [prefix + f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def is_image_source(path) -> bool:
    """Whether ``path`` is a folder of plain images (not scenes) usable as an image source."""
    path = Path(path)
    return path.is_dir() and bool(scan_images(path))


def _image_names(root) -> tuple[Path, list[str]]:
    root = require_dir(root, "image folder")
    names = scan_images(root)
    if names is None:
        raise InputError(f"{root}: holds scene files (transforms*.json, poses_bounds.npy, *.pose.txt, *.ply or a "
                         "pose/ folder), so it is read as scenes, not as a folder of plain images")
    if not names:
        raise InputError(f"{root}: no images (.png, .jpg, .jpeg) found at any depth")
    return root, names


def _files(root: Path, names: list[str]) -> ImageFiles:
    return ImageFiles(root, np.array([n.encode("utf-8") for n in names], dtype=bytes))


def all_images(root) -> ImageFiles:
    """Every image of an image source, unsplit (a pretraining pool, ``data.pretrain_source``)."""
    return _files(*_image_names(root))


def image_source_splits(root, weights: tuple[int, int, int], seed: int) -> tuple[dict[str, ImageFiles], str]:
    """The train, val and test images of an image source and the rule that made them (one line).

    ``weights``: (data.train_scenes, data.val_scenes, data.test_scenes) read as proportions; ``seed``:
    data.seed (see the module docstring for the rule)."""
    root, names = _image_names(root)
    base = split_folder_base(names)
    if base is not None:
        parts = {s: [n for n in names if n.startswith(f"{base}{s}/")] for s in SPLIT_FOLDERS}
        folders = [s for s in SPLIT_FOLDERS if parts[s]]
        outside = len(names) - sum(len(v) for v in parts.values())
        rule = (f"split by the folder's own {base}{'/'.join(folders)}/ sub-folders"
                + (f" ({outside} image(s) outside them not used)" if outside else ""))
    else:
        parts, rule = _shuffled_split(names, weights, seed, root)
    counts = ", ".join(f"{s} {len(parts[s])}" for s in SPLIT_FOLDERS)
    files = {s: _files(root, parts[s]) for s in SPLIT_FOLDERS}
    return files, f"{root}: {len(names)} plain images, {rule}: {counts} images"


def split_folder_base(names: list[str]) -> str | None:
    """The shallowest folder prefix ("" for the root itself, or e.g. "data/images/" as in BSDS500) under
    which a ``train/`` folder of images sits beside a ``val/`` or ``test/`` one; None when there is none."""
    folders = {n.rsplit("/", 1)[0] + "/" for n in names if "/" in n}  # every folder holding an image, "a/b/"
    prefixes = set()
    for folder in folders:
        parts = folder.split("/")[:-1]
        prefixes |= {"/".join(parts[:i + 1]) + "/" for i in range(len(parts))}  # its ancestors too
    bases = [p[: -len("train/")] for p in prefixes if p.endswith("train/") and (p == "train/" or p.endswith("/train/"))]
    bases = [b for b in bases if f"{b}val/" in prefixes or f"{b}test/" in prefixes]
    return min(bases, key=lambda b: (b.count("/"), b)) if bases else None


def _shuffled_split(names: list[str], weights, seed: int, root) -> tuple[dict[str, list[str]], str]:
    n, total = len(names), sum(weights)
    if weights[0] < 1 or total < 1:
        raise InputError(f"{root}: data.train_scenes must be >= 1 (the train : val : test proportions of the images)")
    val, test = (0 if w == 0 else max(1, int(np.floor(n * w / total + 0.5))) for w in weights[1:])
    if n - val - test < 1:
        raise InputError(f"{root}: {n} image(s), too few for train {weights[0]} : val {weights[1]} : test {weights[2]} "
                         "(data.train_scenes : val_scenes : test_scenes)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    bounds = {"train": (0, n - val - test), "val": (n - val - test, n - test), "test": (n - test, n)}
    parts = {s: sorted(names[i] for i in order[a:b]) for s, (a, b) in bounds.items()}
    rule = (f"split by image: a permutation seeded by data.seed={seed} cut in the proportions data.train_scenes "
            f"{weights[0]} : val_scenes {weights[1]} : test_scenes {weights[2]}")
    return parts, rule
