"""``renderssl sweep FILE``: pretrain every point of a grid of config values, then compare them.

A sweep file is YAML with ``base`` (a preset or config path), ``grid`` (dotted key -> list of values;
every combination is one run), optional ``overrides`` (key=value applied to every run), ``out_dir``
and optional ``compare`` (a :class:`~renderssl.compare.CompareConfig` section without ``encoders``,
which the sweep fills in). ``configs/mask3d_ratio_grid.yaml`` is the paper's mask-ratio ablation
(RGB keep x depth keep, its Table 13).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .experiment import PRESET_DIR, load_experiment, run_pretraining
from .train.config import from_dict, load_yaml


@dataclass
class SweepConfig:
    base: str = "mask3d_tiny"
    grid: dict = field(default_factory=dict)  # dotted key -> list of values
    overrides: list[str] = field(default_factory=list)
    out_dir: str = "runs/sweep"
    compare: dict | None = None  # CompareConfig fields except encoders; None = no comparison

    def __post_init__(self):
        if not self.grid or any(not isinstance(v, list) or not v for v in self.grid.values()):
            raise InputError("sweep.grid: give every key a non-empty list of values")


def grid_points(grid: dict) -> list[dict]:
    """Every combination of the grid's values, in the order of the keys."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(point: dict) -> str:
    return "_".join(f"{key.split('.')[-1]}={value}" for key, value in point.items())


def load_sweep(name_or_path) -> SweepConfig:
    path = Path(name_or_path)
    if not path.exists() and (PRESET_DIR / f"{name_or_path}.yaml").is_file():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    return from_dict(SweepConfig, load_yaml(path), "sweep")


def run_sweep(cfg: SweepConfig, log=print, threads=None) -> dict:
    out = Path(cfg.out_dir)
    runs = {}
    points = grid_points(cfg.grid)
    for i, point in enumerate(points):
        name = run_name(point)
        overrides = [*cfg.overrides, *(f"{k}={v}" for k, v in point.items()), f"train.out_dir={out / name}"]
        log(f"[{i + 1}/{len(points)}] pretraining {name}")
        run_pretraining(load_experiment(cfg.base, overrides), threads=threads)
        runs[name] = out / name
    result = {"runs": {k: str(v) for k, v in runs.items()}}
    if cfg.compare is not None:
        from .compare import CompareConfig, run_compare

        spec = {**cfg.compare, "encoders": [str(p) for p in runs.values()], "names": list(runs), "out_dir": str(out / "compare")}
        result["compare"] = run_compare(from_dict(CompareConfig, spec, "sweep.compare"), log=log)
    return result
