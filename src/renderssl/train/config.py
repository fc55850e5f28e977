"""The engine's own configs (data, optimiser, training loop); the generic dataclass <-> YAML machinery
lives in :mod:`renderssl.typed_config` and is re-exported here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import InputError
from ..typed_config import ConfigError, apply_overrides, from_dict, load_config, load_yaml, save_config, to_dict

__all__ = ["ConfigError", "DataConfig", "GroupOverride", "OptimConfig", "TrainConfig", "apply_overrides", "from_dict",
           "load_config", "load_yaml", "save_config", "to_dict"]


# ---- the experiment ------------------------------------------------------------------------------


OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "step", "constant")
ANNEAL_STRATEGIES = ("cos", "linear")


@dataclass
class GroupOverride:
    """Config override of one of a method's named parameter groups (``Method.param_groups()``);
    None keeps the method's value (or, if it gives none, the optimiser's)."""

    lr: float | None = None  # peak learning rate of the group (absolute)
    weight_decay: float | None = None  # applied to the group's decayed parameters only

    def __post_init__(self):
        if self.lr is not None and self.lr < 0:
            raise InputError(f"lr must be >= 0 or null, got {self.lr}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise InputError(f"weight_decay must be >= 0 or null, got {self.weight_decay}")


@dataclass
class OptimConfig:
    """Optimiser and per-step learning-rate schedule (see :mod:`renderssl.train.optim` and
    :mod:`renderssl.train.schedule`). The defaults are MAE's recipe: AdamW, linear warm-up then
    half-cycle cosine to ``min_lr``, per iteration."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float | None = None  # absolute peak learning rate; None = blr * total batch / 256 (MAE's rule)
    blr: float = 1.5e-4
    min_lr: float = 0.0  # cosine only: the floor (groups with their own lr get it scaled by lr_group / lr)
    weight_decay: float = 0.05  # not applied to biases, norms, tokens and position embeddings
    betas: tuple[float, float] = (0.9, 0.95)  # adamw / adam
    eps: float = 1e-8  # adamw / adam
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd; needs momentum > 0
    grad_clip: float | None = None  # max global gradient norm; None = no clipping (MAE pretraining)
    schedule: Literal["cosine", "onecycle", "step", "constant"] = "cosine"
    warmup_steps: int = 100  # linear warm-up of cosine / step / constant (onecycle warms up in its first phase)
    warmup_from_zero: bool = True  # True: lr(t) = peak t / warmup (MAE); False: peak (t + 1) / warmup
    step_size: int | None = None  # step: lr x gamma every step_size optimizer steps (required by step)
    gamma: float = 0.1  # step: the decay factor (torch StepLR's default)
    pct_start: float = 0.3  # onecycle (torch OneCycleLR's defaults from here on)
    div_factor: float = 25.0  # onecycle: start lr = peak / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = start lr / final_div_factor
    anneal_strategy: Literal["cos", "linear"] = "cos"  # onecycle
    three_phase: bool = False  # onecycle
    cycle_momentum: bool = True  # onecycle: momentum (sgd) or beta1 (adam/adamw) cycles inversely to the lr
    base_momentum: float = 0.85  # onecycle: momentum at the peak lr
    max_momentum: float = 0.95  # onecycle: momentum at the start and end
    groups: dict[str, GroupOverride] = field(default_factory=dict)  # overrides of the method's param groups

    def __post_init__(self):
        def bad(key: str, why: str):
            raise InputError(f"{key}: {why}, got {getattr(self, key)!r}")

        choices = {"name": OPTIMIZERS, "schedule": SCHEDULES, "anneal_strategy": ANNEAL_STRATEGIES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                bad(key, f"expected one of {list(allowed)}")
        if self.lr is not None and not self.lr > 0:
            bad("lr", "must be > 0 or null")
        positive = ("blr", "eps", "gamma", "div_factor", "final_div_factor")
        for key in positive:
            if not getattr(self, key) > 0:
                bad(key, "must be > 0")
        for key in ("min_lr", "weight_decay"):
            if getattr(self, key) < 0:
                bad(key, "must be >= 0")
        if not all(0 <= b < 1 for b in self.betas):
            bad("betas", "each must lie in [0, 1)")
        for key in ("momentum", "base_momentum", "max_momentum"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "must lie in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise InputError("nesterov: needs momentum > 0, got momentum 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            bad("grad_clip", "must be > 0 or null")
        if self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0")
        if self.step_size is not None and self.step_size < 1:
            bad("step_size", "must be >= 1 or null")
        if self.schedule == "step" and self.step_size is None:
            bad("step_size", "is required by schedule 'step'")
        if not 0 < self.pct_start < (0.5 if self.three_phase else 1):
            bad("pct_start", "must lie in (0, 0.5) with three_phase" if self.three_phase else "must lie in (0, 1)")
        if self.base_momentum > self.max_momentum:
            bad("base_momentum", f"must be <= max_momentum ({self.max_momentum})")
        groups = {}
        for name, override in self.groups.items():  # plain dicts when built in Python, not through from_dict
            if not isinstance(name, str):
                raise InputError(f"groups: group names must be strings, got {name!r}")
            if not isinstance(override, GroupOverride):
                override = from_dict(GroupOverride, override, f"groups.{name}")
            groups[name] = override
        self.groups = groups


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # per process
    seed: int = 0
    out_dir: str = "runs/default"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 10
    ckpt_every: int = 200
    preview_every: int = 200
    keep_checkpoints: int = 2  # step checkpoints kept beside last.pt
    progress: bool = True  # tqdm bar on rank 0
    accumulate: int = 1  # micro-batches of batch_size per optimizer step (gradient accumulation)
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast dtype of the forward pass (bf16/fp16 on CUDA)
    val_every: int = 0  # steps between validation passes on the val scenes; 0 = none
    val_batches: int = 4  # batches per validation pass

    def __post_init__(self):
        for key in ("steps", "batch_size", "log_every", "ckpt_every", "preview_every", "accumulate", "val_batches"):
            if getattr(self, key) < 1:
                raise InputError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.val_every < 0:
            raise InputError(f"val_every must be >= 0, got {self.val_every}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision: {self.precision!r} is not one of {list(PRECISIONS)}")


@dataclass
class DataConfig:
    """Where pretraining and downstream images come from.

    ``source: synthetic`` generates scenes (seeds ``seed + i``); train, val and test splits are
    disjoint sets of scenes, so test scenes are never seen in pretraining or fine-tuning. Any other
    ``source`` is a folder of scene folders in a format the readers detect.
    """

    source: str = "synthetic"
    kind: str = "room"  # synthetic scene kind: room | object
    width: int = 64
    height: int = 64
    views: int = 10  # views per synthetic scene
    train_scenes: int = 32
    val_scenes: int = 4
    test_scenes: int = 8
    seed: int = 0
    every_k: int = 1  # keep every k-th frame of real scenes
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGBA frames (NeRF synthetic) are composited over it
    blender_split: str | None = None  # transforms_<split>.json of a Blender scene; None = transforms.json or every split
    llff_factor: int | None = None  # LLFF images_<n>/; None = the smallest downsampled folder at least data.height x width
    resize: str = "crop"  # crop (centre crop to the aspect ratio, then resize; K follows) | stretch (resize only)
    split_by: str = "auto"  # scenes | frames (train/val/test frames within each scene) | auto (frames when too few scenes)
    pretrain_scenes: int | None = None  # synthetic: size of the unlabelled pretraining pool (None = the train split)
    pretrain_source: str | None = None  # folder source: a separate folder of unlabelled pretraining scenes
    workers: int | Literal["auto"] = "auto"  # DataLoader worker processes; auto: from the usable cores (renderssl.threads)
    cache_scenes: int = 64  # opened scenes kept per process (bounded LRU)
    cache_mb: float = 512.0  # decoded frames kept per process, in MB (bounded LRU; split among workers)
    max_bad_fraction: float = 0.05  # stop when more than this fraction of sample reads fail

    def __post_init__(self):
        if (self.workers != "auto" and self.workers < 0) or self.cache_scenes < 1 or self.cache_mb < 0:
            raise InputError(f"workers and cache_mb must be >= 0 and cache_scenes >= 1, got {self.workers}, {self.cache_mb}, {self.cache_scenes}")
        if self.pretrain_scenes is not None and self.pretrain_scenes < 1:
            raise InputError(f"pretrain_scenes must be >= 1 or null, got {self.pretrain_scenes}")
        if self.resize not in ("crop", "stretch"):
            raise InputError(f"resize: {self.resize!r} is not one of ['crop', 'stretch']")
        if self.split_by not in ("scenes", "frames", "auto"):
            raise InputError(f"split_by: {self.split_by!r} is not one of ['scenes', 'frames', 'auto']")
        if self.llff_factor is not None and self.llff_factor < 1:
            raise InputError(f"llff_factor must be >= 1 or null, got {self.llff_factor}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise InputError(f"max_bad_fraction must lie in [0, 1], got {self.max_bad_fraction}")
