"""The compiled point sampling and grouping (data/point_ops_compiled.py) against their torch twins: the calls
of one pretraining step replayed alone, and the whole step, alternating A/B in one process (ratios; absolute
figures need an idle machine). ``python -m renderssl.bench.point_ops [--preset P] [--repeats N]``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from statistics import median

import torch

from ..data.point_ops_compiled import point_kernel, torch_twins
from ..experiment import build_method
from ..methods.base import StepContext
from ..train.optim import build_optimizer
from .step import pretraining_batch
from .step_memory import bench_config


def bench(preset: str = "gs3_rgbd_tiny", repeats: int = 7, threads: int = 1, log=print) -> dict:
    """The sampling/grouping calls of one ``preset`` pretraining step replayed alone, and the whole step,
    compiled vs torch twins, alternating A/B ``repeats`` times; prints medians and median ratios."""
    from ..models.encoders import pointnet2

    torch.set_num_threads(threads)
    log(f"point ops bench: {preset}, {torch.get_num_threads()} torch thread(s), kernel {point_kernel() is not None}")
    with tempfile.TemporaryDirectory() as scratch:
        cfg, _ = bench_config(preset, [], Path(scratch))
        torch.manual_seed(cfg.train.seed)
        method = build_method(cfg)
    step = max(1, cfg.train.steps // 2)
    batch, _ = pretraining_batch(cfg, step)
    optimizer = build_optimizer(method, cfg.optim, total_batch=cfg.train.batch_size, groups=method.param_groups())
    method.train()

    def one_step(i):
        out = method(batch, StepContext(torch.Generator().manual_seed(i), step, cfg.train.steps))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    calls = []  # (name, fn, args) of the step's searches, recorded once
    originals = {k: getattr(pointnet2, k) for k in ("farthest_point_sampling", "ball_query", "_three_nn")}

    def recorder(name, fn):
        def wrapped(*args, **kwargs):
            calls.append((name, fn, args, kwargs))
            return fn(*args, **kwargs)
        return wrapped

    try:
        for k, fn in originals.items():
            setattr(pointnet2, k, recorder(k, fn))
        one_step(0)
    finally:
        for k, fn in originals.items():
            setattr(pointnet2, k, fn)
    log(f"  the step issues {sum(c[0] == 'farthest_point_sampling' for c in calls)} FPS, "
        f"{sum(c[0] == 'ball_query' for c in calls)} ball query and {sum(c[0] == '_three_nn' for c in calls)} 3-NN calls")

    def replay(name):
        start = time.perf_counter()
        for n, fn, args, kwargs in calls:
            if n == name:
                fn(*args, **kwargs)
        return time.perf_counter() - start

    result = {}
    for name in originals:
        twin_s, comp_s = [], []
        for _ in range(repeats):
            with torch_twins():
                twin_s.append(replay(name))
            comp_s.append(replay(name))
        ratio = median([a / b for a, b in zip(twin_s, comp_s)])
        result[name] = (median(twin_s), median(comp_s), ratio)
        log(f"  {name:24s} per step: torch twin {median(twin_s) * 1e3:8.2f} ms, compiled {median(comp_s) * 1e3:7.2f} ms, "
            f"twin / compiled {ratio:6.1f}x (median of {repeats} interleaved pairs)")
    for i in range(2):  # warm-up both paths
        with torch_twins():
            one_step(i)
        one_step(i)
    twin_s, comp_s = [], []
    for i in range(repeats):
        start = time.perf_counter()
        with torch_twins():
            one_step(i)
        twin_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        one_step(i)
        comp_s.append(time.perf_counter() - start)
    ratio = median([a / b for a, b in zip(twin_s, comp_s)])
    result["step"] = (median(twin_s), median(comp_s), ratio)
    log(f"  whole {preset} step: torch twins {median(twin_s) * 1e3:8.1f} ms, compiled {median(comp_s) * 1e3:7.1f} ms, "
        f"twin / compiled {ratio:5.2f}x (median of {repeats} interleaved pairs)")
    share = [sum(result[k][i] for k in originals) / result["step"][i] for i in (0, 1)]
    log(f"  sampling + grouping (the replayed calls) over the step: torch twins {100 * share[0]:.1f}%, "
        f"compiled {100 * share[1]:.1f}%")
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=bench.__doc__)
    parser.add_argument("--preset", default="gs3_rgbd_tiny")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    a = parser.parse_args()
    from renderssl.bench import point_ops  # the package's module, not this __main__ copy

    point_ops.bench(a.preset, a.repeats, a.threads)
