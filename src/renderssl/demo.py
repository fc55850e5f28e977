"""``renderssl demo``: the whole loop on the embedded synthetic data, in minutes on a CPU.

1. Pretrain GMAE (tiny preset) on the training scenes, with previews, logs and checkpoints.
2. Export its encoder.
3. Fine-tune 2D semantic segmentation from it and from scratch (same architecture, identical budget,
   same label subset and seed) and score both on the held-out test scenes.
4. Print the comparison and where everything is.
"""

from __future__ import annotations

import time
from pathlib import Path

from .eval.downstream import DownstreamConfig
from .experiment import ENCODER_DIR, load_experiment, run_pretraining
from .finetune import run_comparison, save_json

METRICS = (("miou", "mIoU"), ("overall_acc", "pixel acc"), ("mean_class_acc", "class acc"))


def format_comparison(result: dict) -> str:
    lines = [f"{'encoder':12s}" + "".join(f"{label:>18s}" for _, label in METRICS)]
    for name in ("pretrained", "scratch"):
        summary = result[name]
        cells = "".join(f"{summary['mean'][k]:>11.3f} ± {summary['std'][k]:<4.3f}" for k, _ in METRICS)
        lines.append(f"{('GMAE' if name == 'pretrained' else 'scratch'):12s}{cells}")
    return "\n".join(lines)


def run_demo(out="runs/demo", pretrain_steps: int = 300, finetune_steps: int = 150, label_fraction: float = 0.25,
             seeds=(0,), log=print, threads=None) -> dict:
    out = Path(out)
    start = time.perf_counter()
    cfg = load_experiment("gmae_tiny", [f"train.out_dir={out / 'gmae_tiny'}", f"train.steps={pretrain_steps}"])
    log(f"[1/3] pretraining GMAE (ViT-Tiny, {cfg.gmae.num_gaussians} Gaussians) for {pretrain_steps} steps on "
        f"{cfg.data.train_scenes} synthetic rooms; previews in {out / 'gmae_tiny' / 'previews'}")
    summary = run_pretraining(cfg, threads=threads)
    encoder = Path(cfg.train.out_dir) / ENCODER_DIR
    log(f"      done in {time.perf_counter() - start:.0f} s, final loss {summary.last_loss:.4f}; encoder exported to {encoder}")

    ds = DownstreamConfig(task="segmentation", mode="finetune", steps=finetune_steps, label_fraction=label_fraction)
    log(f"[2/3] fine-tuning segmentation from GMAE and from scratch ({finetune_steps} steps each, "
        f"{label_fraction:.0%} of the training scenes' labels, seeds {list(seeds)}); scoring on {cfg.data.test_scenes} held-out scenes")
    result = run_comparison(encoder, cfg.data, ds, seeds)
    results_path = save_json(result, out / "demo_results.json")
    log("[3/3] semantic segmentation on held-out scenes (mean ± std over seeds):")
    log(format_comparison(result))
    log(f"\nwall time {time.perf_counter() - start:.0f} s")
    log(f"previews: {out / 'gmae_tiny' / 'previews'}  logs: {summary.metrics} (+ TensorBoard in {out / 'gmae_tiny'})")
    log(f"encoder: {encoder} (safetensors + JSON, timm ViT names)  results: {results_path}")
    return {"pretraining": summary, "comparison": result, "seconds": time.perf_counter() - start}
