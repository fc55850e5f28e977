"""An experiment: which recipe, its config, the data, the optimiser and the training loop.

``method`` picks the recipe (the one string registry in renderssl, :data:`RECIPES`); the section of the
same name configures it, with the recipe's own config class (``Method.config_class``). A config holds
its recipe's section only: a section of another recipe is an error, and a run's ``config.yaml`` is
:func:`config_dict` of its config. Presets ship in ``renderssl/configs/*.yaml`` (``tiny`` = CPU
minutes, ``base`` = paper scale); ``load_experiment("gmae_tiny", ["train.steps=50"])`` takes a preset
name or a YAML path.

Earlier runs a recipe builds on (Mask3D's Stage-I MAE) are named by the fields the method lists in
``Method.stage_fields``. Such a field holds a run folder, a weight file, or ``pretrain:<preset>
[key=value ...]``: the preset (with those overrides) is then pretrained first, on the same data with
the same encoder config, into
``<out_dir's parent>/<recipe>_<field>_<preset>/`` (reused when it holds a finished run of the same
config), and the field is set to that folder. When a run is reloaded from its checkpoint these fields
are cleared: the checkpoint already holds the trained weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .methods.base import Method
from .methods.gmae import GMAE
from .methods.gs3 import GS3
from .methods.mae import MAE
from .methods.mask3d import Mask3D
from .methods.nps import NPS
from .methods.ponder import Ponder
from .train.config import DataConfig, OptimConfig, TrainConfig
from .typed_config import ConfigError, apply_overrides, build_with_overrides, from_dict, load_yaml, to_dict

RECIPES: dict[str, type[Method]] = {"mae": MAE, "gmae": GMAE, "mask3d": Mask3D, "gs3": GS3, "ponder": Ponder, "nps": NPS}
PRESET_DIR = Path(__file__).parent / "configs"
STAGE_PREFIX = "pretrain:"
COMMON_SECTIONS = ("method", "data", "optim", "train")


@dataclass
class ExperimentConfig:
    method: str = "gmae"
    recipe: object = None  # the recipe's config (RECIPES[method].config_class); None = its defaults
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.method not in RECIPES:
            raise InputError(f"method: unknown recipe {self.method!r}; expected one of {list(RECIPES)}")
        cls = RECIPES[self.method].config_class
        if self.recipe is None:
            self.recipe = cls()
        elif not isinstance(self.recipe, cls):
            raise InputError(f"{self.method}: expected a {cls.__name__}, got {type(self.recipe).__name__}")

    @property
    def method_config(self):
        return self.recipe

    def __getattr__(self, name: str):  # cfg.gmae, cfg.mask3d: the recipe's section by its name
        if name != "method" and name in RECIPES and self.__dict__.get("method") == name:
            return self.__dict__["recipe"]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


def experiment_from_dict(data: dict, where: str = "") -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a plain dict (``method`` + its section + data/optim/train)."""
    method = data.get("method", "gmae")
    if method not in RECIPES:
        raise ConfigError(f"method: unknown recipe {method!r}; expected one of {list(RECIPES)}")
    others = [k for k in data if k in RECIPES and k != method]
    if others:
        raise ConfigError(f"{others[0]}: a section of another recipe; this config's method is {method!r}")
    unknown = [k for k in data if k not in COMMON_SECTIONS and k != method]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; known keys: {', '.join((*COMMON_SECTIONS, method))}")
    recipe = from_dict(RECIPES[method].config_class, data.get(method) or {}, method)
    common = from_dict(_Common, {k: v for k, v in data.items() if k in ("data", "optim", "train")})
    return ExperimentConfig(method, recipe, common.data, common.optim, common.train)


@dataclass
class _Common:
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def config_dict(cfg: ExperimentConfig) -> dict:
    """The plain dict a run writes as ``config.yaml``: the method, its section, data, optim and train."""
    return {"method": cfg.method, cfg.method: to_dict(cfg.recipe), "data": to_dict(cfg.data),
            "optim": to_dict(cfg.optim), "train": to_dict(cfg.train)}


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
    """A preset name or YAML path plus ``key=value`` overrides; an error names the override or the file
    that causes it (:func:`~renderssl.typed_config.build_with_overrides`)."""
    path = None if name_or_path is None else resolve_config_path(name_or_path)
    data = load_yaml(path) if path is not None else {}
    return build_with_overrides(lambda items: experiment_from_dict(apply_overrides(data, items)), overrides, path)


def build_method(cfg: ExperimentConfig) -> Method:
    """The recipe's method, its weights initialised from ``train.seed`` (one config, one initialisation;
    the global RNG is left as it was)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return RECIPES[cfg.method](cfg.recipe)


def pretraining_data(cfg: ExperimentConfig, split: str = "pretrain"):
    """(Dataset, collate_fn) of ``split``'s scenes in the sample type the recipe trains on. ``"pretrain"``
    is the unlabelled pretraining pool (``data.pretrain_scenes`` / ``data.pretrain_source``; by default
    the train split); the val and test scenes are never in it."""
    from .data.build import sample_dataset

    method = RECIPES[cfg.method]
    return sample_dataset(method.sample_type, cfg.data, split, recipe=cfg.method, options=method.sample_options(cfg.recipe))


# ---- earlier stages --------------------------------------------------------------------------------


def resolve_stages(cfg: ExperimentConfig, log=print, threads=None) -> ExperimentConfig:
    """``cfg`` with every ``pretrain:<preset>`` stage field replaced by a finished run folder of it."""
    from .train.distributed import launcher_rank

    changes = {}
    for name in RECIPES[cfg.method].stage_fields:
        value = getattr(cfg.recipe, name)
        if not (isinstance(value, str) and value.startswith(STAGE_PREFIX)):
            continue
        preset, *overrides = value[len(STAGE_PREFIX):].split()
        stage = stage_config(cfg, preset, name, overrides)
        run = Path(stage.train.out_dir)
        if not finished_run(run, stage):
            if launcher_rank() != 0:
                raise InputError(f"{cfg.method}.{name}: run {value!r} once in one process first (it writes {run})")
            log(f"{cfg.method}.{name}: pretraining {preset} first, into {run}")
            run_pretraining(stage, threads=threads)
        changes[name] = str(run)
    return dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, **changes)) if changes else cfg


def stage_config(cfg: ExperimentConfig, preset: str, field_name: str, overrides: list[str] = ()) -> ExperimentConfig:
    """The earlier run ``preset`` (with ``overrides``), on ``cfg``'s data and device, with ``cfg``'s encoder config."""
    stage = load_experiment(preset, overrides)
    out = Path(cfg.train.out_dir).parent / f"{cfg.method}_{field_name}_{Path(preset).stem}"
    recipe = dataclasses.replace(stage.recipe, encoder=cfg.recipe.encoder)
    train = dataclasses.replace(stage.train, out_dir=str(out), device=cfg.train.device, progress=cfg.train.progress)
    return dataclasses.replace(stage, recipe=recipe, data=cfg.data, train=train)


def finished_run(run: Path, cfg: ExperimentConfig) -> bool:
    """Whether ``run`` holds a finished pretraining of exactly ``cfg``."""
    import yaml

    path = run / "config.yaml"
    if not (run / ENCODER_DIR / "encoder.json").is_file() or not path.is_file():
        return False
    return yaml.safe_load(path.read_text()) == yaml.safe_load(yaml.safe_dump(config_dict(cfg), sort_keys=False))


# ---- runs: pretrain, reload, export ----------------------------------------------------------------

ENCODER_DIR = "encoder"


def run_pretraining(cfg: ExperimentConfig, resume: bool = False, threads=None):
    """Pretrain (or resume) ``cfg`` and export its encoder to ``<out_dir>/encoder`` on rank 0; ``threads``, a
    :class:`~renderssl.threads.ThreadGovernor`, keeps torch's thread count fitted to the load while training."""
    from .data.build import is_image_source, split_manifest
    from .threads import resolve_workers
    from .train import Trainer
    from .train.distributed import launcher_rank

    cfg = resolve_stages(cfg, threads=threads)
    method = build_method(cfg)
    dataset, collate = pretraining_data(cfg)
    validation = pretraining_data(cfg, "val") if cfg.train.val_every else None
    workers = resolve_workers(cfg.data.workers)
    if cfg.data.workers == "auto" and launcher_rank() == 0:
        print(f"data: {workers} DataLoader worker{'s' if workers != 1 else ''} (data.workers=auto: from the usable cores; "
              "data.workers=N to set)")
    trainer = Trainer(method, dataset, cfg.train, cfg.optim, collate_fn=collate, config_dict=config_dict(cfg),
                      num_workers=workers, validation=validation, max_bad_fraction=cfg.data.max_bad_fraction,
                      threads=threads)
    manifest = split_manifest(cfg.data)
    if manifest is not None and launcher_rank() == 0:
        path = Path(cfg.train.out_dir) / "splits.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=1))
        if is_image_source(cfg.data.source):
            print(f"data: the image lists of the split above in {path}")
        else:
            print(f"data: {cfg.data.source} has fewer scenes than the splits need (or data.split_by=frames): split by "
                  f"frames within each scene; frame lists in {path}")
    summary = trainer.fit(resume)
    if launcher_rank() == 0:
        export_method_encoder(cfg, method, Path(cfg.train.out_dir) / ENCODER_DIR, steps=summary.steps_done)
    return summary


def export_method_encoder(cfg: ExperimentConfig, method: Method, out_dir, steps: int | None = None) -> Path:
    from .export import export_encoder

    info = {"method": cfg.method, "steps": steps, "data": to_dict(cfg.data), "method_config": to_dict(cfg.recipe)}
    return export_encoder(method.encoder, method.encoder_architecture, method.encoder_config(), out_dir, pretraining=info)


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
    stages = {name: None for name in RECIPES[cfg.method].stage_fields}  # the checkpoint holds the trained weights
    cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, **stages)) if stages else cfg
    method = build_method(cfg)
    state = load_checkpoint(run_dir / "checkpoints" / checkpoint)
    method.load_state_dict(state["model"])
    return cfg, method.eval(), int(state.get("step", 0))


def export_run(run_dir, out_dir=None, checkpoint: str = "last.pt") -> Path:
    """Export the encoder of a run's checkpoint (default ``<run>/encoder``)."""
    cfg, method, steps = _load_run_checkpoint(run_dir, checkpoint)
    return export_method_encoder(cfg, method, out_dir or Path(run_dir) / ENCODER_DIR, steps=steps)
