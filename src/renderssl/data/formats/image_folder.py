"""Class-per-folder image collections for classification (ImageNet-style).

On disk::

    <root>/<class name>/<any name>.png | .jpg | .jpeg     (extensions case-insensitive)

Classes are the sub-folder names sorted alphabetically; class index = position in that order.
Images inside a class are sorted by file name. Files with other extensions and hidden entries are
ignored. Images load lazily (``ImageFolder[i]``) as (3, H, W) float32 in [0, 1] plus the class index;
a corrupt file raises an :class:`InputError` naming it when it is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import InputError
from .images import is_image_file, read_rgb, require_dir, write_rgb


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
