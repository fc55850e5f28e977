"""Benchmarks on a busy machine: rendering share from the same steps, dense memory budget, exponent fits
only over >= 3 sizes, and the machine description every bench prints first."""

import math
import os
import statistics
import time

import pytest
import torch
from torch import nn

from renderssl.bench.machine import CpuSnapshot, describe_load_since, describe_machine, cpu_snapshot, others_busy
from renderssl.bench.machine import _ranges, parse_proc_stat, parse_self_stat
from renderssl.bench.render import (RenderTiming, bench_render, cloud_scene, dense_peak_estimate, fit_exponents,
                                    format_render_bench)
from renderssl.bench.scaling import fit_power_law
from renderssl.bench.step import RenderTimer, time_methods
from renderssl.bench import step as step_bench
from renderssl.errors import InputError
from renderssl.methods.base import MethodOutput
from renderssl.render.splat import Gaussians, rasterize

# ----------------------------------------------------------------------------- rendering share

FWD, BWD, OUTSIDE = 0.03, 0.02, 0.05  # seconds slept by the fake renderer's forward / backward / the rest


class _SleepyRender(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        time.sleep(FWD)
        return x * 2.0

    @staticmethod
    def backward(ctx, grad):
        time.sleep(BWD)
        return grad * 2.0


class _FakeMethod(nn.Module):
    """A method whose renderer sleeps FWD in forward and BWD in backward, and whose step sleeps OUTSIDE
    elsewhere (before the renderer, in the forward)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 3)

    def render(self, x):
        return _SleepyRender.apply(x)

    def forward(self, batch, ctx):
        time.sleep(OUTSIDE)
        h = self.head(batch["image"].mean(dim=(2, 3)))  # (B, 3)
        return MethodOutput(self.render(h).square().mean())


def test_render_share_comes_from_the_same_steps():
    method = _FakeMethod()
    [t] = time_methods({"fake": method}, torch.rand(2, 3, 8, 8), warmup=1, repeats=3)
    assert len(t.step_seconds) == len(t.render_seconds) == 3
    # the share is the median over the same steps of (rendering / step), and never above 100%
    assert t.render_share == statistics.median(r / s for r, s in zip(t.render_seconds, t.step_seconds))
    assert 0 < t.render_share <= 1
    for r, s in zip(t.render_seconds, t.step_seconds):
        assert FWD + BWD <= r <= s - OUTSIDE  # the renderer's sleeps are in, the rest of the step is out
        assert s >= FWD + BWD + OUTSIDE
    assert abs(t.render_share - (FWD + BWD) / (FWD + BWD + OUTSIDE)) < 0.15
    assert "render" not in vars(method)  # the timer is removed after timing


def test_timed_render_leaves_the_rendering_and_its_gradients_unchanged():
    gauss, cams = cloud_scene(64, 16, 12)
    timer = RenderTimer()

    def run(render):
        leaves = Gaussians(*(getattr(gauss, f).clone().requires_grad_(True) for f in ("means", "quats", "scales", "opacities", "colors")))
        out = render(leaves, cams)
        (out.color.square().sum() + out.depth.sum()).backward()
        return out, leaves

    def plain(g, c):
        return rasterize(g, c, backend="tiles")

    ref, ref_leaves = run(plain)
    out, leaves = run(timer.wrap(plain))
    torch.testing.assert_close(out.color, ref.color, rtol=0, atol=0)
    for f in ("means", "quats", "scales", "opacities", "colors"):
        torch.testing.assert_close(getattr(leaves, f).grad, getattr(ref_leaves, f).grad, rtol=0, atol=0)
    assert len(timer.intervals) == 2  # forward and backward of the one call
    assert 0 < timer.seconds() <= sum(e - s for s, e in timer.intervals) + 1e-12


def test_render_timer_counts_overlapping_intervals_once():
    timer = RenderTimer()
    timer.intervals = [(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]
    assert timer.seconds() == pytest.approx(4.0)


# ----------------------------------------------------------------------------- dense memory budget


def test_dense_budget_skips_above_and_runs_below():
    budget = dense_peak_estimate(64, 8, 8)  # 8x8 fits exactly, 16x16 is 4x over
    lines = []
    result = bench_render(counts=(64,), sizes=((8, 8), (16, 16)), scenes=("cloud",), backends=("dense",),
                          dense_max_bytes=budget, volume=False, log=lines.append)
    assert [(t.width, t.height) for t in result.timings] == [(8, 8)]
    assert len(result.skipped) == 1 and "16x16" in result.skipped[0] and "budget" in result.skipped[0]
    assert result.skipped[0] in lines  # the reason is printed when it is skipped
    assert "Skipped" in format_render_bench(result)


_DENSE_PEAK = """
from renderssl.bench.memory import PeakMemory, use_mmap_for_large_blocks
from renderssl.bench.render import PARAMS, cloud_scene
from renderssl.render.splat import Gaussians, rasterize
use_mmap_for_large_blocks()
gauss, cams = cloud_scene(512, 64, 64)
leaves = Gaussians(*(getattr(gauss, f).requires_grad_(True) for f in PARAMS))
with PeakMemory("cpu") as peak:
    out = rasterize(leaves, cams, backend="dense")
    (out.color.sum() + out.depth.sum()).backward()
print(peak.bytes)
"""


def test_dense_peak_estimate_bounds_the_measured_peak():
    """In a fresh process (as bench memory measures): a long test session's allocator state made the
    resident-set peak read low once."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _DENSE_PEAK], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    measured = run.stdout.split()[-1]
    if measured == "None":
        pytest.skip("resident-set peak not measurable here")
    estimate = dense_peak_estimate(512, 64, 64)
    assert 0.5 * estimate <= int(measured) <= estimate


# ----------------------------------------------------------------------------- exponent fits


def _timing(n, w, h, seconds):
    return RenderTiming("cloud", "tiles", n, w, h, seconds, None, 0, 0)


def test_exponent_fit_refuses_two_sizes_and_recovers_a_known_law():
    a, b, c = 3e-9, 1.3, 0.8
    counts = (4096, 16384, 65536)
    law = lambda n, w, h: a * n**b * (w * h) ** c  # noqa: E731
    two = [_timing(n, w, h, law(n, w, h)) for n in counts for w, h in ((64, 64), (128, 128))]
    fit, reason = fit_exponents(two)
    assert fit is None and "too few image sizes" in reason and "2 distinct" in reason
    three = [_timing(n, w, h, law(n, w, h)) for n in counts for w, h in ((64, 64), (128, 128), (320, 240))]
    (fb, fc), reason = fit_exponents(three)
    assert reason is None and fb == pytest.approx(b, abs=1e-9) and fc == pytest.approx(c, abs=1e-9)
    # below min_gaussians are not counted: 1024 does not make a third count
    fit, reason = fit_exponents([_timing(n, w, h, law(n, w, h)) for n in (1024, 4096, 16384) for w, h in ((64, 64), (96, 96), (128, 128))])
    assert fit is None and "Gaussian counts" in reason and "image sizes" not in reason
    fit, reason = fit_exponents([_timing(n, 64, 64, law(n, 64, 64)) for n in (1024, 4096, 16384)])
    assert "too few Gaussian counts" in reason and "too few image sizes (1 distinct value;" in reason


def test_fit_power_law_with_noise_free_and_degenerate_data():
    xs = [1e3, 2e3, 5e3, 1e4]
    fit, _ = fit_power_law({"n": xs}, [7 * x**-0.25 for x in xs])
    assert fit["n"] == pytest.approx(-0.25, abs=1e-9)
    assert fit_power_law({"n": [1, 1, 2, 2]}, [1, 1, 2, 2])[0] is None
    assert "not > 0" in fit_power_law({"n": [1, 2, 3]}, [1, None, 3])[1]
    with pytest.raises(ValueError, match="n has 2 values for 3"):
        fit_power_law({"n": [1, 2]}, [1, 2, 3])


def test_render_bench_output_says_too_few_sizes():
    result = bench_render(counts=(4096,), sizes=((16, 16), (24, 16)), scenes=("cloud",), backends=("tiles",), volume=False,
                          log=lambda s: None)
    text = format_render_bench(result)
    assert "not fitted: too few" in text and "b (Gaussians) =" not in text


# ----------------------------------------------------------------------------- machine description


def test_describe_machine_names_threads_and_affinity():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        text = describe_machine(window=0.05)
    finally:
        torch.set_num_threads(before)
    assert "1 torch thread " in text
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count())
    assert f"usable cores {len(cpus)} of {os.cpu_count()}" in text
    assert "load average" in text and "other processes" in text
    assert text.splitlines()[0].startswith("machine:")
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and _ranges([3]) == "3"
    assert "during the bench" in describe_load_since(cpu_snapshot())


def test_cpu_busy_fraction_of_other_processes():
    stat0 = "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 100 0 50 800 10 0 0 0 0 0\ncpu1 200 5 0 700 0 1 0 0 0 0\ncpu2 9 9 9 9 9 9 9 9 0 0\n"
    stat1 = "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 160 0 70 820 10 0 0 0 0 0\ncpu1 290 5 0 710 0 1 0 0 0 0\ncpu2 99 99 99 99 99 99 99 99 0 0\n"
    # cpus 0 and 1 only: busy 150+206 = 356 -> 230+296 = 526 (+170); total 960+906 = 1866 -> 1060+1006 = 2066 (+200)
    assert parse_proc_stat(stat0, [0, 1]) == (356, 1866) and parse_proc_stat(stat1, [0, 1]) == (526, 2066)
    own = "123 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 40 30 0 0"  # utime 40, stime 30
    assert parse_self_stat(own) == 70
    assert parse_self_stat(own[:-3] + "5 7 20") == 82  # + finished children's cutime 5, cstime 7
    shares = others_busy(CpuSnapshot(356, 1866, 70, 0.0), CpuSnapshot(526, 2066, 70 + 38, 1.0))
    assert shares == pytest.approx(((170 - 38) / 200, 38 / 200))
    assert others_busy(CpuSnapshot(1, 1, 0, 0.0), CpuSnapshot(1, 1, 0, 1.0)) is None
    assert math.isclose(sum(shares), 170 / 200)


# ----------------------------------------------------------------------------- command line


def test_bench_commands_print_the_machine_first_and_check_the_budget(monkeypatch, capsys):
    import renderssl.bench.render as render_bench
    from renderssl.cli import main

    assert main(["bench", "render", "--dense-max-gib", "0"]) == 2
    assert "--dense-max-gib must be > 0" in capsys.readouterr().err
    seen = {}

    def fake_bench_render(counts, sizes, scenes, dense_max_bytes, device):
        seen["budget"] = dense_max_bytes
        return render_bench.RenderBench()

    monkeypatch.setattr(render_bench, "bench_render", fake_bench_render)
    assert main(["bench", "render", "--quick", "--dense-max-gib", "0.5", "--threads", str(torch.get_num_threads())]) == 0
    threads, *lines = capsys.readouterr().out.splitlines()
    assert threads.startswith(f"threads: {torch.get_num_threads()} torch thread") and "from --threads" in threads
    assert lines[0] == "renderssl bench render on cpu"
    assert lines[1].startswith("machine: torch") and f"{torch.get_num_threads()} torch thread" in lines[1]
    assert lines[2].startswith("machine: load average")
    assert lines[-1].startswith("machine during the bench")
    assert seen["budget"] == 0.5 * 2**30
    assert main(["bench", "render", "--quick"]) == 0  # --quick caps the default budget at 2 GiB
    assert 0 < seen["budget"] <= 2 * 2**30


def test_encoder_bench_refuses_an_exponent_from_two_counts():
    from renderssl.bench.encoders import EncoderBench, EncoderTiming, fit_exponent, format_encoder_bench

    assert fit_exponent([1e3, 2e3], [1.0, 2.0]) is None
    result = EncoderBench([EncoderTiming("pointnet2:small", n, 0.01 * n, None) for n in (400, 800)])
    result.time_exponents["pointnet2:small"] = fit_exponent([400, 800], [4.0, 8.0])
    result.memory_exponents["pointnet2:small"] = None
    assert "pointnet2:small    not fitted: too few counts (2; need >= 3)" in format_encoder_bench(result)


def test_bench_data_measures_one_configuration_in_its_own_process():
    from renderssl.bench.data import format_data_bench, run_isolated

    tiny = ["data.width=16", "data.height=16", "data.views=2", "data.train_scenes=4", "data.val_scenes=1",
            "data.test_scenes=1", "train.batch_size=4"]
    results = [run_isolated(f"gmae_tiny, {n} synthetic scenes", "gmae_tiny", [*tiny, f"data.pretrain_scenes={n}"], 0, 2)
               for n in (4, 40)]
    for r in results:
        assert r.samples == 8 and r.samples_per_s > 0 and r.main_peak_mib > 0 and r.worker_peak_mib == []
    assert results[1].decoded_split_mib == pytest.approx(10 * results[0].decoded_split_mib)  # 10x the frames listed
    assert "peak memory 40 synthetic scenes / 4 synthetic scenes" in format_data_bench(results)


# ----------------------------------------------------------------------------- bench step: profile and recipes


def _busy(seconds: float, fn) -> int:
    """Calls of ``fn`` until ``seconds`` have passed; the count."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        fn()
        n += 1
    return n


def test_profile_shares_match_separately_timed_matmul_and_elementwise_work():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    x, y = torch.randn(400_000), torch.empty(400_000)  # exp into y: no allocation (page faults) to vary
    # independent reference: time each kind of work alone with a clock, then profile a step of both
    mm_s = min(_timed(lambda: a @ b) for _ in range(20))
    exp_s = min(_timed(lambda: torch.exp(x, out=y)) for _ in range(20))
    k_mm, k_exp = max(1, round(0.02 / mm_s)), max(1, round(0.02 / exp_s))  # ~20 ms of each per step

    def step(i):
        for _ in range(k_mm):
            a @ b
        for _ in range(k_exp):
            torch.exp(x, out=y)

    p = step_bench.profile_steps(step, steps=3)
    expected = k_mm * mm_s / (k_mm * mm_s + k_exp * exp_s)
    assert p.steps == 3 and abs(p.matmul_share - expected) < 0.2
    assert p.top_other(1)[0][0] == "aten::exp" and abs(p.top_other(1)[0][1] - (1 - expected)) < 0.2
    assert p.self_seconds["aten::matmul"] < p.self_seconds["aten::mm"]  # the wrapper's self time is its own, not mm's
    # self times are counted once: their sum is at most the steps' wall time
    start = time.perf_counter()
    p2 = step_bench.profile_steps(step, steps=2)
    assert p2.total <= time.perf_counter() - start


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_profile_names_the_matrix_products_it_counts():
    ops = step_bench.MATMUL_OPS
    for name in ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::linear", "aten::mkldnn_convolution",
                 "aten::convolution_backward", "aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_flash_attention_for_cpu_backward"):
        assert name in ops
    doc = " ".join(step_bench.__doc__.split())
    for name in ops:  # the docstring lists every counted name
        assert f" {name.split('::')[1]}," in doc or f" {name.split('::')[1]} (" in doc, name
    for name in ("aten::index_add_", "aten::gather", "aten::scatter_add_", "aten::exp", "aten::copy_"):
        assert name not in ops
    # a linear layer + conv + attention step is almost all matrix products; its gathers are not
    lin, conv = nn.Linear(128, 128), nn.Conv2d(16, 16, 3, padding=1)
    x, img = torch.randn(512, 128, requires_grad=True), torch.randn(4, 16, 32, 32, requires_grad=True)
    q = torch.randn(2, 4, 64, 32, requires_grad=True)

    def step(i):
        loss = lin(x).sum() + conv(img).sum() + torch.nn.functional.scaled_dot_product_attention(q, q, q).sum()
        loss.backward()

    p = step_bench.profile_steps(step, steps=2)
    assert p.matmul_share > 0.5
    assert any(n.startswith("aten::_scaled_dot_product") for n in p.self_seconds if n in ops)


def test_sites_name_the_renderssl_function_and_the_backward_node():
    from types import SimpleNamespace as E

    from renderssl.geometry.rotations import quat_to_rotmat

    q = torch.randn(200_000, 4, requires_grad=True)

    def step(i):
        quat_to_rotmat(q).square().sum().backward()

    p = step_bench.profile_steps(step, steps=1, sites=True)
    assert p.sites, "no sites recorded"
    where = [site for name in p.sites for site, _ in p.sites[name]]
    assert any(s.startswith("renderssl/geometry/rotations.py(12): quat_to_rotmat") for s in where)
    assert any(s.startswith("backward of ") for s in where)
    for name, sites in p.sites.items():
        assert sum(share for _, share in sites) == pytest.approx(1.0)
    # by function: the forward's ops and, charged to it through the autograd node, the backward's
    functions = {where: share for where, share, _ in p.functions}
    assert "renderssl/geometry/rotations.py(12): quat_to_rotmat" in functions
    assert "bwd renderssl/geometry/rotations.py(12): quat_to_rotmat" in functions
    assert 0 < sum(functions.values()) <= 1 + 1e-9
    # the walk up the parents: bench frames skipped, two renderssl frames, a backward node
    def chain(*names):
        parent = None
        for n in names:
            parent = E(name=n, cpu_parent=parent)
        return E(name="aten::index_add_", cpu_parent=parent)

    top = "/x/src/renderssl/models/a.py(10): outer"
    bench = "/x/src/renderssl/bench/step.py(5): run"
    assert step_bench._site(chain(bench, top, "/x/src/renderssl/models/b.py(20): inner", "torch/nn/functional.py(1): f")) == \
        "renderssl/models/b.py(20): inner < renderssl/models/a.py(10): outer"
    assert step_bench._site(chain(bench, top)) == "renderssl/models/a.py(10): outer"
    assert step_bench._site(chain(bench, "torch/nn/functional.py(1): f")) == "bench (outside renderssl)"
    assert step_bench._site(chain("autograd::engine::evaluate_function: IndexBackward0", "IndexBackward0")) == "backward of IndexBackward0"
    assert step_bench._site(chain("torch/nn/functional.py(1): f")) == "(no renderssl frame)"
    # the phase range ends the walk: the optimizer's ops are not charged to the command line that runs the bench
    assert step_bench._site(chain("/x/src/renderssl/cli.py(95): _bench_step", "[python] optimizer", "torch/optim/adamw.py(1): step")) == \
        "[python] optimizer (outside renderssl)"
    assert step_bench._site(chain("/x/src/renderssl/cli.py(95): _bench_step", "[python] backward",
                                  "autograd::engine::evaluate_function: FnBackward", "/x/src/renderssl/models/c.py(7): backward")) == \
        "renderssl/models/c.py(7): backward"


class _ScheduledMethod(nn.Module):
    """Records the StepContext schedule and the batch keys it gets."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.seen = []

    def forward(self, batch, ctx):
        self.seen.append((ctx.step, ctx.total_steps, sorted(batch)))
        return MethodOutput((batch["points"] @ self.w).square().mean())


def test_time_methods_takes_any_batch_the_given_optimizer_and_the_schedule():
    method = _ScheduledMethod()
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    batch = {"points": torch.randn(5, 3), "offset": torch.tensor([5])}
    [t] = time_methods({"m": method}, batch, warmup=1, repeats=2, optimizers={"m": opt}, schedule=(150, 300), profile=1,
                       batch_size=1)  # one cloud of 5 points
    assert len(t.step_seconds) == 2 and t.render_seconds is None and t.batch == 1
    assert method.seen == [(150, 300, ["offset", "points"])] * (1 + 1 + 2 + 1)  # FLOPs, warm-up, timed, profiled
    assert not torch.equal(method.w.detach(), torch.ones(3))  # the given SGD stepped it
    assert t.profile is not None and t.profile.steps == 1 and t.profile.total > 0
    assert {"[python] forward", "[python] backward", "[python] optimizer"} <= set(t.profile.self_seconds)
    with pytest.raises(InputError, match="repeats"):
        time_methods({"m": method}, batch, warmup=0, repeats=0)


@pytest.mark.parametrize("preset", ["mask3d_tiny", "ponder_images_tiny", "nps_tiny"])
def test_bench_recipe_runs_a_real_batch_of_each_sample_type(preset):
    small = ["train.batch_size=2", "data.width=32", "data.height=32"]
    r = step_bench.bench_recipe(preset, small, warmup=0, repeats=1, profile=1, sites=False)
    [t] = r.timings
    assert r.preset == preset and t.batch == 2 and r.resolution == (32, 32) and r.data_seconds > 0
    assert t.gflop_per_step > 0 and t.best_seconds > 0 and 0 < t.profile.matmul_share < 1
    assert (t.render_seconds is not None) == (r.recipe == "ponder")  # PonderV2 has a render(), NPS and Mask3D none
    text = step_bench.format_recipe(r, 100.0)
    assert preset in text and "matrix products" in text and "of peak" in text
    table = step_bench.format_table({"peak_gflops": 100.0, "device": "cpu", "threads": 1, "recipes": [r]})
    assert table.splitlines()[-1].startswith(f"| {preset} | 2 |")


def test_bench_step_command_line_presets_overrides_and_all_tiny(monkeypatch, capsys):
    from renderssl.cli import main

    seen = {}

    def fake_bench_step(presets, overrides, device, warmup, repeats, profile, sites, log):
        seen.update(presets=presets, overrides=overrides, warmup=warmup, repeats=repeats, profile=profile, sites=sites)
        return {"peak_gflops": 1.0, "device": device, "threads": 1, "recipes": []}

    monkeypatch.setattr(step_bench, "bench_step", fake_bench_step)
    assert main(["bench", "step", "mae_tiny", "nps_tiny", "train.batch_size=2", "--repeats", "2", "--no-sites"]) == 0
    assert seen == dict(presets=["mae_tiny", "nps_tiny"], overrides=["train.batch_size=2"], warmup=3, repeats=2, profile=3, sites=False)
    out = capsys.readouterr().out.splitlines()
    assert "renderssl bench step mae_tiny nps_tiny on cpu" in out and out[-1].startswith("machine during the bench")
    assert main(["bench", "step", "--all-tiny", "--profile", "0"]) == 0
    assert seen["presets"] == list(step_bench.TINY_PRESETS) and len(seen["presets"]) == 8 and seen["profile"] == 0
    capsys.readouterr()
    assert main(["bench", "step"]) == 2
    assert "give a preset" in capsys.readouterr().err
    assert main(["bench", "step", "mae_tiny", "--repeats", "0"]) == 2
    assert main(["bench", "step", "no_such_preset"]) == 2
