"""The training engine: typed configs, optimisers (AdamW/Adam/SGD, parameter groups) and per-step
schedules (warm-up + cosine, OneCycle, step decay, constant), resumable data order, checkpoints,
logs, DDP, and the ``Trainer`` that runs any recipe.

Importing this package does not import TensorBoard (the logger does so when it is made).
"""

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, save_run_checkpoint, set_rng_state
from .config import ConfigError, DataConfig, OptimConfig, TrainConfig, from_dict, load_config, save_config, to_dict
from .distributed import DistContext, all_reduce_mean, cleanup, init_distributed, is_main
from .logger import TrainLogger, read_metrics
from .optim import build_optimizer, learning_rate, param_groups
from .sampler import ResumableDistributedSampler, derive_seed
from .schedule import build_scheduler, lr_at_step
from .trainer import NonFiniteLossError, Trainer, TrainSummary, seed_everything

__all__ = [
    "ConfigError",
    "DataConfig",
    "DistContext",
    "NonFiniteLossError",
    "OptimConfig",
    "ResumableDistributedSampler",
    "TrainConfig",
    "TrainLogger",
    "TrainSummary",
    "Trainer",
    "all_reduce_mean",
    "build_optimizer",
    "build_scheduler",
    "cleanup",
    "derive_seed",
    "from_dict",
    "init_distributed",
    "is_main",
    "learning_rate",
    "load_checkpoint",
    "load_config",
    "lr_at_step",
    "param_groups",
    "read_metrics",
    "rng_state",
    "save_checkpoint",
    "save_config",
    "save_run_checkpoint",
    "seed_everything",
    "set_rng_state",
    "to_dict",
]
