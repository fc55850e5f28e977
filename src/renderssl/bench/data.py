"""``renderssl bench data``: peak memory and throughput of pretraining data loading.

Each configuration (a recipe's preset, a pool of synthetic pretraining scenes or a folder source, a
number of DataLoader workers) runs in a fresh Python process, so its peak memory is its own: the
process builds the recipe's pretraining Dataset exactly as ``renderssl pretrain`` does
(:func:`renderssl.data.build.sample_dataset`), then draws ``batches`` batches of the preset's batch size
in the trainer's shuffled order through the trainer's DataLoader set-up (unreadable-sample skipping,
collate, persistent workers). It reports samples/s over those batches, timed from the creation of the
loader's iterator (worker start-up included, so the batches workers prefetch before the first one is
asked for are not free) and the peak resident memory (VmHWM) of the main process and of each worker,
read before the workers stop; the total adds them, an upper bound since forked workers share pages.
Beside each figure: the memory the split would take decoded up front (frames x bytes per sample),
which is what an eager path would have held.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .memory import status_kib

MIB = 2**20


@dataclass
class DataBenchResult:
    name: str  # e.g. "gmae_tiny, 10000 synthetic scenes"
    workers: int
    samples: int  # samples drawn after the warm-up batch
    samples_per_s: float
    main_peak_mib: float
    worker_peak_mib: list[float]
    decoded_split_mib: float  # frames x bytes of one sample

    @property
    def total_peak_mib(self) -> float:
        return self.main_peak_mib + sum(self.worker_peak_mib)


def measure(preset: str, overrides: list[str], workers: int, batches: int, seed: int = 0) -> dict:
    """One configuration, in this process (see the module docstring)."""
    from torch.utils.data import DataLoader

    from ..data.unreadable import SkippingCollate, SkipUnreadable
    from ..experiment import load_experiment, pretraining_data
    from ..train.sampler import ResumableDistributedSampler

    cfg = load_experiment(preset, [*overrides, f"data.workers={workers}"])
    dataset, collate = pretraining_data(cfg)
    sampler = ResumableDistributedSampler(len(dataset), seed=seed)
    loader = DataLoader(SkipUnreadable(dataset), batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=SkippingCollate(collate), num_workers=workers, persistent_workers=workers > 0)
    start = time.perf_counter()
    it = iter(loader)  # starts the workers
    for _ in range(batches):
        batch, _ = next(it)
    seconds = time.perf_counter() - start
    worker_pids = [w.pid for w in getattr(it, "_workers", [])]
    worker_peaks = [status_kib("VmHWM", pid) / 1024 for pid in worker_pids]
    sample = dataset[0]
    sample_bytes = sum(v.numel() * v.element_size() for v in sample.values() if isinstance(v, torch.Tensor))
    return {"samples": batches * cfg.train.batch_size, "samples_per_s": batches * cfg.train.batch_size / seconds,
            "main_peak_mib": status_kib("VmHWM") / 1024, "worker_peak_mib": worker_peaks,
            "decoded_split_mib": len(dataset) * sample_bytes / MIB, "batch_keys": sorted(batch)}


def run_isolated(name: str, preset: str, overrides: list[str], workers: int, batches: int) -> DataBenchResult:
    """:func:`measure` in a fresh Python process (so the peak memory is this configuration's alone)."""
    code = ("import json, sys; from renderssl.bench.data import measure; "
            "print(json.dumps(measure(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))")
    done = subprocess.run([sys.executable, "-c", code, preset, json.dumps(overrides), str(workers), str(batches)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench data: {name} with {workers} workers failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return DataBenchResult(name, workers, out["samples"], out["samples_per_s"], out["main_peak_mib"],
                           out["worker_peak_mib"], out["decoded_split_mib"])


def write_folder(root: Path, frames: int, views: int = 100, size: int = 64) -> Path:
    """A ScanNet-style folder of ``frames`` RGB-D frames (``frames // views`` synthetic rooms), written
    once and reused."""
    from ..data.formats import write_scannet
    from ..data.synthetic import SyntheticConfig, generate_scene

    scenes = max(1, frames // views)
    marker = root / f".complete_{scenes}x{views}_{size}"
    if not marker.is_file():
        synth = SyntheticConfig(num_views=views, width=size, height=size)
        for i in range(scenes):
            write_scannet(generate_scene(100_000 + i, synth), root / f"scene{i:04d}")
        marker.write_text("")
    return root


def bench_data(pools=(1000, 10000), folder: Path | None = None, folder_frames: int = 2000, workers=(0, 2),
               batches: int = 20, recipes=("gmae_tiny", "mask3d_tiny"), log=print) -> list[DataBenchResult]:
    """Every recipe x (each synthetic pool, the folder) x workers (see the module docstring)."""
    sources = [(f"{n} synthetic scenes", [f"data.pretrain_scenes={n}"]) for n in pools]
    if folder is not None:
        write_folder(folder, folder_frames)
        scenes = len([p for p in folder.iterdir() if p.is_dir()])
        sources.append((f"folder of {folder_frames} RGB-D frames", [
            f"data.source={folder}", f"data.train_scenes={scenes}", "data.val_scenes=0", "data.test_scenes=0"]))
    results = []
    for recipe in recipes:
        for label, overrides in sources:
            init = ["mask3d.init_from=null"] if recipe.startswith("mask3d") else []  # no Stage I run: data only
            for w in workers:
                result = run_isolated(f"{recipe}, {label}", recipe, [*overrides, *init], w, batches)
                log(format_row(result))
                results.append(result)
    return results


def format_row(r: DataBenchResult) -> str:
    workers = " + ".join(f"{p:.0f}" for p in r.worker_peak_mib)
    peaks = f"peak {r.main_peak_mib:7.0f} MiB" + (f" + workers {workers} = {r.total_peak_mib:.0f} MiB" if workers else "")
    return (f"{r.name:44s} workers {r.workers}  {r.samples_per_s:8.1f} samples/s  {peaks}  "
            f"(decoded up front: {r.decoded_split_mib / 1024:.1f} GiB)")


def format_data_bench(results: list[DataBenchResult]) -> str:
    """Summary lines: memory growth with the pool and the speed-up from workers."""
    lines = []
    by = {(r.name, r.workers): r for r in results}
    names = list(dict.fromkeys(r.name for r in results))
    for recipe in dict.fromkeys(n.split(",")[0] for n in names):
        pools = [n for n in names if n.startswith(recipe + ",") and "synthetic" in n]
        for w in sorted({r.workers for r in results}):
            if len(pools) >= 2 and (pools[0], w) in by and (pools[-1], w) in by:
                small, large = by[(pools[0], w)], by[(pools[-1], w)]
                lines.append(f"{recipe}: peak memory {large.name.split(', ')[1]} / {small.name.split(', ')[1]} = "
                             f"{large.total_peak_mib / small.total_peak_mib:.2f}x with {w} workers")
    for name in names:
        speeds = {r.workers: r.samples_per_s for r in results if r.name == name}
        if 0 in speeds and len(speeds) > 1:
            w = max(speeds)
            lines.append(f"{name}: {w} workers / 0 workers = {speeds[w] / speeds[0]:.2f}x samples/s")
    return "\n".join(lines)
