"""Readers and writers of on-disk datasets, converting to and from the in-memory types
(:class:`~renderssl.data.types.ViewSet`, :class:`~renderssl.data.types.PointCloud`).

Every reader returns our conventions: OpenCV camera-to-world poses, K in pixels with pixel centres at
half-integers (a centred camera has cx = W/2), z-depth in metres with 0 = invalid, rgb float32 in
[0, 1], labels int64 with -1 = ignore. Each module's docstring states its layout and conversions.

Scene formats (ViewSet readers take ``every_k`` and ``name``; frames that cannot be used -- a
non-finite or singular pose, an unreadable image, missing or unreadable depth -- are skipped with a
warning and listed on the result as ``skipped``, see :func:`skipped_frames`):

========== ========================== ==========================
format     reader                     writer
========== ========================== ==========================
scannet    read_scannet(root)         write_scannet(vs, root)
7scenes    read_sevenscenes(root)     write_sevenscenes(vs, root)
blender    read_blender(path)         write_blender(vs, root)
llff       read_llff(root, factor)    write_llff(vs, root, factor)
========== ========================== ==========================

Plus :func:`read_image_folder` (classification folders) and :func:`read_ply` / :func:`write_ply`.
:func:`read_viewset` / :func:`write_viewset` dispatch by format name, and :func:`detect_format`
recognises a scene folder by its marker files. :func:`expand_scene_folder` gives the scenes a folder of
a source stands for (a 7-Scenes dataset root or scene folder: its sequences) and :func:`scene_name` their
names (a 7-Scenes sequence ``<scene>/seq-XX``).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import InputError
from ..types import ViewSet
from .blender import count_blender, open_blender, read_blender, write_blender
from .image_folder import ImageFolder, read_image_folder, write_image_folder
from .images import skipped_frames
from .llff import count_llff, open_llff, read_llff, write_llff
from .ply import read_ply, write_ply
from .options import ReadOptions
from .scannet import count_scannet, open_scannet, read_scannet, write_scannet
from .sevenscenes import (
    count_sevenscenes, is_sequence, open_sevenscenes, read_sevenscenes, sequence_folders, sequence_name, write_sevenscenes,
)

READERS = {"scannet": read_scannet, "7scenes": read_sevenscenes, "blender": read_blender, "llff": read_llff}
WRITERS = {"scannet": write_scannet, "7scenes": write_sevenscenes, "blender": write_blender, "llff": write_llff}
SCENE_FORMATS = tuple(READERS)


# format -> (open(path, ReadOptions) -> Scene or ViewSet, count(path, ReadOptions) -> frames)
OPENERS = {
    "scannet": (open_scannet, count_scannet),
    "7scenes": (open_sevenscenes, count_sevenscenes),
    "blender": (open_blender, count_blender),
    "llff": (open_llff, count_llff),
}


def detect_format(path) -> str:
    """The scene format of ``path`` from its marker files (transforms.json or transforms_<split>.json as in
    NeRF synthetic, poses_bounds.npy, color/ + pose/, frame-*.pose.txt)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return "blender"
    if not path.is_dir():
        raise InputError(f"{path}: scene folder not found")
    if (path / "transforms.json").is_file() or any(p.is_file() for p in path.glob("transforms_*.json")):
        return "blender"
    if (path / "poses_bounds.npy").is_file():
        return "llff"
    if (path / "color").is_dir() and (path / "pose").is_dir():
        return "scannet"
    if is_sequence(path):
        return "7scenes"
    sequences = sequence_folders(path)  # a 7-Scenes scene folder or dataset root is not one scene
    if sequences:
        names = ", ".join(sequence_name(s) for s in sequences[:3]) + (", ..." if len(sequences) > 3 else "")
        raise InputError(f"{path}: a 7-Scenes scene folder or dataset root of {len(sequences)} sequences ({names}); "
                         "read one sequence folder, or give it as data.source (one scene per sequence)")
    raise InputError(
        f"{path}: cannot tell the scene format (looked for transforms.json, poses_bounds.npy, "
        "color/ + pose/, frame-*.pose.txt)"
    )


def expand_scene_folder(path) -> list[Path]:
    """The scenes a folder of a source stands for: itself when :func:`detect_format` recognises it as a
    scene; the sequence folders of a 7-Scenes scene folder or dataset root (name order, see
    :mod:`.sevenscenes`); else itself (reading it then names what is missing)."""
    path = Path(path)
    try:
        detect_format(path)
        return [path]
    except InputError:
        return sequence_folders(path) or [path]


def scene_name(path) -> str:
    """The name of the scene in folder ``path``: ``<scene>/seq-XX`` for a 7-Scenes sequence folder named
    ``seq-XX`` (unique across a dataset root), else the folder's name."""
    return sequence_name(path) if is_sequence(path) else Path(path).name


def read_viewset(path, format: str | None = None, **kwargs) -> ViewSet:
    """Read a scene with the reader of ``format`` (detected when None); kwargs go to the reader."""
    format = format or detect_format(path)
    if format not in READERS:
        raise InputError(f"read_viewset: unknown format {format!r}; expected one of {list(READERS)}")
    return READERS[format](path, **kwargs)


def write_viewset(viewset: ViewSet, root, format: str, **kwargs):
    """Write ``viewset`` with the writer of ``format``; kwargs go to the writer."""
    if format not in WRITERS:
        raise InputError(f"write_viewset: unknown format {format!r}; expected one of {list(WRITERS)}")
    return WRITERS[format](viewset, root, **kwargs)


__all__ = [
    "read_scannet", "write_scannet", "read_sevenscenes", "write_sevenscenes", "read_blender", "write_blender",
    "read_llff", "write_llff", "ImageFolder", "read_image_folder", "write_image_folder", "read_ply", "write_ply",
    "skipped_frames", "detect_format", "read_viewset", "write_viewset", "READERS", "WRITERS", "SCENE_FORMATS",
    "OPENERS", "ReadOptions", "open_scannet", "count_scannet", "open_llff", "count_llff", "open_sevenscenes",
    "count_sevenscenes", "expand_scene_folder", "scene_name", "open_blender", "count_blender",
]
