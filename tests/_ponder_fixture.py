"""Shared set-up of the PonderV2 tests: ponder presets shrunk to 32x24 synthetic rooms."""

from __future__ import annotations

import warnings

import torch

from renderssl.methods.base import MethodOutput, StepContext

SMALL = ["data.width=32", "data.height=24", "data.views=6", "data.train_scenes=2", "data.val_scenes=1",
         "data.test_scenes=1", "train.progress=false"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_setup(preset: str, overrides=(), scenes: int = 2):
    """(method, collated batch of ``scenes`` pretraining samples) of ``preset`` at 32x24."""
    from renderssl.experiment import build_method, load_experiment, pretraining_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MSE-only / no-embeddings notices
        cfg = load_experiment(preset, [*SMALL, f"data.train_scenes={max(scenes, 1)}", *overrides])
        model = build_method(cfg)
    dataset, collate = pretraining_data(cfg)
    return model, collate([dataset[i] for i in range(scenes)])


def fit_fixed_batch(model, batch, steps: int, lr: float) -> tuple[list[float], list[float], MethodOutput]:
    """Adam on one batch with the same rays every step -> (rgb L1 terms, depth L1 terms, last output)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rgb, depth = [], []
    for _ in range(steps):
        out = model(batch, StepContext(generator=gen(0), step=1))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        rgb.append(float(out.terms["rgb"]))
        depth.append(float(out.terms["depth"]))
    return rgb, depth, out
