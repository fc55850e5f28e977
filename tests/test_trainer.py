"""Training engine: lr schedule, parameter groups, resumable sampler, atomic checkpoints, exact resume
after SIGKILL, 2-process DDP parity, non-finite loss skipping, logs and previews."""

import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import _train_fixture as fx
from renderssl.errors import InputError
from renderssl.train import (
    NonFiniteLossError,
    Trainer,
    OptimConfig,
    ResumableDistributedSampler,
    build_optimizer,
    build_scheduler,
    load_checkpoint,
    lr_at_step,
    param_groups,
    read_metrics,
    save_checkpoint,
    save_run_checkpoint,
)
from renderssl.train.checkpoint import rng_state, set_rng_state

FIXTURE = str(Path(__file__).with_name("_train_fixture.py"))
# Subprocesses run with OMP_NUM_THREADS=1, like the in-process runs compared with them bit for bit
# (tests/conftest.py sets one thread for the whole session).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}



def losses(out_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(Path(out_dir) / "metrics.jsonl")}


def model_state(out_dir) -> dict:
    return load_checkpoint(Path(out_dir) / "checkpoints" / "last.pt")["model"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- schedule and optimizer ----------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine_at_hand_computed_steps():
    base, low, warm, total = 1.0, 0.1, 4, 14
    expected = {0: 0.0, 1: 0.25, 2: 0.5, 4: 1.0, 9: 0.55, 14: 0.1}  # t=9: 0.1 + 0.9 * 0.5 * (1 + cos(pi/2))
    expected[6] = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 10))
    for t, lr in expected.items():
        assert lr_at_step(t, base, low, warm, total) == pytest.approx(lr, abs=1e-12), t
    # the scheduler the trainer uses: the (t+1)-th optimizer step runs at lr(t)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, OptimConfig(lr=base, min_lr=low, warmup_steps=warm), total_batch=1)
    sched = build_scheduler(opt, OptimConfig(lr=base, min_lr=low, warmup_steps=warm), total_steps=total)
    seen = []
    for _ in range(total + 1):
        seen.append(opt.param_groups[0]["lr"])
        assert all(g["lr"] == seen[-1] for g in opt.param_groups)
        opt.step()
        sched.step()
    for t, lr in expected.items():
        assert seen[t] == pytest.approx(lr, abs=1e-12), t
    assert max(seen) == pytest.approx(base) and seen.index(max(seen)) == warm
    # an optimizer + scheduler restored from state_dicts (as on resume) continue the same values
    cfg = OptimConfig(lr=base, min_lr=low, warmup_steps=warm)
    opt = build_optimizer(model, cfg, 1)
    sched = build_scheduler(opt, cfg, total)
    for _ in range(6):
        opt.step()
        sched.step()
    opt2 = build_optimizer(model, cfg, 1)
    sched2 = build_scheduler(opt2, cfg, total)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    resumed = []
    for _ in range(6, total + 1):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == seen[6:]


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.proj = nn.Linear(4, 4)

    def no_weight_decay(self):
        return {"cls_token", "pos_embed"}


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = _Tokens()
        self.norm = nn.LayerNorm(4)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self):
        return {"mask_token"}


def test_param_groups_exempt_biases_norms_and_declared_tokens():
    decay, no_decay = param_groups(_Net(), weight_decay=0.05, skip=("conv.weight",))
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert set(decay["names"]) == {"encoder.proj.weight"}
    assert set(no_decay["names"]) == {
        "encoder.cls_token", "encoder.pos_embed", "encoder.proj.bias", "norm.weight", "norm.bias",
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "mask_token",
    }  # fmt: skip
    assert not any(n.startswith("frozen") for n in decay["names"] + no_decay["names"])
    decay, no_decay = param_groups(_Net(), weight_decay=0.05)
    assert set(decay["names"]) == {"encoder.proj.weight", "conv.weight"}


def test_build_optimizer_uses_mae_lr_rule_betas_and_weight_decay():
    net = _Net()
    opt = build_optimizer(net, OptimConfig(blr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05), total_batch=512)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == pytest.approx(1.5e-4 * 2) and opt.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in net.parameters())
    assert build_optimizer(net, OptimConfig(lr=0.01), total_batch=512).defaults["lr"] == 0.01


# ---- sampler -------------------------------------------------------------------------------------


def batches(sampler, b):
    idx = list(sampler)
    return [idx[i : i + b] for i in range(0, len(idx) - b + 1, b)]


@pytest.mark.parametrize("length", [37, 48])
def test_sampler_two_replicas_see_exactly_the_single_replica_batches(length):
    b = 3
    one = ResumableDistributedSampler(length, 1, 0, seed=5)
    two = [ResumableDistributedSampler(length, 2, r, seed=5) for r in range(2)]
    for epoch in range(3):
        for s in (one, *two):
            s.set_epoch(epoch)
        single, per_rank = batches(one, 2 * b), [batches(s, b) for s in two]
        assert len(single) == len(per_rank[0]) == len(per_rank[1]) == length // (2 * b)
        for step, big in enumerate(single):
            assert sorted(per_rank[0][step] + per_rank[1][step]) == sorted(big)
            assert per_rank[0][step] == big[0::2] and per_rank[1][step] == big[1::2]  # perm[r + 2 * (i b + j)]
        seen = [i for s in two for i in s]
        assert len(seen) == len(set(seen)) == length // 2 * 2  # no repeats; drop_last trims to the world
    one.set_epoch(0)
    order0 = list(one)
    one.set_epoch(1)
    assert list(one) != order0 and sorted(list(one)) == sorted(order0) == list(range(length))
    assert list(ResumableDistributedSampler(length, 1, 0, seed=5, shuffle=False)) == list(range(length))


def test_sampler_resumes_mid_epoch_with_the_same_sequence():
    full = ResumableDistributedSampler(50, 2, 1, seed=3)
    full.set_epoch(2)
    expected = list(full)
    run = ResumableDistributedSampler(50, 2, 1, seed=3)
    run.set_epoch(2)
    run.advance(4 * 2)  # four batches of 2 consumed
    state = run.state_dict()
    assert state["epoch"] == 2 and state["position"] == 8 and state["consumed"] == 16
    resumed = ResumableDistributedSampler(50, 2, 1, seed=3)
    resumed.load_state_dict(state)
    assert list(resumed) == expected[8:] and len(resumed) == len(expected) - 8
    # the global order is the world's: 1 process resumes where 2 processes stopped
    single = ResumableDistributedSampler(50, 1, 0, seed=3)
    single.set_epoch(2)
    whole = list(single)
    single.load_state_dict(state)
    assert list(single) == whole[16:]
    with pytest.raises(InputError, match="length"):
        ResumableDistributedSampler(51, 2, 1, seed=3).load_state_dict(state)
    with pytest.raises(InputError, match="end of the epoch"):
        resumed.advance(100)


# ---- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_is_atomic_and_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(4.0), "meta": {"name": "a", "xs": [1, 2.5, None]}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    with pytest.raises(Exception):  # a lambda cannot be pickled: torch.save fails midway through the file
        save_checkpoint(path, {"step": 2, "w": torch.zeros(10_000), "bad": lambda: 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(4.0)) and state["meta"]["xs"] == [1, 2.5, None]

    with pytest.raises(InputError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torn = tmp_path / "torn.pt"
    torn.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="torn.pt: cannot read checkpoint"):
        load_checkpoint(torn)
    pickled = tmp_path / "pickled.pt"
    torch.save({"obj": socket.AF_INET}, pickled)  # not a weights-only type
    with pytest.raises(InputError, match="pickled.pt"):
        load_checkpoint(pickled)


def test_run_checkpoints_keep_last_and_newest_step_files(tmp_path):
    for step in (2, 4, 6, 8):
        last = save_run_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step_000006.pt", "step_000008.pt"]
    assert load_checkpoint(last)["step"] == 8 and load_checkpoint(tmp_path / "step_000006.pt")["step"] == 6
    save_run_checkpoint(tmp_path, 10, {"step": 10}, keep=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


# ---- whole runs ----------------------------------------------------------------------------------

RUN = ["steps=16", "ckpt_every=4", "log_every=1", "batch_size=4", "noise=0.1", "preview_every=8"]


@pytest.mark.parametrize("workers", [0, 2])
def test_run_killed_by_sigkill_then_resumed_matches_an_uninterrupted_run(tmp_path, workers):
    killed = tmp_path / "killed"
    run = [*RUN, f"workers={workers}"]  # workers prefetch ahead of training: the position must still be exact
    proc = subprocess.Popen([sys.executable, FIXTURE, str(killed), *run, "sleep=0.15"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target, deadline = killed / "checkpoints" / "step_000008.pt", time.monotonic() + 60
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert target.exists(), err.decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(killed / "checkpoints" / "last.pt")["step"]
    assert 8 <= saved < 16  # interrupted mid-run, resumed mid-epoch (12 batches per epoch)

    summary = fx.build(killed, *run).fit(resume=True)
    fx.build(tmp_path / "straight", *RUN).fit()

    assert summary.steps_done == 16 and summary.skipped_nonfinite == 0
    resumed, straight = losses(killed), losses(tmp_path / "straight")
    assert sorted(resumed) == list(range(1, 17))  # lines the killed run wrote after its checkpoint were dropped
    assert resumed == straight  # bit-identical at every step
    assert summary.last_loss == straight[16]
    a, b = model_state(killed), model_state(tmp_path / "straight")
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not list((killed / "checkpoints").glob(".*.tmp"))


def test_two_process_ddp_matches_one_process_with_twice_the_batch(tmp_path):
    common = ["steps=10", "log_every=1", "grad_clip=0.5", "ckpt_every=100"]  # 6 steps per epoch: crosses an epoch
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(free_port()), FIXTURE, str(tmp_path / "ddp"), *common, "batch_size=4"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    single = fx.build(tmp_path / "single", *common, "batch_size=8")
    initial = {k: v.clone() for k, v in single.method.state_dict().items()}
    single.fit()

    ddp, one = model_state(tmp_path / "ddp"), model_state(tmp_path / "single")
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], atol=1e-6, rtol=0)
    assert max(float((one[k] - initial[k]).abs().max()) for k in one) > 1e-3  # it trained: parity is not vacuous
    ddp_losses, one_losses = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert sorted(ddp_losses) == list(range(1, 11))
    for step in one_losses:
        assert ddp_losses[step] == pytest.approx(one_losses[step], rel=1e-5)
    assert ddp_losses[10] < ddp_losses[1]


def test_nonfinite_loss_step_is_skipped_counted_and_leaves_parameters_unchanged(tmp_path, caplog):
    trainer = fx.build(tmp_path, "steps=7", "nan_at=[5]", "log_every=1", "batch_size=4", "warmup_steps=1")
    seen = []  # parameters as each forward (= step) finds them
    trainer.method.register_forward_pre_hook(lambda m, args: seen.append([p.detach().clone() for p in m.parameters()]))
    with caplog.at_level("WARNING", logger="renderssl.train"):
        summary = trainer.fit()
    assert summary.skipped_nonfinite == 1 and summary.steps_done == 7 and math.isfinite(summary.last_loss)
    assert any("step 5: non-finite loss" in r.message for r in caplog.records)

    def same(i, j):  # parameters before step i+1 vs before step j+1
        return all(torch.equal(a, b) for a, b in zip(seen[i], seen[j]))

    assert same(4, 5)  # step 5 (NaN) changed nothing
    assert not same(3, 4) and not same(5, 6)  # steps 4 and 6 did train
    records = {r["step"]: r for r in read_metrics(summary.metrics)}
    assert records[5]["loss"] is None and records[5]["skipped_nonfinite"] == 1
    assert records[4]["skipped_nonfinite"] == 0 and records[7]["skipped_nonfinite"] == 1
    assert load_checkpoint(summary.checkpoint)["counters"]["skipped_nonfinite"] == 1


def test_persistent_nonfinite_loss_aborts_with_a_clear_error(tmp_path):
    trainer = fx.build(tmp_path, "steps=40", "nan_at=[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]", "batch_size=4")
    with pytest.raises(NonFiniteLossError, match=r"step 22: non-finite loss for 20 consecutive steps \(steps 3-22\)"):
        trainer.fit()


def test_run_writes_config_metrics_tensorboard_previews_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    summary = fx.build(out, "steps=6", "log_every=2", "ckpt_every=2", "preview_every=3", "batch_size=4", "keep_checkpoints=2").fit()
    assert summary.out_dir == out and summary.checkpoint == out / "checkpoints" / "last.pt"
    assert summary.metrics == out / "metrics.jsonl"
    records = read_metrics(summary.metrics)
    assert [r["step"] for r in records] == [2, 4, 6]
    keys = {"step", "epoch", "loss", "mse", "mean_abs", "lr", "sec_per_step", "samples_per_s", "skipped_nonfinite", "skipped_reads"}
    assert all(set(r) == keys for r in records) and records[-1]["loss"] == summary.last_loss
    assert all(r["sec_per_step"] > 0 and r["samples_per_s"] > 0 for r in records)
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["step_000003.png", "step_000006.png"]
    from PIL import Image

    assert Image.open(out / "previews" / "step_000006.png").size[0] > 2 * 4 * 4  # two enlarged panels
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(events[0])).Reload()
    assert {f"train/{k}" for k in keys - {"step"}} <= set(tb.Tags()["scalars"])
    assert [e.step for e in tb.Scalars("train/loss")] == [2, 4, 6]
    assert [e.value for e in tb.Scalars("train/loss")] == pytest.approx([r["loss"] for r in records])
    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["steps"] == 6 and config["optim"]["betas"] == [0.9, 0.95]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", "step_000004.pt", "step_000006.pt"]
    state = load_checkpoint(summary.checkpoint)
    assert {"model", "optimizer", "scheduler", "sampler", "rng", "step", "config", "counters"} <= set(state)
    assert state["step"] == 6 and state["config"] == config and state["scheduler"]["step"] == 6
    assert state["sampler"]["epoch"] == 0 and state["sampler"]["position"] == 24  # 6 batches of 4 of 48 samples

    # resuming a finished run does nothing; a fresh run in the same directory replaces the old one
    again = fx.build(out, "steps=6", "batch_size=4").fit(resume=True)
    assert again.steps_done == 6 and again.last_loss == summary.last_loss
    fx.build(out, "steps=2", "batch_size=4", "ckpt_every=1", "keep_checkpoints=2").fit()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", "step_000001.pt", "step_000002.pt"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [2]


def test_bad_runs_fail_with_messages_naming_the_problem(tmp_path):
    with pytest.raises(InputError, match=r"checkpoints/last.pt: checkpoint not found"):
        fx.build(tmp_path / "none", "steps=2").fit(resume=True)
    with pytest.raises(InputError, match="batch_size=64: a dataset of 48 samples"):
        fx.build(tmp_path / "small", "steps=2", "batch_size=64").fit()
    fx.build(tmp_path / "other", "steps=2", "batch_size=4").fit()
    with pytest.raises(InputError, match="does not match this run"):
        fx.build(tmp_path / "other", "steps=4", "batch_size=4", "hidden=8").fit(resume=True)
    with pytest.raises(Exception, match="fixture argument"):
        fx.build(tmp_path / "x", "stepz=2")


# ---- accumulation, validation, unreadable samples ------------------------------------------------


def test_two_accumulated_micro_batches_give_the_gradients_of_one_double_batch(tmp_path):
    """A step of 2 x 4 samples (accumulate=2) sees perm[0:8] as the single batch of 8 does."""
    common = ["steps=1", "ckpt_every=100", "log_every=1", "preview_every=100"]
    accumulated = fx.build(tmp_path / "acc", *common, "batch_size=4", "accumulate=2")
    double = fx.build(tmp_path / "one", *common, "batch_size=8")
    a, b = accumulated.fit(), double.fit()
    grads_a = {n: p.grad for n, p in accumulated.method.named_parameters()}
    grads_b = {n: p.grad for n, p in double.method.named_parameters()}
    assert all(g is not None and float(g.abs().max()) > 1e-4 for g in grads_b.values())  # not vacuous
    for name in grads_b:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=0)
    assert a.last_loss == pytest.approx(b.last_loss, rel=1e-6)  # the step's loss is the mean over micro-batches


class HeldOut(torch.utils.data.Dataset):
    def __init__(self, cfg):
        self.data = fx.RegressionData(dataclasses.replace(cfg, data_seed=cfg.data_seed + 1, samples=12))

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def test_validation_logs_the_methods_metrics_on_held_out_batches(tmp_path):
    train, optim, cfg = fx.parse(tmp_path, ["steps=6", "log_every=3", "val_every=3", "val_batches=2", "batch_size=4"])
    torch.manual_seed(0)
    method, held_out = fx.RegressionMethod(cfg), HeldOut(cfg)
    Trainer(method, fx.RegressionData(cfg), train, optim, validation=(held_out, None)).fit()
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in records] == [3, 6]
    # the final model's validation loss, recomputed by hand on the first two held-out batches of 4
    with torch.no_grad():
        method.eval()
        expected = []
        for start in (0, 4):
            batch = {k: torch.stack([held_out[i][k] for i in range(start, start + 4)]) for k in ("x", "y")}
            expected.append(float(method(batch).loss))
    assert records[-1]["val_loss"] == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert records[-1]["val_mse"] == pytest.approx(records[-1]["val_loss"])


class EpochViews(torch.utils.data.Dataset):
    """Records, per sample, the epoch the dataset was told when it read it (as a view sampler would use)."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.full((8,), float(self.epoch)), "y": torch.zeros(3, fx.SIDE, fx.SIDE)}


def test_datasets_with_set_epoch_see_each_epoch_in_persistent_workers(tmp_path):
    train, optim, cfg = fx.parse(tmp_path, ["steps=6", "batch_size=4", "log_every=100", "ckpt_every=100", "preview_every=100"])
    seen = []
    method = fx.RegressionMethod(cfg)
    method.register_forward_pre_hook(lambda m, args: seen.append(float(args[0]["x"][0, 0])))
    Trainer(method, EpochViews(), train, optim, num_workers=2).fit()
    assert seen == [0, 0, 1, 1, 2, 2]  # 2 batches per epoch, 3 epochs


class StepViews(torch.utils.data.Dataset):
    """Records, per sample, the training step (and total) the dataset was told when it read it."""

    def __init__(self):
        self.step, self.total = 0, 0

    def set_step(self, step, total_steps):
        self.step, self.total = step, total_steps

    def __len__(self):
        return 10  # 2 micro-batches of 4 per epoch; the last 2 samples of each epoch are dropped

    def __getitem__(self, i):
        x = torch.tensor([float(self.step), float(self.total)] * 4)
        return {"x": x, "y": torch.zeros(3, fx.SIDE, fx.SIDE)}


@pytest.mark.parametrize("workers", [0, 2])
def test_datasets_with_set_step_see_the_step_that_consumes_each_sample(tmp_path, workers):
    """Micro-batches of 4 with 3 accumulated per step across epochs of 2 micro-batches: every sample of a
    step's micro-batches was read knowing that step, and a resumed run goes on counting."""
    args = ["batch_size=4", "accumulate=3", "log_every=100", "ckpt_every=2", "preview_every=100"]
    train, optim, cfg = fx.parse(tmp_path, ["steps=2", *args])
    seen = []
    method = fx.RegressionMethod(cfg)
    method.register_forward_pre_hook(lambda m, a: seen.append(a[0]["x"][:, :2].tolist()))
    Trainer(method, StepViews(), train, optim, num_workers=workers).fit()
    train, optim, cfg = fx.parse(tmp_path, ["steps=4", *args])
    Trainer(method, StepViews(), train, optim, num_workers=workers).fit(resume=True)
    steps = [{tuple(row) for row in micro} for micro in seen]
    assert steps == [{(1.0, 2.0)}] * 3 + [{(2.0, 2.0)}] * 3 + [{(3.0, 4.0)}] * 3 + [{(4.0, 4.0)}] * 3
