"""Optimisers and schedules: OneCycle and step decay against torch's own schedulers step by step, warm-ups
and the cosine schedule against hand-written formulas, per-group lrs and weight decays as configured,
exact resume from state dicts, the downstream fine-tuning rule, config validation and the Mask3D preset."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import renderssl
from renderssl.errors import InputError
from renderssl.methods.base import ParamGroup
from renderssl.train.config import ConfigError, OptimConfig, from_dict
from renderssl.train.optim import build_optimizer
from renderssl.train.schedule import build_scheduler

STEPS = 300


class _Toy(nn.Module):
    """encoder / decoder / head, with a bias, a norm and a frozen part, like a method."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
        self.decoder = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.head(self.decoder(self.encoder(x)))


GROUPS = (ParamGroup("encoder", ("encoder.",), lr=0.02), ParamGroup("decoder", ("decoder.",), weight_decay=0.0))


def trace(optimizer, scheduler, steps: int, momentum_key: str | None) -> list[list[tuple[float, float | None]]]:
    """Per step, (lr, momentum) of every group, read before the optimizer step as the trainer does."""
    out = []
    for _ in range(steps):
        row = []
        for g in optimizer.param_groups:
            m = None if momentum_key is None else (g["betas"][0] if momentum_key == "betas" else g["momentum"])
            row.append((g["lr"], m))
        out.append(row)
        optimizer.step()
        scheduler.step()
    return out


def reference_groups(model: nn.Module, optimizer) -> list[dict]:
    """The same parameters and peak lrs as ``optimizer``'s groups, for a torch-built reference optimizer."""
    by_id = {id(p): p for p in model.parameters()}
    return [{"params": [by_id[id(p)] for p in g["params"]], "lr": g["initial_lr"]} for g in optimizer.param_groups]


def assert_traces_equal(ours, theirs):
    assert len(ours) == len(theirs)
    for t, (a, b) in enumerate(zip(ours, theirs)):
        for (lr_a, m_a), (lr_b, m_b) in zip(a, b, strict=True):
            assert lr_a == pytest.approx(lr_b, rel=1e-12, abs=1e-18), t
            assert (m_a is None) == (m_b is None) and (m_a is None or m_a == pytest.approx(m_b, rel=1e-12)), t


# ---- against torch's schedulers ------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["sgd_nesterov_cos", "adamw_linear_three_phase"])
def test_onecycle_matches_torch_onecyclelr_per_group_lr_and_momentum(variant):
    if variant == "sgd_nesterov_cos":  # PonderV2 / Pointcept indoor: SGD nesterov + OneCycle(0.05, cos, 10, ...)
        cfg = OptimConfig(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="onecycle",
                          pct_start=0.05, div_factor=10.0, final_div_factor=1000.0)
        key, kw = "momentum", dict(anneal_strategy="cos", three_phase=False)
    else:
        cfg = OptimConfig(name="adamw", lr=1e-3, betas=(0.9, 0.999), schedule="onecycle", pct_start=0.2,
                          anneal_strategy="linear", three_phase=True, base_momentum=0.8, max_momentum=0.9)
        key, kw = "betas", dict(anneal_strategy="linear", three_phase=True)
    model = _Toy()
    opt = build_optimizer(model, cfg, total_batch=1, groups=GROUPS)
    assert len({g["lr"] for g in opt.param_groups}) == 2  # encoder 0.02 vs the rest at cfg.lr
    ours = trace(opt, build_scheduler(opt, cfg, STEPS), STEPS, key)

    if cfg.name == "sgd":
        ref = torch.optim.SGD(reference_groups(model, opt), lr=cfg.lr, momentum=0.9, nesterov=True)
    else:
        ref = torch.optim.AdamW(reference_groups(model, opt), lr=cfg.lr, betas=(0.9, 0.999))
    peaks = [g["lr"] for g in ref.param_groups]
    sched = torch.optim.lr_scheduler.OneCycleLR(
        ref, max_lr=peaks, total_steps=STEPS, pct_start=cfg.pct_start, div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor, base_momentum=cfg.base_momentum, max_momentum=cfg.max_momentum, **kw)
    theirs = trace(ref, sched, STEPS, key)
    assert_traces_equal(ours, theirs)
    # shape: starts at peak / div_factor, peaks at the peak, ends at peak / div / final_div, per group
    for g, peak in enumerate(peaks):
        lrs = [row[g][0] for row in ours]
        assert lrs[0] == pytest.approx(peak / cfg.div_factor) and max(lrs) == pytest.approx(peak)
        assert lrs[-1] == pytest.approx(peak / cfg.div_factor / cfg.final_div_factor)


def test_adam_step_decay_matches_torch_steplr_per_group():
    cfg = OptimConfig(name="adam", lr=5e-4, betas=(0.9, 0.999), weight_decay=0.0, schedule="step", step_size=7,
                      gamma=0.5, warmup_steps=0)
    model = _Toy()
    opt = build_optimizer(model, cfg, total_batch=1, groups=(ParamGroup("cnn", ("encoder.",), lr=1e-3),))
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    ours = trace(opt, build_scheduler(opt, cfg, STEPS), STEPS, "betas")

    ref = torch.optim.Adam(reference_groups(model, opt), lr=cfg.lr, betas=(0.9, 0.999))
    theirs = trace(ref, torch.optim.lr_scheduler.StepLR(ref, step_size=7, gamma=0.5), STEPS, "betas")
    assert_traces_equal(ours, theirs)
    assert ours[0][0][0] == 1e-3 and ours[7][0][0] == 5e-4 and ours[14][-1][0] == 5e-4 / 4
    assert all(m == 0.9 for row in ours for _, m in row)  # beta1 untouched by step decay


def test_warmups_by_hand():
    def lrs(steps: int, **kw):
        model = nn.Linear(2, 2)
        cfg = OptimConfig(lr=1.0, **kw)
        opt = build_optimizer(model, cfg, total_batch=1)
        return [row[0][0] for row in trace(opt, build_scheduler(opt, cfg, 20), steps, None)]

    # step: decay counted from step 0, times the warm-up factor t / W
    assert lrs(8, schedule="step", step_size=3, gamma=0.5, warmup_steps=4) == pytest.approx(
        [0.0, 0.25, 0.5, 0.75 * 0.5, 0.5, 0.5, 0.25, 0.25])
    assert lrs(5, schedule="constant", warmup_steps=4) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    late = lrs(5, schedule="constant", warmup_steps=4, warmup_from_zero=False)
    assert late == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert lrs(3, schedule="constant", warmup_steps=0) == [1.0, 1.0, 1.0]
    # cosine with the (t + 1) / W warm-up: 1 / 4 first, the peak at t = W - 1 and t = W
    cos = lrs(6, schedule="cosine", warmup_steps=4, warmup_from_zero=False)
    assert cos[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert cos[5] == pytest.approx(0.5 * (1 + math.cos(math.pi / 16)))


def mae_lr(t: int, base_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """The pretraining schedule as it was before schedules were configurable (MAE's lr_sched per step)."""
    if t < warmup:
        return base_lr * t / warmup
    progress = min((t - warmup) / max(1, total - warmup), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def test_cosine_schedule_equals_the_previous_warmup_cosine_per_group():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=20)
    model = _Toy()
    opt = build_optimizer(model, cfg, total_batch=1, groups=(ParamGroup("encoder", ("encoder.",), lr=5e-4),))
    ours = trace(opt, build_scheduler(opt, cfg, STEPS), STEPS + 3, None)
    for t, row in enumerate(ours):
        lrs = dict(zip([g["name"] for g in opt.param_groups], [lr for lr, _ in row]))
        assert lrs["default"] == pytest.approx(mae_lr(t, 1e-3, 1e-5, 20, STEPS), rel=1e-12, abs=1e-18), t
        # a group at half the lr follows the same shape (min_lr scaled alike), as LambdaLR did
        assert lrs["encoder"] == pytest.approx(0.5 * mae_lr(t, 1e-3, 1e-5, 20, STEPS), rel=1e-12, abs=1e-18), t
    assert ours[-1][-1][0] == 1e-5  # after the last step the default group sits at min_lr exactly


# ---- groups --------------------------------------------------------------------------------------


def by_name(optimizer) -> dict[tuple[str, bool], dict]:
    return {(g["name"], g["decay"]): g for g in optimizer.param_groups}


def test_group_lrs_and_weight_decays_reach_the_optimizer_method_defaults_and_config_overrides():
    model = _Toy()
    cfg = OptimConfig(name="sgd", lr=0.1, weight_decay=1e-4)
    opt = build_optimizer(model, cfg, total_batch=1, groups=GROUPS)
    groups = by_name(opt)
    assert list(groups) == [("encoder", True), ("encoder", False), ("decoder", True), ("decoder", False),
                            ("default", True), ("default", False)]
    assert groups["encoder", True]["names"] == ["encoder.0.weight"]
    assert groups["encoder", False]["names"] == ["encoder.0.bias", "encoder.1.weight", "encoder.1.bias"]
    assert (groups["encoder", True]["lr"], groups["encoder", True]["weight_decay"]) == (0.02, 1e-4)
    assert (groups["encoder", False]["lr"], groups["encoder", False]["weight_decay"]) == (0.02, 0.0)
    assert (groups["decoder", True]["lr"], groups["decoder", True]["weight_decay"]) == (0.1, 0.0)  # method's wd 0
    assert groups["default", True]["names"] == ["head.weight"] and groups["default", True]["weight_decay"] == 1e-4
    assert groups["default", False]["names"] == ["head.bias"]  # the frozen layer is left out
    assert opt.defaults["lr"] == 0.1 and opt.defaults["momentum"] == 0.9 and not opt.defaults["nesterov"]

    # config overrides win over the method's values, field by field
    cfg = from_dict(OptimConfig, {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4,
                                  "groups": {"encoder": {"weight_decay": 0.05}, "decoder": {"lr": 0.3}}})
    groups = by_name(build_optimizer(model, cfg, total_batch=1, groups=GROUPS))
    assert (groups["encoder", True]["lr"], groups["encoder", True]["weight_decay"]) == (0.02, 0.05)
    assert groups["encoder", False]["weight_decay"] == 0.0  # no-decay parameters stay undecayed
    assert (groups["decoder", True]["lr"], groups["decoder", True]["weight_decay"]) == (0.3, 0.0)

    # first matching group wins; "" matches everything, so nothing is left for the default group
    cfg = OptimConfig(name="sgd", lr=0.1, weight_decay=1e-4)
    groups = by_name(build_optimizer(model, cfg, total_batch=1, groups=(ParamGroup("head", ("head.",), lr=1.0),
                                                                         ParamGroup("rest", ("",), lr=2.0))))
    assert set(groups) == {("head", True), ("head", False), ("rest", True), ("rest", False)}
    assert groups["rest", True]["names"] == ["encoder.0.weight", "decoder.weight"]


def test_unknown_group_names_are_an_error_listing_the_method_groups():
    cfg = from_dict(OptimConfig, {"groups": {"encodr": {"lr": 1e-3}}})
    with pytest.raises(InputError, match=r"optim.groups: unknown group\(s\) \['encodr'\]; the method's groups are "
                                         r"\['encoder', 'decoder'\]"):
        build_optimizer(_Toy(), cfg, total_batch=1, groups=GROUPS)
    with pytest.raises(InputError, match="declares no parameter groups"):
        build_optimizer(_Toy(), cfg, total_batch=1)


def test_config_errors_name_the_key():
    def error(data: dict) -> str:
        with pytest.raises(ConfigError) as info:
            from_dict(OptimConfig, data, "optim")
        return str(info.value)

    assert error({"name": "lamb"}) == "optim.name: 'lamb' is not one of ['adamw', 'adam', 'sgd']"
    assert error({"schedule": "poly"}).startswith("optim.schedule: 'poly' is not one of")
    assert "step_size: is required by schedule 'step', got None" in error({"schedule": "step"})
    assert "nesterov: needs momentum > 0" in error({"name": "sgd", "nesterov": True, "momentum": 0.0})
    assert "pct_start: must lie in (0, 1)" in error({"pct_start": 1.5})
    assert "pct_start: must lie in (0, 0.5) with three_phase" in error({"pct_start": 0.6, "three_phase": True})
    assert "gamma: must be > 0" in error({"gamma": 0.0})
    assert "base_momentum: must be <= max_momentum" in error({"base_momentum": 0.99})
    unknown = error({"groups": {"encoder": {"lrr": 1e-3}}})
    assert "optim.groups.encoder" in unknown and "lrr" in unknown and "did you mean lr?" in unknown
    assert error({"groups": {"encoder": {"lr": "fast"}}}) == "optim.groups.encoder.lr: expected a number, got 'fast'"
    assert "lr must be >= 0" in error({"groups": {"encoder": {"lr": -1.0}}})


# ---- resume --------------------------------------------------------------------------------------


def _steps(model, opt, sched, data, start: int, stop: int) -> list[tuple[float, float]]:
    seen = []
    for t in range(start, stop):
        x, y = data[t]
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    return seen


def test_scheduler_state_dict_round_trip_resumes_exactly(tmp_path):
    cfg = OptimConfig(name="sgd", lr=0.05, nesterov=True, weight_decay=1e-4, schedule="onecycle", pct_start=0.1)
    total, cut = 60, 25
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen)) for _ in range(total)]
    torch.manual_seed(0)
    model = _Toy()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, cfg, 1, groups=GROUPS)
    straight = _steps(model, opt, build_scheduler(opt, cfg, total), data, 0, total)

    model.load_state_dict(start)
    opt = build_optimizer(model, cfg, 1, groups=GROUPS)
    sched = build_scheduler(opt, cfg, total)
    first = _steps(model, opt, sched, data, 0, cut)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
               tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed_model = _Toy()
    resumed_model.load_state_dict(state["model"])
    opt2 = build_optimizer(resumed_model, cfg, 1, groups=GROUPS)  # as the trainer resumes: build, then load
    sched2 = build_scheduler(opt2, cfg, total)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert state["scheduler"]["step"] == cut
    second = _steps(resumed_model, opt2, sched2, data, cut, total)
    assert first + second == straight  # lr and momentum, bit for bit
    # and the weights: the uninterrupted run again from the same start
    model.load_state_dict(start)
    opt3 = build_optimizer(model, cfg, 1, groups=GROUPS)
    _steps(model, opt3, build_scheduler(opt3, cfg, total), data, 0, total)
    for name, value in resumed_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_scheduler_reads_a_lambdalr_state_from_older_checkpoints():
    cfg = OptimConfig(lr=1.0, warmup_steps=4)
    opt = build_optimizer(nn.Linear(2, 2), cfg, 1)
    sched = build_scheduler(opt, cfg, 10)
    sched.load_state_dict({"last_epoch": 2, "base_lrs": [1.0], "_step_count": 3})
    assert opt.param_groups[0]["lr"] == 0.5 and sched.state_dict()["step"] == 2


# ---- users of the shared code --------------------------------------------------------------------


def test_downstream_finetuning_uses_the_shared_adamw_layer_decay_and_schedule():
    from renderssl.eval import downstream as ds
    from renderssl.models.encoders import ViTConfig, VisionTransformer

    encoder = VisionTransformer(ViTConfig(preset=None, embed_dim=48, depth=2, num_heads=3, img_size=32, patch_size=8))
    cfg = ds.DownstreamConfig(task="depth", steps=30, warmup=5, lr=2e-3, layer_decay=0.5, weight_decay=0.05)
    model = ds.DownstreamModel(encoder, nn.Linear(48, 1), "depth", 1, frozen_encoder=False)
    opt, sched = ds.build_optimization(model, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    scale = {"layer_0": 0.5**3, "layer_1": 0.5**2, "layer_2": 0.5, "default": 1.0}
    assert [g["name"] for g in opt.param_groups][::2] == list(scale)
    names = {n: (g["name"], g["weight_decay"]) for g in opt.param_groups for n in g["names"]}
    assert names["encoder.cls_token"] == ("layer_0", 0.0)
    assert names["encoder.patch_embed.proj.weight"] == ("layer_0", 0.05)
    assert names["encoder.blocks.1.attn.qkv.weight"] == ("layer_2", 0.05) and names["head.weight"] == ("default", 0.05)

    def before(step: int) -> float:  # the fine-tuning lr as downstream.py computed it before the shared code
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    for t, row in enumerate(trace(opt, sched, cfg.steps, None)):
        for g, (lr, _) in zip(opt.param_groups, row):
            assert lr == pytest.approx(before(t) * scale[g["name"]], rel=1e-12), (t, g["name"])
        assert ds.learning_rate(t, cfg) == before(t)


def test_mask3d_base_preset_is_the_papers_sgd_with_step_decay():
    data = yaml.safe_load((Path(renderssl.__file__).parent / "configs" / "mask3d_base.yaml").read_text())
    cfg = from_dict(OptimConfig, data["optim"], "optim")
    assert (cfg.name, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (cfg.schedule, cfg.step_size, cfg.gamma, cfg.warmup_steps) == ("step", 1000, 0.99, 0)
    assert (data["train"]["batch_size"], data["train"]["accumulate"]) == (64, 2)
    opt = build_optimizer(nn.Linear(2, 2), cfg, total_batch=64)
    sched = build_scheduler(opt, cfg, data["train"]["steps"])
    for t, lr in ((0, 0.1), (999, 0.1), (1000, 0.099), (2500, 0.1 * 0.99**2)):
        sched.load_state_dict({"step": t})
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), t
