"""The engine's own configs (data, optimiser, training loop); the generic dataclass <-> YAML machinery
lives in :mod:`renderssl.typed_config` and is re-exported here."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..typed_config import ConfigError, apply_overrides, from_dict, load_config, load_yaml, save_config, to_dict

__all__ = ["ConfigError", "DataConfig", "OptimConfig", "TrainConfig", "apply_overrides", "from_dict", "load_config",
           "load_yaml", "save_config", "to_dict"]


# ---- the experiment ------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, per iteration (MAE's recipe)."""

    lr: float | None = None  # absolute learning rate; None = blr * total batch / 256 (MAE's rule)
    blr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05  # not applied to biases, norms, tokens and position embeddings
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    grad_clip: float | None = None  # max global gradient norm; None = no clipping (MAE pretraining)


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
    pretrain_scenes: int | None = None  # synthetic: size of the unlabelled pretraining pool (None = the train split)
    pretrain_source: str | None = None  # folder source: a separate folder of unlabelled pretraining scenes
    workers: int = 0  # DataLoader worker processes decoding samples in parallel
    cache_scenes: int = 8  # opened scenes kept per process (bounded LRU)
    max_bad_fraction: float = 0.01  # stop when more than this fraction of sample reads fail (after 100 reads)

    def __post_init__(self):
        if self.workers < 0 or self.cache_scenes < 1:
            raise InputError(f"workers must be >= 0 and cache_scenes >= 1, got {self.workers}, {self.cache_scenes}")
        if self.pretrain_scenes is not None and self.pretrain_scenes < 1:
            raise InputError(f"pretrain_scenes must be >= 1 or null, got {self.pretrain_scenes}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise InputError(f"max_bad_fraction must lie in [0, 1], got {self.max_bad_fraction}")
