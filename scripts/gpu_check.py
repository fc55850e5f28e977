"""One pass over renderssl's CUDA path, for a GPU machine lent for a few minutes; figures to docs/results.

    python scripts/gpu_check.py --out DIR [--gsplat-build "CMD"] [--budget SECONDS]

Parts, each recorded whatever the others do (an exception is written down, the next part runs):

1. Rasterizer parity with gradients: one random scene (2 cameras, 128x96, 3,000 Gaussians, view-dependent
   SH colour of degree 3), rendered by the ``dense`` backend in float64 on the GPU (the reference, the
   math written out), the ``tiles`` backend on the GPU and on the CPU, and ``gsplat`` when it is built.
   A fixed random weighting of colour, depth and alpha is the loss; reported: the largest forward
   difference and, per parameter (means, quats, scales, opacities, SH coefficients), the relative error
   of the gradient ``|g - g_ref| / |g_ref|``.
2. Sparse convolution and PointNet++ on the GPU against the CPU: the SparseUNet ``base`` and PointNet++
   ``scene`` encoders with the same weights on the same 20,000-point cloud; relative error of the
   features, of all gradients together and the largest of one parameter's (among gradients above 1e-4
   of the largest: biases before a BatchNorm have none in exact arithmetic), and forward + backward times.
3. A paper-scale pretraining step of each recipe (``renderssl bench memory`` on every ``*_base``
   preset, and GS³'s 3D path with the SparseUNet): seconds per step and peak memory per batch.
4. With gsplat built (``--gsplat-build``, started first, in the background; the package is importable
   from ``--gsplat-path`` only from here on, so that parts 1-3 run the ``tiles`` backend): part 1 again
   with it, and the GS³ paper-scale steps with ``render_backend=gsplat``.

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``; runs on a CPU too (parts 1-2 compare the
CPU with itself there), which is how it is tested before a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from renderssl.bench.memory import synchronize  # noqa: E402
from renderssl.bench.step_memory import bench_memory, format_table  # noqa: E402
from renderssl.geometry import Cameras, look_at  # noqa: E402
from renderssl.render.gaussians import Gaussians  # noqa: E402
from renderssl.render.sh import num_sh_bases  # noqa: E402
from renderssl.render.splat import gsplat_available, rasterize  # noqa: E402

PARAMS = ("means", "quats", "scales", "opacities", "colors")
PRESETS = ("mae_base", "gmae_base", "mask3d_base", "gs3_rgbd_base", "gs3_rgb_base")
GS3_PRESETS = ("gs3_rgbd_base", "gs3_rgb_base")


def splat_scene(n: int = 3000, width: int = 128, height: int = 96, sh_degree: int = 3, seed: int = 0):
    """Gaussians (1, N) with SH colours (1, N, K, 3) in front of two cameras (1, 2)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(1, n, 3, generator=g) * torch.tensor([1.0, 0.8, 0.6])
    quats = torch.nn.functional.normalize(torch.randn(1, n, 4, generator=g), dim=-1)
    scales = torch.exp(torch.randn(1, n, 3, generator=g) * 0.3 - 3.0)
    opacities = torch.rand(1, n, generator=g) * 0.9 + 0.05
    colors = torch.randn(1, n, num_sh_bases(sh_degree), 3, generator=g) * 0.3
    eyes = torch.tensor([[0.3, -0.2, -4.0], [-0.5, 0.3, -3.8]])
    c2w = look_at(eyes, torch.zeros(2, 3), torch.tensor([0.0, -1.0, 0.0]).expand(2, 3))[None]  # (1, 2, 4, 4)
    f = 0.9 * width
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]).expand(1, 2, 3, 3)
    return Gaussians(means, quats, scales, opacities, colors), Cameras(K, c2w, width, height)


def render_with_grads(gauss: Gaussians, cams: Cameras, backend: str, device, dtype, sh_degree: int = 3) -> dict:
    leaves = {p: getattr(gauss, p).to(device, dtype).detach().clone().requires_grad_(True) for p in PARAMS}
    cams = Cameras(cams.K.to(device, dtype), cams.c2w.to(device, dtype), cams.width, cams.height)
    out = rasterize(Gaussians(**leaves), cams, backend=backend, sh_degree=sh_degree)
    w = torch.Generator().manual_seed(1)
    weights = [torch.rand(t.shape, generator=w).to(device, dtype) for t in (out.color, out.depth, out.alpha)]
    loss = sum((t * wt).sum() for t, wt in zip((out.color, out.depth, out.alpha), weights))
    loss.backward()
    return {"color": out.color.detach().double().cpu(), "depth": out.depth.detach().double().cpu(),
            "alpha": out.alpha.detach().double().cpu(), **{f"grad_{p}": leaves[p].grad.double().cpu() for p in PARAMS}}


def compare(result: dict, reference: dict) -> dict:
    row = {f"max |d {k}|": float((result[k] - reference[k]).abs().max()) for k in ("color", "depth", "alpha")}
    for p in PARAMS:
        g, r = result[f"grad_{p}"], reference[f"grad_{p}"]
        row[f"grad {p} rel err"] = float((g - r).norm() / r.norm().clamp_min(1e-30))
    return row


def splat_parity(device: torch.device, backends: tuple[str, ...], n: int = 3000) -> dict:
    gauss, cams = splat_scene(n)
    reference = render_with_grads(gauss, cams, "dense", device, torch.float64)
    rows = {}
    for backend in backends:
        for where in (device, torch.device("cpu")) if backend == "tiles" else (device,):
            start = time.perf_counter()
            result = render_with_grads(gauss, cams, backend, where, torch.float32)
            rows[f"{backend} fp32 on {where.type}"] = {**compare(result, reference), "seconds": time.perf_counter() - start}
    return {"reference": f"dense fp64 on {device.type}", "gaussians": gauss.means.shape[1], "views": 2,
            "size": [cams.height, cams.width], "rows": rows}


def encoder_parity(device: torch.device, points: int = 20000) -> dict:
    from renderssl.bench.encoders import bench_cloud, build_encoders

    xyz, feats = bench_cloud(points)
    keep = torch.randperm(len(xyz), generator=torch.Generator().manual_seed(0))[:points]
    xyz, feats, offset = xyz[keep], feats[keep], torch.tensor([points])
    rows = {}
    for name, encoder in build_encoders("base", "scene").items():
        results = {}
        for where in (torch.device("cpu"), device):
            enc = encoder.to(where).train()
            for _ in range(2):  # the second call is timed
                enc.zero_grad(set_to_none=True)
                synchronize(where)
                start = time.perf_counter()
                out = enc(xyz.to(where), feats.to(where), offset.to(where))
                out.square().mean().backward()
                synchronize(where)
            grads = {n: p.grad.double().cpu() for n, p in enc.named_parameters() if p.grad is not None}
            results[where.type] = (out.detach().double().cpu(), grads, time.perf_counter() - start)
        (f_cpu, g_cpu, s_cpu), (f_dev, g_dev, s_dev) = results["cpu"], results[device.type]
        names = list(g_cpu)
        whole = float(torch.cat([(g_dev[n] - g_cpu[n]).flatten() for n in names]).norm() / torch.cat([g_cpu[n].flatten() for n in names]).norm())
        # a conv bias right before a BatchNorm has a zero gradient in exact arithmetic (~1e-9 here): its
        # relative error is noise over noise, so the per-parameter maximum skips gradients below 1e-4 of the largest
        largest = max(float(g.norm()) for g in g_cpu.values())
        per_param = max(float((g_dev[n] - g).norm() / g.norm()) for n, g in g_cpu.items() if float(g.norm()) > 1e-4 * largest)
        rows[name] = {"features rel err": float((f_dev - f_cpu).norm() / f_cpu.norm()), "all grads rel err": whole,
                      "max grad rel err (|g| > 1e-4 max)": per_param,
                      f"fwd+bwd seconds on {device.type}": s_dev, "fwd+bwd seconds on cpu": s_cpu}
    return {"points": points, "rows": rows}


def paper_steps(device: torch.device, presets, overrides=(), label: str = "") -> dict:
    rows, errors = [], {}
    for preset in presets:
        try:
            rows += bench_memory([preset], list(overrides), device=str(device), repeats=2)
        except Exception as err:  # recorded, the next preset runs
            errors[preset] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
    return {"label": label, "overrides": list(overrides), "table": format_table(rows) if rows else "",
            "rows": [dict(vars(r), total_bytes=r.total_bytes, bytes_per_pixel=r.bytes_per_pixel) for r in rows], "errors": errors}


def run_part(name: str, results: dict, out: Path, fn, *args):
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    try:
        results[name] = fn(*args)
    except Exception as err:
        traceback.print_exc()
        results[name] = {"error": f"{type(err).__name__}: {err}"}
    results[name]["wall_seconds"] = time.perf_counter() - start
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results[name], indent=1, default=str)[:4000], flush=True)


def markdown(results: dict) -> str:
    lines = [f"# renderssl CUDA check ({results['machine']['date']})", "", "```", json.dumps(results["machine"], indent=1), "```"]
    for name, part in results.items():
        if name == "machine":
            continue
        lines += ["", f"## {name}", ""]
        rows = part.get("rows")
        if isinstance(rows, dict) and rows:
            keys = list(next(iter(rows.values())))
            lines += ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            lines += [f"| {k} | " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |" for k, r in rows.items()]
        if part.get("table"):
            lines += [part["table"]]
        for key in ("errors", "error", "log_tail"):
            if part.get(key):
                lines += ["", f"{key}: `{part[key]}`" if key != "log_tail" else "```\n" + part[key] + "\n```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--gsplat-build", default="", help="shell command that builds gsplat's CUDA kernels (run first, in the background)")
    parser.add_argument("--gsplat-path", default="", help="folder holding the gsplat package, put on sys.path for part 4 only "
                        "(before it, 'auto' must not pick a gsplat whose kernels are still building)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which gsplat's build is no longer waited for")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--parts", default="1,2,3", help="comma-separated parts 1-3 to run (4 follows --gsplat-build)")
    parser.add_argument("--quick", action="store_true", help="tiny presets (a CPU test of this script)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    build = None
    if args.gsplat_build:
        build = subprocess.Popen(args.gsplat_build, shell=True, stdout=open(out / "gsplat_build.log", "w"), stderr=subprocess.STDOUT)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"machine": {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__, "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "cuda": torch.version.cuda,
        "cpu threads": torch.get_num_threads(),
    }}
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if args.quick:
        presets = [p.replace("_base", "_tiny") for p in presets]
    parts = set(args.parts.split(","))
    if "1" in parts:
        run_part("1. rasterizer parity with gradients", results, out, splat_parity, device, ("tiles",), 300 if args.quick else 3000)
    if "2" in parts:
        run_part("2. SparseUNet and PointNet++, GPU vs CPU", results, out, encoder_parity, device, 5000 if args.quick else 20000)
    if "3" in parts:
        run_part("3. paper-scale pretraining steps", results, out, paper_steps, device, presets, (), "render_backend auto")
        gs3 = [p for p in presets if p.startswith("gs3_rgbd")]
        run_part("3b. GS³ 3D path with the SparseUNet", results, out, paper_steps, device, gs3, ("gs3.encoder_architecture=sparse_unet",), "sparse_unet")
    if build is not None:
        try:
            rc = build.wait(timeout=max(1.0, args.budget - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            build.kill()
            rc = "timed out"
        log = (out / "gsplat_build.log").read_text(errors="replace")
        if args.gsplat_path:
            sys.path.insert(0, args.gsplat_path)
        results["4. gsplat build"] = {"returncode": rc, "log_tail": log[-1500:], "available": rc == 0 and gsplat_available()}
        if results["4. gsplat build"]["available"]:
            run_part("4a. rasterizer parity with gsplat", results, out, splat_parity, device, ("gsplat",))
            gs3_all = [p for p in presets if p.startswith("gs3")]
            run_part("4b. GS³ paper-scale steps with gsplat", results, out, paper_steps, device, gs3_all, ("gs3.render_backend=gsplat",), "gsplat")
    results["machine"]["total seconds"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(results))
    print(f"wrote {out / 'gpu_check.md'} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
