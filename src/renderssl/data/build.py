"""Scene splits for pretraining and downstream tasks, listed lazily, and the Datasets that read them.

Scenes, not frames, are split: train, val and test are disjoint sets of scenes, so no test scene is seen
in pretraining or fine-tuning. Synthetic scene i of a split has seed ``data.seed + offset + i`` with
offsets 0 (train), train_scenes (val) and train_scenes + val_scenes (test). A folder source lists its
scenes in name order and takes them in the same order: train, then val, then test. A scene is a
sub-folder in a format the readers detect (a 7-Scenes dataset root or scene folder stands for its
sequences, each a scene named ``<scene>/seq-XX``; a source that is itself a scene folder is that one
scene) or, in a folder of ``.ply`` files, one file (a :class:`PointCloud`, named after the file; for the
point tasks).

The ``pretrain`` split is the unlabelled pretraining pool, as the papers pretrain on far more scenes
than they fine-tune on (ImageNet, all of ScanNet):

- synthetic: ``data.pretrain_scenes`` scenes: the train split's scenes first, then fresh seeds after
  the test split (``seed + train + val + test + j``), so the pool never holds a val or test scene;
  None = the train split;
- folder: every scene of ``data.pretrain_source`` when it is given (a scene folder that is also one of
  the source's val or test scenes is refused), else the train split.

Listing is cheap (:class:`~renderssl.data.scenes.SceneRef`: seeds, folder names, frame counts from
directory listings); scenes are opened and frames decoded when a Dataset reads them.

A folder of plain images (no scene files anywhere in it; any nesting: flat, BSDS500-style
``{train,val,test}/``, ImageNet-style class folders) is a source for the image recipes (GMAE, MAE) only,
split by image (:mod:`renderssl.data.formats.image_folder` states the rule; it is printed, and the image
lists are the run's ``splits.json``); as ``data.pretrain_source`` all of its images are the pool. A
recipe of another sample type given one stops with a one-line error naming the recipe.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

from ..errors import InputError
from ..train.config import DataConfig
from .scenes import SceneRef, folder_ref, open_scene, synthetic_refs

SPLITS = ("train", "val", "test")
POOL = "pretrain"


def split_range(cfg: DataConfig, split: str) -> range:
    """Indices of the scenes of ``split`` in the ordered list of all scenes."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    sizes = {"train": cfg.train_scenes, "val": cfg.val_scenes, "test": cfg.test_scenes}
    start = {"train": 0, "val": cfg.train_scenes, "test": cfg.train_scenes + cfg.val_scenes}[split]
    return range(start, start + sizes[split])


def pool_indices(cfg: DataConfig) -> list[int]:
    """Scene indices (synthetic: seed offsets) of the pretraining pool (see the module docstring)."""
    n = cfg.pretrain_scenes if cfg.pretrain_scenes is not None else cfg.train_scenes
    labelled = cfg.train_scenes + cfg.val_scenes + cfg.test_scenes
    return list(range(min(n, cfg.train_scenes))) + list(range(labelled, labelled + max(0, n - cfg.train_scenes)))


def scene_folders(source) -> list[Path]:
    """The scenes of a folder source: its ``.ply`` files if it has any, else its sub-folders, a 7-Scenes
    scene folder or dataset root among them standing for its sequence folders (name order;
    :func:`~renderssl.data.formats.expand_scene_folder`); a source that is itself one scene folder (a
    7-Scenes sequence, say) is that one scene."""
    from .formats import detect_format, expand_scene_folder

    root = Path(source)
    if not root.is_dir():
        raise InputError(f"data.source: {root} is neither 'synthetic' nor a folder of scenes")
    try:
        detect_format(root)
        return [root]
    except InputError:
        pass
    clouds = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".ply")
    folders = clouds or [s for p in sorted(p for p in root.iterdir() if p.is_dir()) for s in expand_scene_folder(p)]
    if not folders:
        raise InputError(f"data.source: {root} holds no scene folders and no .ply files")
    return folders


def load_split(cfg: DataConfig, split: str) -> list[SceneRef]:
    """The scenes of ``split`` (train, val, test or pretrain) as references, opened when read."""
    if cfg.source == "synthetic":
        from .synthetic import SyntheticConfig

        synth = SyntheticConfig(kind=cfg.kind, num_views=cfg.views, width=cfg.width, height=cfg.height)
        indices = pool_indices(cfg) if split == POOL else split_range(cfg, split)
        return synthetic_refs([cfg.seed + i for i in indices], synth)
    if split == POOL and cfg.pretrain_source is not None:
        return pool_folder_refs(cfg)
    split = "train" if split == POOL else split
    folders = scene_folders(cfg.source)
    if splits_by_frames(cfg, len(folders)):
        return frame_split([scene_ref(f, cfg) for f in folders], cfg)[split]
    return [scene_ref(folders[i], cfg) for i in split_range(cfg, split)]


def splits_by_frames(cfg: DataConfig, num_scenes: int) -> bool:
    """Whether a folder source of ``num_scenes`` scenes is split by frames within its scenes."""
    needed = cfg.train_scenes + cfg.val_scenes + cfg.test_scenes
    if cfg.split_by == "frames" or (cfg.split_by == "auto" and num_scenes < needed):
        return True
    if num_scenes < needed:
        raise InputError(
            f"data.source: {cfg.source} has {num_scenes} scene(s); the splits need {needed} (data.train_scenes "
            f"{cfg.train_scenes} + data.val_scenes {cfg.val_scenes} + data.test_scenes {cfg.test_scenes}): lower "
            "those, or set data.split_by=frames to split the frames of each scene"
        )
    return False


def frame_split(refs: list[SceneRef], cfg: DataConfig) -> dict[str, list[SceneRef]]:
    """Every scene's frames in three consecutive blocks, train, val and test, in the proportions of
    ``data.train_scenes : val_scenes : test_scenes``; each block is a scene named ``<scene>@<split>``.
    Consecutive blocks keep neighbouring (near-duplicate) frames of a sequence mostly on one side."""
    weights = [cfg.train_scenes, cfg.val_scenes, cfg.test_scenes]
    if weights[0] < 1 or sum(weights) < 1:
        raise InputError("data.split_by=frames: data.train_scenes must be >= 1 (the splits' proportions)")
    out = {name: [] for name in SPLITS}
    for ref in refs:
        n = ref.num_frames
        val, test = (round(n * w / sum(weights)) for w in weights[1:])
        train = n - val - test
        if train < 1 or (weights[1] and val < 1) or (weights[2] and test < 1):
            raise InputError(f"data.split_by=frames: scene {ref.name} has {n} frame(s), too few for train {weights[0]} : "
                             f"val {weights[1]} : test {weights[2]}")
        bounds = {"train": (0, train), "val": (train, train + val), "test": (train + val, n)}
        for name, (a, b) in bounds.items():
            if b > a:
                out[name].append(ref.subset(range(a, b), f"{ref.name}@{name}"))
    return out


def split_manifest(cfg: DataConfig) -> dict | None:
    """For a source split by frames: ``{split: {scene: [frame indices]}}`` (written beside a run); for a
    folder of plain images ``{split: {folder: [image paths relative to it]}}``; else None."""
    if cfg.source == "synthetic":
        return None
    if is_image_source(cfg.source):
        return {split: {str(cfg.source): files.names()} for split, files in image_splits(cfg, cfg.source)[0].items()}
    if not splits_by_frames(cfg, len(scene_folders(cfg.source))):
        return None
    return {split: {ref.name: list(ref.frames) for ref in load_split(cfg, split)} for split in SPLITS}


def scene_ids(cfg: DataConfig, split: str) -> set[tuple[str, str]]:
    """(source, scene name) of every scene of ``split``: what a held-out check compares."""
    source = cfg.pretrain_source if split == POOL and cfg.pretrain_source is not None else cfg.source
    return {(str(source), ref.name) for ref in load_split(cfg, split)}


def open_split(cfg: DataConfig, split: str) -> list:
    """The scenes of ``split`` wholly in memory (ViewSets or PointClouds): for small splits and tests. A
    scene stops, naming the files, when more than ``data.max_bad_fraction`` of its frames cannot be read."""
    return [open_scene(ref, cfg.max_bad_fraction) for ref in load_split(cfg, split)]


def read_options(cfg: DataConfig):
    """How ``cfg``'s folders are read (:class:`~renderssl.data.formats.options.ReadOptions`)."""
    from .formats.options import ReadOptions

    return ReadOptions(every_k=cfg.every_k, background=cfg.background, split=cfg.blender_split,
                       llff_factor=cfg.llff_factor, target_size=(cfg.height, cfg.width))


def scene_ref(path: Path, cfg: DataConfig) -> SceneRef:
    if path.is_file():
        from .formats.ply import read_ply

        return SceneRef(path.stem, 0, partial(read_ply, path), points=True)
    from .formats import scene_name

    # named as its opener names it: a 7-Scenes sequence <scene>/seq-XX (unique across a dataset root);
    # its frames brought to data.height x data.width by data.resize when read
    return dataclasses.replace(folder_ref(path, read_options(cfg)), name=scene_name(path), size=(cfg.height, cfg.width),
                               resize=cfg.resize)


def pool_folder_refs(cfg: DataConfig) -> list[SceneRef]:
    """Every scene of ``data.pretrain_source``, none of them a val or test scene of ``data.source``."""
    folders = scene_folders(cfg.pretrain_source)
    if cfg.source != "synthetic" and Path(cfg.source).is_dir():
        labelled = scene_folders(cfg.source)
        held_out = {labelled[i].resolve() for s in ("val", "test") for i in split_range(cfg, s) if i < len(labelled)}
        clash = [str(f) for f in folders if f.resolve() in held_out]
        if clash:
            raise InputError(f"data.pretrain_source: {clash[0]} is a val or test scene of data.source; "
                             "pretraining must not see held-out scenes")
    return [scene_ref(f, cfg) for f in folders]


def is_image_source(source) -> bool:
    """Whether ``source`` (a data.source / data.pretrain_source value) is a folder of plain images."""
    from .formats.image_folder import is_image_source as is_images

    return source is not None and source != "synthetic" and is_images(source)


def image_splits(cfg: DataConfig, source):
    """({train, val, test: ImageFiles}, the rule in one line) of a folder of plain images
    (:func:`~renderssl.data.formats.image_folder.image_source_splits`: the folder's own train/val/test
    sub-folders, else a permutation seeded by data.seed in the proportions of data.*_scenes)."""
    from .formats.image_folder import image_source_splits

    return image_source_splits(source, (cfg.train_scenes, cfg.val_scenes, cfg.test_scenes), cfg.seed)


def image_split(cfg: DataConfig, split: str):
    """The :class:`~renderssl.data.formats.image_folder.ImageFiles` of ``split`` when it comes from a folder
    of plain images (data.source, or data.pretrain_source for the pretraining pool), else None. The pool of
    an image data.pretrain_source is all of its images, none of them a val or test image of data.source."""
    from .formats.image_folder import all_images

    if split == POOL and cfg.pretrain_source is not None:
        if not is_image_source(cfg.pretrain_source):
            return None
        pool = all_images(cfg.pretrain_source)
        print(f"data: pretraining pool data.pretrain_source={cfg.pretrain_source}: all of its {len(pool)} plain images")
        if is_image_source(cfg.source):
            held, _ = image_splits(cfg, cfg.source)
            held_out = {held[s].path(i).resolve() for s in ("val", "test") for i in range(len(held[s]))}
            clash = next((pool.path(i) for i in range(len(pool)) if pool.path(i).resolve() in held_out), None)
            if clash is not None:
                raise InputError(f"data.pretrain_source: {clash} is a val or test image of data.source; "
                                 "pretraining must not see held-out images")
        return pool
    if not is_image_source(cfg.source):
        return None
    files, rule = image_splits(cfg, cfg.source)
    if split in (POOL, "train"):
        print(f"data: data.source={rule}")
    return files["train" if split == POOL else split]


def sample_dataset(sample_type: str, cfg: DataConfig, split: str, recipe: str | None = None, options: dict | None = None):
    """(Dataset, collate_fn) of ``split`` in ``sample_type`` samples at the configured size, frames brought
    to it by ``data.resize``. A folder of plain images serves the image sample type only; ``recipe`` names
    the recipe in the error a recipe of another sample type gets for it. ``options``: the recipe's sample
    options (``Method.sample_options``), e.g. a multi-view recipe's view selection and target count."""
    from ..threads import resolve_workers
    from .datasets import ImageDataset, MultiViewDataset, RGBDFrameDataset, collate_stacked

    size, resize = (cfg.height, cfg.width), cfg.resize
    images = image_split(cfg, split)
    if images is not None:
        if sample_type != "image":
            folder = cfg.pretrain_source if split == POOL and cfg.pretrain_source is not None else cfg.source
            raise InputError(f"{recipe or 'this recipe'} trains on {sample_type} samples and needs posed RGB-D scenes "
                             f"(ScanNet, 7-Scenes, Blender, LLFF or synthetic), but {folder} is a folder of plain "
                             "images (usable by the image recipes gmae and mae)")
        return ImageDataset(images, size=size, resize=resize), None
    scenes = load_split(cfg, split)
    # each DataLoader worker holds its own caches: the budget is shared among them
    caches = {"cache_scenes": cfg.cache_scenes, "cache_mb": cfg.cache_mb / max(1, resolve_workers(cfg.workers))}
    if sample_type == "rgbd":
        return RGBDFrameDataset(scenes, size=size, resize=resize, **caches), collate_stacked
    if sample_type == "image":
        return ImageDataset(scenes, size=size, resize=resize, **caches), None
    if sample_type == "multiview":
        return MultiViewDataset(scenes, seed=cfg.seed, size=size, resize=resize, **caches, **(options or {})), collate_stacked
    raise InputError(f"no Dataset for sample type {sample_type!r} yet (known: image, rgbd, multiview)")
