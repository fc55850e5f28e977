"""How scene folders are read: one set of options every format's opener takes.

``open_<format>(path, options)`` (in each format's module) returns a lazily read
:class:`~renderssl.data.scenes.Scene` and ``count_<format>(path, options)`` its number of frames from
listings and metadata only; :data:`renderssl.data.formats.OPENERS` maps format names to both. Options a
format has no use for are ignored by it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReadOptions:
    every_k: int = 1  # keep every k-th frame
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGBA images are composited over it (None: RGB as stored)
    split: str | None = None  # Blender: which transforms_<split>.json (None: transforms.json, else every split)
    llff_factor: int | None = None  # LLFF: images_<n>/ to read (None: the smallest one at least the target size)
    target_size: tuple[int, int] | None = None  # (H, W) the frames will be resized to (LLFF picks its factor by it)
    load_labels: bool = True
