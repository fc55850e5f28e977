"""An experiment: which recipe, its config, the data, the optimiser and the training loop.

``method`` picks the recipe (the one string registry in renderssl); the section of the same name
configures it. Presets ship in ``renderssl/configs/*.yaml`` (``tiny`` = CPU minutes, ``base`` = paper
scale); ``load_experiment("gmae_tiny", ["train.steps=50"])`` takes a preset name or a YAML path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .methods.base import Method
from .methods.gmae import GMAE, GMAEConfig
from .methods.mae import MAE, MAEConfig
from .train.config import DataConfig, OptimConfig, TrainConfig, load_config

RECIPES = {"mae": MAE, "gmae": GMAE}
PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class ExperimentConfig:
    method: str = "gmae"
    mae: MAEConfig = field(default_factory=MAEConfig)
    gmae: GMAEConfig = field(default_factory=GMAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.method not in RECIPES:
            raise InputError(f"method: unknown recipe {self.method!r}; expected one of {list(RECIPES)}")

    @property
    def method_config(self):
        return getattr(self, self.method)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise InputError(f"{name_or_path}: neither a config file nor a preset; presets: {', '.join(presets())}")
    return preset


def load_experiment(name_or_path=None, overrides: list[str] = ()) -> ExperimentConfig:
    path = None if name_or_path is None else resolve_config_path(name_or_path)
    return load_config(ExperimentConfig, path, overrides)


def build_method(cfg: ExperimentConfig) -> Method:
    return RECIPES[cfg.method](cfg.method_config)


def pretraining_dataset(cfg: ExperimentConfig):
    """Images of the training scenes (the val and test scenes are never seen in pretraining)."""
    from .data.build import load_split
    from .data.datasets import ImageDataset

    return ImageDataset(load_split(cfg.data, "train"), size=(cfg.data.height, cfg.data.width))
