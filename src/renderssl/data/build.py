"""Scene splits for pretraining and downstream tasks.

Scenes, not frames, are split: train, val and test are disjoint sets of scenes, so no test scene is seen
in pretraining or fine-tuning. Synthetic scene i of a split has seed ``data.seed + offset + i`` with
offsets 0 (train), train_scenes (val) and train_scenes + val_scenes (test). A folder source lists its
scenes in name order and takes them in the same order: train, then val, then test. A scene is a
sub-folder in a format the readers detect (a :class:`ViewSet`) or, in a folder of ``.ply`` files, one
file (a :class:`PointCloud`, named after the file; for the point tasks).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..train.config import DataConfig
from .types import PointCloud, ViewSet

SPLITS = ("train", "val", "test")


def split_range(cfg: DataConfig, split: str) -> range:
    """Indices of the scenes of ``split`` in the ordered list of all scenes."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    sizes = {"train": cfg.train_scenes, "val": cfg.val_scenes, "test": cfg.test_scenes}
    start = {"train": 0, "val": cfg.train_scenes, "test": cfg.train_scenes + cfg.val_scenes}[split]
    return range(start, start + sizes[split])


def scene_folders(source) -> list[Path]:
    """The scenes of a folder source: its ``.ply`` files if it has any, else its sub-folders."""
    root = Path(source)
    if not root.is_dir():
        raise InputError(f"data.source: {root} is neither 'synthetic' nor a folder of scenes")
    clouds = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".ply")
    folders = clouds or sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"data.source: {root} holds no scene folders and no .ply files")
    return folders


def load_split(cfg: DataConfig, split: str) -> list[ViewSet] | list[PointCloud]:
    """The scenes of ``split``: ViewSets, or PointClouds for a folder of PLY files."""
    indices = split_range(cfg, split)
    if cfg.source == "synthetic":
        from .synthetic import SyntheticConfig, generate_scene

        synth = SyntheticConfig(kind=cfg.kind, num_views=cfg.views, width=cfg.width, height=cfg.height)
        return [generate_scene(cfg.seed + i, synth) for i in indices]
    from .formats import read_viewset

    folders = scene_folders(cfg.source)
    if indices.stop > len(folders):
        raise InputError(
            f"data.source: {cfg.source} has {len(folders)} scenes; the splits need {indices.stop} "
            f"(train {cfg.train_scenes} + val {cfg.val_scenes} + test {cfg.test_scenes})"
        )
    if folders[0].is_file():
        from .formats.ply import read_ply

        return [read_ply(folders[i]) for i in indices]
    return [read_viewset(folders[i], every_k=cfg.every_k) for i in indices]
