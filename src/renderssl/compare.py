"""``renderssl compare``: pretrained encoders side by side against the same encoder from scratch.

Every encoder (an exported encoder folder, or a ``renderssl pretrain`` run folder) and a scratch
baseline of the first encoder's architecture (plus one scratch entry per ``architectures`` spec such
as ``sparse_unet:small``) is fine-tuned on the same downstream task, with the same
train/test scenes, label subsets, budget and seeds, at each label fraction; scores are taken on the
held-out test scenes. The test scenes are checked against every encoder's pretraining scenes: an
encoder that saw a test scene in pretraining is refused. Writes ``results.json`` (the compared metric
per run under ``runs``, every scalar metric per run under ``all_metrics``), ``comparison.md``
(one table per task) and ``<task>.png`` (metric vs label fraction, one line per method, +/- one std).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .data.build import load_split, split_range
from .errors import InputError
from .eval.downstream import DownstreamConfig, run_on_splits
from .eval.report import markdown_table, plot_metric
from .export import POINT_ARCHITECTURES, read_encoder_info
from .finetune import architecture_factory, data_config_of, encoder_factory
from .train.config import DataConfig, from_dict, to_dict

TASK_METRIC = {
    "segmentation": ("miou", "mIoU (higher is better)"),
    "depth": ("abs_rel", "depth AbsRel (lower is better)"),
    "classification": ("top1", "top-1 accuracy (higher is better)"),
    "segmentation3d": ("miou", "3D segmentation mIoU (higher is better)"),
}


@dataclass
class CompareConfig:
    encoders: list[str] = field(default_factory=list)  # exported encoder folders or pretraining run folders
    architectures: list[str] = field(default_factory=list)  # scratch-only entries, "<architecture>:<preset>"
    names: list[str] = field(default_factory=list)  # default: the recipe each encoder was pretrained with
    tasks: list[str] = field(default_factory=lambda: ["segmentation", "depth"])
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5, 1.0])
    seeds: int = 3
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
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions) or self.seeds < 1:
            raise InputError("compare: fractions must lie in (0, 1] and seeds must be >= 1")


def resolve_encoder(path) -> Path:
    """A run folder stands for its exported ``encoder/``."""
    path = Path(path)
    return path / "encoder" if (path / "encoder" / "encoder.json").is_file() else path


def pretraining_scene_ids(info: dict) -> set | None:
    """The scenes an encoder was pretrained on, as (source, index) pairs (None if unrecorded)."""
    data = (info.get("pretraining") or {}).get("data")
    if not data:
        return None
    cfg = from_dict(DataConfig, data)
    base = cfg.seed if cfg.source == "synthetic" else 0
    return {(cfg.source, base + i) for i in split_range(cfg, "train")}


def check_held_out(encoders: list[Path], data: DataConfig) -> None:
    base = data.seed if data.source == "synthetic" else 0
    test = {(data.source, base + i) for i in split_range(data, "test")}
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


def run_compare(cfg: CompareConfig, log=print) -> dict:
    encoders = [resolve_encoder(p) for p in cfg.encoders]
    names = cfg.names or [str((read_encoder_info(p).get("pretraining") or {}).get("method", p.name)) for p in encoders]
    data = cfg.data or (data_config_of(encoders[0]) if encoders else DataConfig())
    check_held_out(encoders, data)
    entries = [(name, encoder_factory(path)) for name, path in zip(names, encoders)]
    if cfg.scratch and encoders:
        entries.append(("scratch", encoder_factory(encoders[0], scratch=True)))
    point_fields = {"in_channels": cfg.downstream.points.in_channels}
    entries += [(f"{spec} (scratch)", architecture_factory(spec, **(point_fields if spec.split(":")[0] in POINT_ARCHITECTURES else {})))
                for spec in cfg.architectures]
    train_all, test = load_split(data, "train"), load_split(data, "test")
    out = Path(cfg.out_dir)
    results = {"config": to_dict(cfg), "data": to_dict(data), "tasks": {}}
    report = []
    start = time.perf_counter()
    for task in cfg.tasks:
        key, label = TASK_METRIC[task]
        runs = {name: {f: [] for f in cfg.fractions} for name, _ in entries}
        scores = {name: {str(f): [] for f in cfg.fractions} for name, _ in entries}  # every scalar metric
        for fraction in cfg.fractions:
            for seed in range(cfg.seeds):
                ds = from_dict(DownstreamConfig, {**to_dict(cfg.downstream), "task": task, "label_fraction": fraction, "seed": seed})
                for name, factory in entries:
                    metrics = run_on_splits(factory, train_all, test, ds)["metrics"]
                    value = metrics[key]
                    runs[name][fraction].append(value)
                    scores[name][str(fraction)].append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
                    log(f"{task} {100 * fraction:g}% labels seed {seed} {name}: {key} {value:.4f} ({time.perf_counter() - start:.0f} s)")
        rows = {name: {f: summarise(v) for f, v in by_f.items()} for name, by_f in runs.items()}
        results["tasks"][task] = {"metric": key, "runs": {n: {str(f): v for f, v in r.items()} for n, r in runs.items()},
                                  "all_metrics": scores}
        report.append(markdown_table(rows, cfg.fractions, label))
        plot_metric(rows, cfg.fractions, label, out / f"{task}.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    budget = f"{cfg.downstream.steps} fine-tuning steps, batch {cfg.downstream.batch_size}, {cfg.downstream.mode}"
    (out / "comparison.md").write_text(f"# Downstream comparison\n\nHeld-out test scenes: {len(test)}; {budget}.\n\n" + "\n".join(report))
    log("\n".join(report))
    log(f"wrote {out / 'comparison.md'}, {out / 'results.json'} and the plots in {out}")
    return results
