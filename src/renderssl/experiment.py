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
from .methods.mask3d import Mask3D, Mask3DConfig
from .train.config import DataConfig, OptimConfig, TrainConfig, load_config

RECIPES = {"mae": MAE, "gmae": GMAE, "mask3d": Mask3D}
PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class ExperimentConfig:
    method: str = "gmae"
    mae: MAEConfig = field(default_factory=MAEConfig)
    gmae: GMAEConfig = field(default_factory=GMAEConfig)
    mask3d: Mask3DConfig = field(default_factory=Mask3DConfig)
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


def pretraining_data(cfg: ExperimentConfig):
    """(Dataset, collate_fn) of the training scenes in the sample type the recipe trains on: single
    images (``sample_type = "image"``) or RGB-D frames (``"rgbd"``). The val and test scenes are never
    seen in pretraining."""
    from .data.build import load_split
    from .data.datasets import ImageDataset, RGBDFrameDataset, collate_stacked

    scenes = load_split(cfg.data, "train")
    if getattr(RECIPES[cfg.method], "sample_type", "image") == "rgbd":
        return RGBDFrameDataset(scenes, size=(cfg.data.height, cfg.data.width)), collate_stacked
    return ImageDataset(scenes, size=(cfg.data.height, cfg.data.width)), None


# ---- runs: pretrain, reload, export ----------------------------------------------------------------

ENCODER_DIR = "encoder"


def run_pretraining(cfg: ExperimentConfig, resume: bool = False):
    """Pretrain (or resume) ``cfg`` and export its encoder to ``<out_dir>/encoder`` on rank 0."""
    from .train import Trainer
    from .train.config import to_dict
    from .train.distributed import launcher_rank

    method = build_method(cfg)
    dataset, collate = pretraining_data(cfg)
    summary = Trainer(method, dataset, cfg.train, cfg.optim, collate_fn=collate, config_dict=to_dict(cfg)).fit(resume)
    if launcher_rank() == 0:
        export_method_encoder(cfg, method, Path(cfg.train.out_dir) / ENCODER_DIR, steps=summary.steps_done)
    return summary


def export_method_encoder(cfg: ExperimentConfig, method: Method, out_dir, steps: int | None = None) -> Path:
    from .export import export_encoder
    from .train.config import to_dict

    info = {"method": cfg.method, "steps": steps, "data": to_dict(cfg.data), "method_config": to_dict(cfg.method_config)}
    return export_encoder(method.encoder, "vit", method.encoder_config(), out_dir, pretraining=info)


def load_run(run_dir, checkpoint: str = "last.pt") -> tuple[ExperimentConfig, Method]:
    """The config and the trained method of a ``renderssl pretrain`` output folder."""
    cfg, method, _ = _load_run_checkpoint(run_dir, checkpoint)
    return cfg, method


def _load_run_checkpoint(run_dir, checkpoint: str) -> tuple[ExperimentConfig, Method, int]:
    """(config, method in eval mode with the checkpoint's weights, the checkpoint's step)."""
    from .train.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise InputError(f"{run_dir}: not a pretraining run (no config.yaml)")
    cfg = load_experiment(config_path)
    if cfg.method == "mask3d":
        cfg.mask3d.init_from = None  # the checkpoint holds the trained weights; the Stage-I source may be gone
    method = build_method(cfg)
    state = load_checkpoint(run_dir / "checkpoints" / checkpoint)
    method.load_state_dict(state["model"])
    return cfg, method.eval(), int(state.get("step", 0))


def export_run(run_dir, out_dir=None, checkpoint: str = "last.pt") -> Path:
    """Export the encoder of a run's checkpoint (default ``<run>/encoder``)."""
    cfg, method, steps = _load_run_checkpoint(run_dir, checkpoint)
    return export_method_encoder(cfg, method, out_dir or Path(run_dir) / ENCODER_DIR, steps=steps)
