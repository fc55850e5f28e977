"""A tiny deterministic recipe for the trainer tests: MLP regression of fixed random data with MSE.

Run as a script (alone or under torchrun) to train it into OUT_DIR:

    python tests/_train_fixture.py OUT_DIR steps=12 ckpt_every=4 [batch_size=4] [noise=0.1] [sleep=0.1] [--resume]

``key=value`` arguments (values parsed as YAML) set ``TrainConfig`` / ``OptimConfig`` fields or the
fixture's own (``FixtureConfig``). The data never depend on the seed of the run; ``noise`` draws input
noise from the step generator (so resume exactness covers the generator); ``nan_at`` makes the loss
NaN at those forward calls; ``sleep`` slows each step so a test can kill the process mid-run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import Dataset

from renderssl.methods.base import Method, MethodOutput, StepContext
from renderssl.train import OptimConfig, Trainer, TrainConfig
from renderssl.train.config import ConfigError, from_dict

SIDE = 4  # targets are (3, SIDE, SIDE) pictures, so previews have something to show


@dataclass
class FixtureConfig:
    samples: int = 48
    dim_in: int = 8
    hidden: int = 16
    noise: float = 0.0  # std of input noise drawn from the step generator
    sleep: float = 0.0  # seconds per forward
    nan_at: list[int] = field(default_factory=list)  # forward calls (1-based) whose loss is NaN
    data_seed: int = 1234
    workers: int = 0  # DataLoader worker processes


class RegressionData(Dataset):
    """``x`` (dim_in,) standard normal; ``y`` (3, SIDE, SIDE) in (0, 1): a fixed smooth function of ``x``."""

    def __init__(self, cfg: FixtureConfig):
        g = torch.Generator().manual_seed(cfg.data_seed)
        self.x = torch.randn(cfg.samples, cfg.dim_in, generator=g)  # (N, D)
        mix = torch.randn(cfg.dim_in, 3 * SIDE * SIDE, generator=g) / cfg.dim_in**0.5
        self.y = torch.sigmoid(torch.sin(self.x @ mix) * 2).view(cfg.samples, 3, SIDE, SIDE)  # (N, 3, S, S)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


class RegressionMethod(Method):
    def __init__(self, cfg: FixtureConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Sequential(nn.Linear(cfg.dim_in, cfg.hidden), nn.LayerNorm(cfg.hidden), nn.GELU())
        self.query = nn.Parameter(torch.zeros(1, cfg.hidden))  # a "token": exempt from weight decay by name
        self.head = nn.Linear(cfg.hidden, 3 * SIDE * SIDE)
        self.calls = 0

    def no_weight_decay(self) -> set[str]:
        return {"query"}

    def forward(self, batch: dict, ctx: StepContext = StepContext()) -> MethodOutput:
        self.calls += 1
        if self.cfg.sleep:
            time.sleep(self.cfg.sleep)
        x = batch["x"]  # (B, D)
        if self.cfg.noise:
            x = x + self.cfg.noise * torch.randn(x.shape, generator=ctx.generator).to(x.device)
        pred = self.head(self.encoder(x) + self.query).view_as(batch["y"])  # (B, 3, S, S)
        loss = F.mse_loss(pred, batch["y"])
        if self.calls in self.cfg.nan_at:
            loss = loss * float("nan")
        terms = {"mse": loss.detach(), "mean_abs": (pred - batch["y"]).abs().mean().detach()}
        renders = {"prediction": pred.detach().clamp(0, 1), "target": batch["y"]}
        return MethodOutput(loss=loss, terms=terms, renders=renders)


def parse(out_dir, items: list[str]) -> tuple[TrainConfig, OptimConfig, FixtureConfig]:
    """``key=value`` items -> the three configs (keys go to the section that has them)."""
    sections = {"train": {"out_dir": str(out_dir), "progress": False}, "optim": {"warmup_steps": 2, "blr": 0.05}, "fixture": {}}
    fields = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in (("train", TrainConfig), ("optim", OptimConfig), ("fixture", FixtureConfig))}
    for item in items:
        key, _, raw = item.partition("=")
        where = next((s for s in ("train", "optim", "fixture") if key in fields[s]), None)
        if where is None:
            raise ConfigError(f"{key}: unknown fixture argument")
        sections[where][key] = yaml.safe_load(raw)
    return from_dict(TrainConfig, sections["train"]), from_dict(OptimConfig, sections["optim"]), from_dict(FixtureConfig, sections["fixture"])


def build(out_dir, *items: str) -> Trainer:
    """A Trainer of the fixture recipe; the model is initialised from ``train.seed``."""
    train, optim, cfg = parse(out_dir, list(items))
    torch.manual_seed(train.seed)
    return Trainer(RegressionMethod(cfg), RegressionData(cfg), train, optim, num_workers=cfg.workers)


def main(argv: list[str]) -> int:
    resume = "--resume" in argv
    args = [a for a in argv if a != "--resume"]
    summary = build(args[0], *args[1:]).fit(resume=resume)
    print(json.dumps({"steps_done": summary.steps_done, "last_loss": summary.last_loss, "skipped": summary.skipped_nonfinite}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
