"""``renderssl bench memory``: peak memory of one pretraining step, per batch and per rendered pixel, for
any recipe at its preset, every preset in one process so that recipes are compared side by side (GS³
vs PonderV2 at the paper's settings: GS³ renders two 320x240 views per scene, Ponder-RGBD 4,800 rays
per scene; the GS³ paper reports 10.3 vs 38.4 GB per batch).

- The step is the trainer's: the preset's batch (``train.batch_size`` samples of its pretraining data,
  through the recipe's Dataset and collate function), forward, backward, the preset's optimiser step.
  One untimed step first (the optimiser's state is allocated there), then ``repeats`` measured steps;
  the figures are the largest peak and the fastest step.
- Peak (:class:`~renderssl.bench.memory.PeakMemory`): on CUDA the allocator's peak during the step above
  what was allocated before it, every preset in this process; on CPU the growth of the resident set's
  high-water mark, each preset in a fresh child process (memory an earlier preset freed stays in the
  process's heap and would hide the next one's growth; the rows still come back as one table). Both count the
  step's activations and temporaries, not the model state held across steps (parameters, gradients
  held between steps, optimiser moments), which is reported apart as ``state`` (its bytes as
  tensors) with ``total = state + step peak``: what a GPU of that size must hold.
- Per rendered pixel: step peak / ``MethodOutput.rendered_pixels`` (the pixels or rays the step
  rendered and compared with observed ones). Recipes that render nothing (MAE's pixel decoder,
  Mask3D's depth decoder) show "-".
- Stage fields (Mask3D's ``init_from``) are cleared: weights do not change memory.
- LPIPS: a preset whose loss has an LPIPS term but whose VGG weight files are not set (``*.lpips_weights``)
  gets stand-in files with randomly initialised networks of the same architecture, written to a
  temporary folder: the same memory and time as the real weights, and the output says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import default_collate

from ..errors import InputError
from ..experiment import RECIPES, ExperimentConfig, build_method, load_experiment, pretraining_data
from ..methods.base import StepContext
from ..train.optim import build_optimizer
from ..train.trainer import move_to_device
from .memory import PeakMemory, synchronize, use_mmap_for_large_blocks


@dataclass
class StepMemory:
    preset: str
    recipe: str
    encoder: str
    batch: int
    resolution: tuple[int, int]  # (H, W) of the data
    parameters: int
    state_bytes: int  # parameters + gradients + optimiser state, as tensors
    step_peak_bytes: int | None  # largest peak of the measured steps above the state; None: unmeasurable
    rendered_pixels: int  # per step (the whole batch)
    seconds: float  # fastest measured step
    lpips_stand_in: bool = False

    @property
    def total_bytes(self) -> int | None:
        return None if self.step_peak_bytes is None else self.state_bytes + self.step_peak_bytes

    @property
    def bytes_per_pixel(self) -> float | None:
        if self.step_peak_bytes is None or not self.rendered_pixels:
            return None
        return self.step_peak_bytes / self.rendered_pixels


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def model_state_bytes(method: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the parameters, their gradients and the optimiser's per-parameter state."""
    params = list(method.parameters())
    state = [v for s in optimizer.state.values() for v in s.values()]
    return tensor_bytes(params) + tensor_bytes(p.grad for p in params) + tensor_bytes(state)


def lpips_weight_fields(config, prefix: str = "") -> list[str]:
    """Dotted names of the LPIPS weight-path sections (``LPIPSWeights``) inside a recipe config whose
    files are not both set and present, where the config's ``lpips_weight`` beside them is > 0."""
    from ..eval.lpips import LPIPSWeights

    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, LPIPSWeights):
            paths = (value.vgg_path, value.lin_path)
            if getattr(config, "lpips_weight", 0) > 0 and not all(p and Path(p).is_file() for p in paths):
                found.append(prefix + f.name)
        elif dataclasses.is_dataclass(value):
            found += lpips_weight_fields(value, f"{prefix}{f.name}.")
    return found


def write_stand_in_lpips(folder: Path) -> tuple[str, str]:
    """A randomly initialised LPIPS-VGG as the two weight files ``LPIPS.from_files`` reads."""
    from ..eval.lpips import LPIPS

    state = LPIPS().state_dict()
    vgg, lin = folder / "vgg16_stand_in.pth", folder / "lpips_lin_stand_in.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, vgg)
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, lin)
    return str(vgg), str(lin)


def bench_config(preset: str, overrides: list[str], scratch: Path) -> tuple[ExperimentConfig, bool]:
    """The preset with ``overrides``, stage fields cleared, only as many training scenes as one batch
    needs, and stand-in LPIPS files where its own are missing."""
    cfg = load_experiment(preset, list(overrides))
    extra = [f"data.train_scenes={max(1, min(cfg.data.train_scenes, cfg.train.batch_size))}"]
    extra += [f"{cfg.method}.{name}=null" for name in RECIPES[cfg.method].stage_fields]
    missing = lpips_weight_fields(cfg.recipe)
    if missing:
        vgg, lin = write_stand_in_lpips(scratch)
        extra += [f"{cfg.method}.{name}.{key}={path}" for name in missing for key, path in (("vgg_path", vgg), ("lin_path", lin))]
    return load_experiment(preset, [*overrides, *extra]), bool(missing)


def first_batch_builder(cfg: ExperimentConfig, step: int | None = None, bench: str = "bench memory"):
    """A function collating the first ``train.batch_size`` samples of ``cfg``'s pretraining data, the
    dataset told schedule step ``step`` (curricula) when given; one dataset, so later calls hit its caches."""
    dataset, collate = pretraining_data(cfg)
    if len(dataset) < cfg.train.batch_size:
        raise InputError(f"{bench}: {cfg.method} has {len(dataset)} pretraining samples, fewer than one batch ({cfg.train.batch_size})")
    if step is not None and hasattr(dataset, "set_step"):
        dataset.set_step(step, cfg.train.steps)
    return lambda: (collate or default_collate)([dataset[i] for i in range(cfg.train.batch_size)])


def first_batch(cfg: ExperimentConfig) -> dict:
    return first_batch_builder(cfg)()


def measure_step_memory(preset: str, overrides: list[str] = (), device: str = "cpu", repeats: int = 2) -> StepMemory:
    device = torch.device(device)
    use_mmap_for_large_blocks()
    with tempfile.TemporaryDirectory() as scratch:
        cfg, stand_in = bench_config(preset, list(overrides), Path(scratch))
        method = build_method(cfg).to(device).train()
    batch = move_to_device(first_batch(cfg), device)
    optimizer = build_optimizer(method, cfg.optim, total_batch=cfg.train.batch_size, groups=method.param_groups())

    def step(i: int) -> int:
        out = method(batch, StepContext(torch.Generator().manual_seed(i), i, repeats + 1))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return out.rendered_pixels

    step(1)
    peaks, seconds = [], []
    for i in range(repeats):
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            pixels = step(i + 2)
            synchronize(device)
            seconds.append(time.perf_counter() - start)
        peaks.append(peak.bytes)
    H, W = cfg.data.height, cfg.data.width
    return StepMemory(
        preset=preset, recipe=cfg.method, encoder=method.encoder_architecture, batch=cfg.train.batch_size,
        resolution=(H, W), parameters=sum(p.numel() for p in method.parameters()),
        state_bytes=model_state_bytes(method, optimizer),
        step_peak_bytes=None if None in peaks else max(peaks), rendered_pixels=pixels, seconds=min(seconds),
        lpips_stand_in=stand_in,
    )


def measure_in_child(preset: str, overrides: list[str], device: str, repeats: int) -> StepMemory:
    """:func:`measure_step_memory` in a fresh Python process (same torch threads), its row read back."""
    command = [sys.executable, "-m", "renderssl.bench.step_memory", preset, *overrides, "--device", device,
               "--repeats", str(repeats), "--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"bench memory: {preset} failed: {last}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return StepMemory(**{**row, "resolution": tuple(row["resolution"])})


def bench_memory(presets: list[str], overrides: list[str] = (), device: str = "cpu", repeats: int = 2, log=print) -> list[StepMemory]:
    """One row per preset; on CPU each measured in its own process (module docstring)."""
    measure = measure_step_memory if torch.device(device).type == "cuda" else measure_in_child
    rows = []
    for preset in presets:
        rows.append(measure(preset, list(overrides), device, repeats))
        log(format_row(rows[-1]))
    return rows


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def _per_second(r: StepMemory) -> str:
    """Rendered pixels (rays) per second of training step."""
    return f"{r.rendered_pixels / r.seconds:,.0f}" if r.rendered_pixels and r.seconds > 0 else "-"


def format_row(r: StepMemory) -> str:
    per_pixel = "-" if r.bytes_per_pixel is None else f"{r.bytes_per_pixel / 1024:.1f} KiB"
    pixels = f"{r.rendered_pixels:,}" if r.rendered_pixels else "-"
    note = " (LPIPS: stand-in random weights)" if r.lpips_stand_in else ""
    return (f"{r.preset:16s} {r.recipe:6s} {r.encoder:11s} batch {r.batch:3d} at {r.resolution[1]}x{r.resolution[0]}: "
            f"step peak {_gib(r.step_peak_bytes)}, state {_gib(r.state_bytes)} ({r.parameters / 1e6:.1f} M params), "
            f"total {_gib(r.total_bytes)}; rendered pixels {pixels}, {per_pixel}/pixel; {r.seconds:.2f} s/step, "
            f"{_per_second(r)} pixels/s{note}")


def format_table(rows: list[StepMemory]) -> str:
    lines = ["| preset | recipe | encoder | batch | size | rendered pixels / batch | step peak | state | total | per rendered pixel | s/step | pixels/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_pixel = "-" if r.bytes_per_pixel is None else f"{r.bytes_per_pixel / 1024:.1f} KiB"
        pixels = f"{r.rendered_pixels:,}" if r.rendered_pixels else "-"
        lines.append(f"| {r.preset} | {r.recipe} | {r.encoder} | {r.batch} | {r.resolution[1]}x{r.resolution[0]} | "
                     f"{pixels} | {_gib(r.step_peak_bytes)} | {_gib(r.state_bytes)} | {_gib(r.total_bytes)} | "
                     f"{per_pixel} | {r.seconds:.2f} | {_per_second(r)} |")
    return "\n".join(lines)


def main() -> None:
    """The child of :func:`measure_in_child`: one preset, its row as JSON on the last line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("preset")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    row = measure_step_memory(args.preset, args.overrides, args.device, args.repeats)
    print(json.dumps(dataclasses.asdict(row)))


if __name__ == "__main__":
    main()
