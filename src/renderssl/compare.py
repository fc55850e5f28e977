"""``renderssl compare``: pretrained encoders side by side against the same encoder from scratch.

Every encoder (an exported encoder folder, or a ``renderssl pretrain`` run folder) of any of the four
export architectures, a scratch baseline, and one scratch entry per ``architectures`` spec such as
``sparse_unet:small`` are fine-tuned on the same downstream tasks, with the same train/test scenes,
label subsets, budget and seeds, at each label fraction; scores are taken on the held-out test scenes.
The test scenes are checked against every encoder's pretraining scenes: an encoder that saw a test
scene in pretraining is refused. Writes ``results.json`` (the compared metric per run under ``runs``,
every scalar metric per run under ``all_metrics``, the entries each task ran under ``entries``),
``comparison.md`` (one table per task) and ``<task>.png`` (metric vs label fraction, one line per
method, +/- one std).

Choices:

* Tasks follow the encoders (:func:`renderssl.eval.tasks.assign_tasks`): without ``tasks``, image
  encoders (ViT, ResNet) get ``segmentation`` and ``depth``, point encoders (SparseUNet, PointNet++)
  ``segmentation3d``, view encoders (NPS's ``nerf_transformer``) ``view_segmentation`` and ``view_depth``;
  a mix of families shares no task and is refused unless ``tasks`` names
  them, and each named task then runs on the entries of its family. A task no entry takes, or an entry
  (scratch entries included) that takes none of the tasks, is an error naming both; everything is
  checked before any training.
* The scratch baseline is the architecture and config of the first encoder of each family, named
  ``scratch`` when the encoders are of one family, else ``scratch (<architecture>)``.
* Entry names must be unique (``names`` gives labels when two encoders share a recipe).
* Each point encoder is fed the input features its ``in_channels`` take (``color`` for 3,
  ``color_normal`` for 6), and its scratch baseline the same; encoders of different input features can
  be compared (a GS³ encoder of RGB points beside a PonderV2 one of colour + normal points).
  ``downstream.points.features`` is what the ``architectures`` specs are fed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .data.build import load_split, scene_ids
from .data.scenes import SceneCache
from .errors import InputError
from .eval.report import markdown_table, plot_metric
from .eval.tasks import DownstreamConfig, architecture_family, assign_tasks, features_for_channels
from .eval.transfer import run_on_splits
from .export import read_encoder_info
from .finetune import architecture_factory, data_config_of, encoder_factory, resolve_encoder
from .train.config import DataConfig, from_dict, to_dict

TASK_METRIC = {
    "segmentation": ("miou", "mIoU (higher is better)"),
    "depth": ("abs_rel", "depth AbsRel (lower is better)"),
    "classification": ("top1", "top-1 accuracy (higher is better)"),
    "segmentation3d": ("miou", "3D segmentation mIoU (higher is better)"),
    "view_segmentation": ("miou", "novel-view segmentation mIoU (higher is better)"),
    "view_depth": ("abs_rel", "novel-view depth AbsRel (lower is better)"),
}


@dataclass
class CompareConfig:
    encoders: list[str] = field(default_factory=list)  # exported encoder folders or pretraining run folders
    architectures: list[str] = field(default_factory=list)  # scratch-only entries, "<architecture>:<preset>"
    names: list[str] = field(default_factory=list)  # default: the recipe each encoder was pretrained with
    tasks: list[str] = field(default_factory=list)  # empty: the encoders' family defaults (module docstring)
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5, 1.0])
    seeds: int = 3
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1 (another process can run the next seeds)
    scratch: bool = True
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    data: DataConfig | None = None  # default: the first encoder's pretraining data (same scene splits)
    out_dir: str = "runs/compare"

    def __post_init__(self):
        if not self.encoders and not self.architectures:
            raise InputError("compare: give at least one encoder or architecture")
        if self.names and len(self.names) != len(self.encoders):
            raise InputError(f"compare: {len(self.names)} names for {len(self.encoders)} encoders")
        bad = [t for t in self.tasks if t not in TASK_METRIC]
        if bad:
            raise InputError(f"compare.tasks: unknown {bad}; expected some of {list(TASK_METRIC)}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions) or self.seeds < 1 or self.first_seed < 0:
            raise InputError("compare: fractions must lie in (0, 1], seeds must be >= 1 and first_seed >= 0")


def pretraining_scene_ids(info: dict) -> set | None:
    """The scenes an encoder was pretrained on (its pool), as (source, scene name) pairs; None if unrecorded."""
    data = (info.get("pretraining") or {}).get("data")
    if not data:
        return None
    return scene_ids(from_dict(DataConfig, data), "pretrain")


def check_held_out(encoders: list[Path], data: DataConfig) -> None:
    test = scene_ids(data, "test")
    for path in encoders:
        seen = pretraining_scene_ids(read_encoder_info(path))
        if seen is not None and seen & test:
            raise InputError(
                f"compare: {path} was pretrained on {len(seen & test)} of the test scenes; pick a data config "
                "whose test split is disjoint from every encoder's pretraining scenes"
            )


def summarise(values: list[float]) -> tuple[float, float, int]:
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std, n


@dataclass
class Entry:
    """One line of the comparison: a label, a factory of fresh encoders, their architecture and, for
    point encoders, the input features they take (None: ``downstream.points.features``)."""

    name: str
    factory: Callable
    architecture: str
    point_features: str | None = None

    def downstream(self, ds: DownstreamConfig) -> DownstreamConfig:
        """``ds`` with this entry's input features."""
        if self.point_features is None or self.point_features == ds.points.features:
            return ds
        return replace(ds, points=replace(ds.points, features=self.point_features))


def build_entries(cfg: CompareConfig, encoders: list[Path]) -> list[Entry]:
    """The encoders, the scratch baselines (first encoder of each family) and the scratch specs."""
    infos = [read_encoder_info(p) for p in encoders]
    names = cfg.names or [str((info.get("pretraining") or {}).get("method", p.name)) for info, p in zip(infos, encoders)]
    entries = [Entry(name, encoder_factory(path), info["architecture"], point_features_of(info))
               for name, path, info in zip(names, encoders, infos)]
    if cfg.scratch:
        first = {}  # family -> (path, info) of its first encoder
        for path, info in zip(encoders, infos):
            first.setdefault(architecture_family(info["architecture"]), (path, info))
        for path, info in first.values():
            name = "scratch" if len(first) == 1 else f"scratch ({info['architecture']})"
            entries.append(Entry(name, encoder_factory(path, scratch=True), info["architecture"], point_features_of(info)))
    point_fields = {"in_channels": cfg.downstream.points.in_channels}
    for spec in cfg.architectures:
        architecture = spec.split(":")[0]
        fields = point_fields if architecture_family_or_none(architecture) == "points" else {}
        entries.append(Entry(f"{spec} (scratch)", architecture_factory(spec, **fields), architecture))
    seen = set()
    for entry in entries:
        if entry.name in seen:
            raise InputError(f"compare: two entries are named {entry.name!r}; give each encoder a label with --names")
        seen.add(entry.name)
    return entries


def point_features_of(info: dict) -> str | None:
    """The ``downstream.points.features`` an exported point encoder takes (from its ``in_channels``, as
    ``renderssl finetune`` does); None for image encoders."""
    if architecture_family(info["architecture"]) != "points":
        return None
    channels = info["config"].get("in_channels")
    features = features_for_channels(channels)
    if features is None:
        raise InputError(f"compare: no point features give {channels} input channels; expected 3 (color) or 6 (color_normal)")
    return features


def architecture_family_or_none(architecture: str) -> str | None:
    """The family of a spec's architecture, None for an unknown one (architecture_factory reports it)."""
    try:
        return architecture_family(architecture)
    except InputError:
        return None


def run_compare(cfg: CompareConfig, log=print) -> dict:
    encoders = [resolve_encoder(p) for p in cfg.encoders]
    entries = build_entries(cfg, encoders)
    plan = assign_tasks({e.name: e.architecture for e in entries}, cfg.tasks)  # task -> entry names; checks fit
    data = cfg.data or (data_config_of(encoders[0]) if encoders else DataConfig())
    check_held_out(encoders, data)
    train_all, test = load_split(data, "train"), load_split(data, "test")
    cache = SceneCache(data.cache_scenes, data.cache_mb)  # every run decodes a frame once
    out = Path(cfg.out_dir)
    results = {"config": to_dict(cfg), "data": to_dict(data), "tasks": {}}
    report = []
    start = time.perf_counter()
    for task, names in plan.items():
        key, label = TASK_METRIC[task]
        task_entries = [e for e in entries if e.name in names]
        runs = {e.name: {f: [] for f in cfg.fractions} for e in task_entries}
        scores = {e.name: {str(f): [] for f in cfg.fractions} for e in task_entries}  # every scalar metric
        for fraction in cfg.fractions:
            for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
                ds = from_dict(DownstreamConfig, {**to_dict(cfg.downstream), "task": task, "label_fraction": fraction, "seed": seed})
                for entry in task_entries:
                    name = entry.name
                    metrics = run_on_splits(entry.factory, train_all, test, entry.downstream(ds), cache)["metrics"]
                    value = metrics[key]
                    runs[name][fraction].append(value)
                    scores[name][str(fraction)].append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
                    log(f"{task} {100 * fraction:g}% labels seed {seed} {name}: {key} {value:.4f} ({time.perf_counter() - start:.0f} s)")
        rows = {name: {f: summarise(v) for f, v in by_f.items()} for name, by_f in runs.items()}
        features = {e.name: e.downstream(cfg.downstream).points.features for e in task_entries
                    if architecture_family(e.architecture) == "points"}
        results["tasks"][task] = {"metric": key, "entries": names, "point_features": features,
                                  "runs": {n: {str(f): v for f, v in r.items()} for n, r in runs.items()},
                                  "all_metrics": scores}
        inputs = ", ".join(f"{name}: {f}" for name, f in features.items())
        report.append(markdown_table(rows, cfg.fractions, label) + (f"\nPoint input features: {inputs}.\n" if inputs else ""))
        plot_metric(rows, cfg.fractions, label, out / f"{task}.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    budget = f"{cfg.downstream.steps} fine-tuning steps, batch {cfg.downstream.batch_size}, {cfg.downstream.mode}"
    (out / "comparison.md").write_text(f"# Downstream comparison\n\nHeld-out test scenes: {len(test)}; {budget}.\n\n" + "\n".join(report))
    log("\n".join(report))
    log(f"wrote {out / 'comparison.md'}, {out / 'results.json'} and the plots in {out}")
    return results
