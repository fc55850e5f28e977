"""``renderssl <verb>``: the command-line entry point.

    renderssl demo                                  pretrain GMAE, fine-tune vs scratch, compare
    renderssl pretrain CONFIG [key=value ...]       CONFIG: a preset (gmae_tiny, mae_base, ...) or a YAML path
    renderssl config CONFIG [key=value ...]         print the resolved config (YAML) a run of it would write
    renderssl finetune ENCODER [key=value ...]      downstream.* / data.* overrides; --scratch for the baseline
    renderssl evaluate RUN [data.key=value ...]     reconstruction and (GMAE) zero-shot edges on held-out frames;
                                                    multi-view recipes: novel views vs the nearest context view
                                                    at the run's training resolution
    renderssl compare ENC [ENC ...] [key=value]      encoders vs scratch over label fractions and seeds
                                                    (--architectures sparse_unet:small: scratch 3D encoders)
    renderssl sweep mask3d_ratio_grid               pretrain a grid of configs (e.g. mask ratios), then compare
    renderssl export RUN [--out DIR]                encoder-only safetensors + JSON
    renderssl data synth --out DIR ...              procedural scenes on disk
    renderssl data inspect PATH [--json FILE]       what a data folder holds; camera / depth sanity; bad files
    renderssl bench render | step CONFIG [CONFIG ...] | step --all-tiny | encoders  benchmarks
    renderssl bench memory PRESET [PRESET ...]      peak memory per batch and per rendered pixel of a step
    renderssl bench boundaries [--gt DIR --pred DIR] BSDS benchmark wall time; fast path vs twin on --check N
"""

from __future__ import annotations

import argparse
import sys

from .errors import InputError


def _data_synth(args) -> None:
    from .synth_export import export_synthetic, parse_size

    export_synthetic(
        args.out, scenes=args.scenes, views=args.views, size=parse_size(args.size), kind=args.kind,
        formats=[f for f in args.formats.split(",") if f], seed=args.seed, preview=not args.no_preview,
    )


def _data_inspect(args) -> None:
    from .data.formats.options import ReadOptions
    from .data.inspect import format_report, inspect_path, write_json

    options = ReadOptions(split=args.blender_split, llff_factor=args.llff_factor)
    report = inspect_path(args.path, max_frames=args.max_frames, options=options)
    print(format_report(report))
    if args.json:
        print(f"report written to {write_json(report, args.json)}")


def _bench_start(args, what: str):
    """Set the torch threads, print the bench's name and the machine it runs under (threads, cores, load,
    other processes' CPU use); return the CPU snapshot that :func:`_bench_end` reports the load since."""
    from .bench.machine import cpu_snapshot, describe_machine

    print(f"renderssl bench {what} on {args.device}", flush=True)
    print(describe_machine(), flush=True)
    return cpu_snapshot()


def _bench_end(snapshot) -> None:
    from .bench.machine import describe_load_since

    print(describe_load_since(snapshot))


def _bench_render(args) -> None:
    from .bench.render import COUNTS, QUICK_DENSE_MAX_GIB, SIZES, bench_render, default_dense_budget, format_render_bench

    if args.dense_max_gib is not None and not args.dense_max_gib > 0:
        raise InputError(f"bench render: --dense-max-gib must be > 0, got {args.dense_max_gib}")
    snapshot = _bench_start(args, "render")
    from .bench.render import bench_compositing
    from .render.splat_compiled import compiled_kernel

    # The compiled kernel's ns/pair vs an in-cache exp, and compiled vs tiles (1 thread): alone with
    # --compositing, else first in the full run (CPU with the kernel built).
    if args.compositing or (args.device == "cpu" and not args.quick and compiled_kernel() is not None):
        bench_compositing()
    if args.compositing:
        _bench_end(snapshot)
        return
    counts, sizes = (COUNTS[:3], SIZES[:2]) if args.quick else (COUNTS, SIZES)
    scenes = tuple(s for s in args.scenes.split(",") if s)
    budget = None if args.dense_max_gib is None else args.dense_max_gib * 2**30
    if budget is None and args.quick:
        budget = min(QUICK_DENSE_MAX_GIB * 2**30, default_dense_budget(args.device))
    result = bench_render(counts, sizes, scenes=scenes, dense_max_bytes=budget, device=args.device)
    print(format_render_bench(result))
    _bench_end(snapshot)


def _bench_step(args) -> None:
    from .bench.step import TINY_PRESETS, bench_step, format_table

    items = [a for a in ([args.config] if args.config else []) + args.overrides]
    presets = [a for a in items if "=" not in a]
    overrides = [a for a in items if "=" in a]
    if args.all_tiny:
        presets = [*TINY_PRESETS, *(p for p in presets if p not in TINY_PRESETS)]
    if not presets:
        raise InputError("bench step: give a preset or config (e.g. gmae_tiny), several, or --all-tiny")
    if args.repeats < 1 or args.warmup < 0 or args.profile < 0:
        raise InputError(f"bench step: --repeats must be >= 1 and --warmup, --profile >= 0, got {args.repeats}, {args.warmup}, {args.profile}")
    for preset in presets:
        _load_experiment(preset, overrides)  # a bad name or override fails before any timing
    snapshot = _bench_start(args, f"step {' '.join(presets)}")
    result = bench_step(presets, overrides, device=args.device, warmup=args.warmup, repeats=args.repeats,
                        profile=args.profile, sites=not args.no_sites, log=lambda text: print(text, flush=True))
    print()
    print(format_table(result))
    _bench_end(snapshot)


def _bench_memory(args) -> None:
    from .bench.step_memory import bench_memory, format_table

    presets = [a for a in args.items if "=" not in a]
    if not presets:
        raise InputError("bench memory: give at least one preset or config, e.g. gs3_rgbd_tiny gs3_rgb_tiny")
    if args.repeats < 1:
        raise InputError(f"bench memory: --repeats must be >= 1, got {args.repeats}")
    snapshot = _bench_start(args, f"memory {' '.join(presets)}")
    rows = bench_memory(presets, [a for a in args.items if "=" in a], device=args.device, repeats=args.repeats)
    print(format_table(rows))
    _bench_end(snapshot)


def _bench_boundaries(args) -> None:
    from .bench.boundaries import bench_boundaries, format_boundaries_bench

    snapshot = _bench_start(args, "boundaries")
    result = bench_boundaries(args.gt, args.pred, args.folder or None, images=args.images, seed=args.seed,
                              workers=args.workers or None, check=args.check, thresholds=args.thresholds)
    print(format_boundaries_bench(result))
    _bench_end(snapshot)


def _bench_encoders(args) -> None:
    from .bench.encoders import COUNTS, bench_encoders, format_encoder_bench

    counts = [int(c) for c in args.counts.split(",") if c] if args.counts else COUNTS
    snapshot = _bench_start(args, "encoders")
    result = bench_encoders(counts, sparse_unet=args.sparse_unet, pointnet2=args.pointnet2, device=args.device)
    print(format_encoder_bench(result))
    _bench_end(snapshot)


def _bench_data(args) -> None:
    import tempfile
    from pathlib import Path

    from .bench.data import bench_data, format_data_bench

    snapshot = _bench_start(args, "data")
    folder = Path(args.folder) if args.folder else Path(tempfile.gettempdir()) / "renderssl_bench_data_folder"
    pools = [int(n) for n in args.scenes.split(",") if n]
    workers = [int(n) for n in args.workers.split(",") if n]
    results = bench_data(pools, None if args.no_folder else folder, args.folder_frames, workers, args.batches)
    print(format_data_bench(results))
    _bench_end(snapshot)


SWEEP_MARKERS = ("base", "grid")  # top-level keys of a sweep file (sweep.SweepConfig) that no experiment config has


def _is_sweep_file(path) -> bool:
    from .typed_config import load_yaml

    try:
        return any(key in load_yaml(path) for key in SWEEP_MARKERS)
    except InputError:  # not a readable mapping: neither; loading it as a config reports the problem
        return False


def _load_experiment(name, overrides: list[str]):
    """``load_experiment(name, overrides)``; a sweep file is refused with a pointer to ``renderssl sweep``,
    and a config error names the override (``override KEY=VALUE: ...``) or the file that causes it."""
    from .experiment import load_experiment, resolve_config_path

    path = resolve_config_path(name)
    if path.is_file() and _is_sweep_file(path):
        raise InputError(f"{name} is a sweep file (a grid of pretraining runs), not a preset: run it with "
                         f"`renderssl sweep {name}`")
    return load_experiment(name, overrides)


def _presets_epilog() -> str:
    from .experiment import presets, resolve_config_path

    names = presets()
    sweeps = [n for n in names if _is_sweep_file(resolve_config_path(n))]
    return (f"presets: {', '.join(n for n in names if n not in sweeps)}\n"
            f"sweep files (for `renderssl sweep NAME`, not presets): {', '.join(sweeps) or 'none'}")


def _pretrain(args) -> None:
    from .experiment import run_pretraining

    from .train.distributed import launcher_rank

    summary = run_pretraining(_load_experiment(args.config, args.overrides), resume=args.resume, threads=args.governor)
    if launcher_rank() != 0:
        return
    print(f"step {summary.steps_done}: loss {summary.last_loss:.4f}; skipped non-finite steps: {summary.skipped_nonfinite}")
    print(f"run folder {summary.out_dir} (checkpoints, metrics.jsonl, TensorBoard, previews, encoder/)")


def _config(args) -> None:
    import yaml

    from .experiment import config_dict

    print(yaml.safe_dump(config_dict(_load_experiment(args.config, args.overrides)), sort_keys=False), end="")


def _finetune(args) -> None:
    from .finetune import data_config_of, downstream_config_for, run_comparison, run_finetune, save_json
    from .train.config import apply_overrides

    sections = apply_overrides({}, args.overrides)
    unknown = set(sections) - {"data", "downstream"}
    if unknown:
        raise InputError(f"finetune: overrides go to data.* or downstream.*, got {sorted(unknown)}")
    data_cfg = data_config_of(args.encoder, **sections.get("data", {}))
    cfg = downstream_config_for(args.encoder, sections.get("downstream", {}))  # task and features from the encoder
    if args.compare:
        result = run_comparison(args.encoder, data_cfg, cfg, seeds=tuple(range(args.compare)))
        for name in ("pretrained", "scratch"):
            print(name, {k: round(v, 4) for k, v in result[name]["mean"].items()})
    else:
        result = run_finetune(args.encoder, data_cfg, cfg, scratch=args.scratch)
        print({k: v for k, v in result["metrics"].items() if isinstance(v, float)})
    if args.out:
        print(f"wrote {save_json(result, args.out)}")


def _compare(args) -> None:
    from .compare import CompareConfig, run_compare
    from .train.config import apply_overrides, from_dict

    encoders = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    data = {
        "encoders": encoders, "names": [n for n in args.names.split(",") if n], "seeds": args.seeds, "first_seed": args.first_seed,
        "architectures": [a for a in args.architectures.split(",") if a],
        "tasks": [t for t in args.tasks.split(",") if t], "fractions": [float(f) for f in args.fractions.split(",") if f],
        "scratch": not args.no_scratch, "out_dir": args.out,
    }
    run_compare(from_dict(CompareConfig, apply_overrides(data, overrides), "compare"))


def _sweep(args) -> None:
    from .sweep import load_sweep, run_sweep

    cfg = load_sweep(args.file)
    cfg.overrides = [*cfg.overrides, *args.overrides]
    run_sweep(cfg, threads=args.governor)


def _evaluate(args) -> None:
    from .evaluate import evaluate_run

    if (args.images is None) != (args.gt is None):
        raise InputError("evaluate: give both --images and --gt, or neither")
    few_shot = None
    if args.few_shot is not None:
        from .eval.few_shot_nvs import FewShotConfig, parse_shots

        few_shot = FewShotConfig(shots=parse_shots(args.few_shot), steps=args.few_shot_steps, scenes=args.few_shot_scenes)
    evaluate_run(args.run, split=args.split, max_frames=args.max_frames, num_layers=args.layers,
                 images_dir=args.images, gt_dir=args.gt, overrides=args.overrides, scene=args.scene, few_shot=few_shot,
                 video=args.video, video_frames=args.video_frames)


def _export(args) -> None:
    from .experiment import export_run

    print(f"exported encoder to {export_run(args.run, args.out, args.checkpoint)}")


def _demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps,
             label_fraction=args.label_fraction, seeds=tuple(range(args.seeds)), threads=args.governor)


THREADS_HELP = ("torch threads (default 0: RENDERSSL_THREADS, else OMP_NUM_THREADS, else chosen from the usable cores "
                "and their load at start, and re-chosen every 5 s while pretraining)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="renderssl", description="Self-supervised pretraining by differentiable rendering.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    demo = verbs.add_parser("demo", help="pretrain GMAE on synthetic scenes, fine-tune segmentation vs scratch, compare")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--pretrain-steps", type=int, default=300)
    demo.add_argument("--finetune-steps", type=int, default=150)
    demo.add_argument("--label-fraction", type=float, default=0.25)
    demo.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per encoder")
    demo.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    demo.set_defaults(handler=_demo)

    pre = verbs.add_parser("pretrain", help="pretrain a recipe (torchrun for several processes)",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    pre.add_argument("config", help="preset name (listed below) or YAML path")
    pre.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=100")
    pre.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last.pt")
    pre.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    pre.set_defaults(handler=_pretrain)
    _list_presets_in_help(pre, "`renderssl config NAME [key=value ...]` prints the config a run would use.")

    conf = verbs.add_parser("config", help="print the resolved config (YAML) of a preset or YAML file plus overrides",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    conf.add_argument("config", help="preset name (listed below) or YAML path")
    conf.add_argument("overrides", nargs="*", help="key=value, e.g. gmae.camera=pinhole")
    conf.set_defaults(handler=_config)
    _list_presets_in_help(conf)

    fin = verbs.add_parser("finetune", help="fine-tune an exported encoder on a downstream task")
    fin.add_argument("encoder", help="exported encoder folder (renderssl export / <run>/encoder) or run folder, any architecture")
    fin.add_argument("overrides", nargs="*", help="downstream.task=depth, downstream.steps=300, data.test_scenes=8, ... "
                     "(default task: segmentation for vit/resnet, segmentation3d for sparse_unet/pointnet2)")
    fin.add_argument("--scratch", action="store_true", help="same architecture, fresh initialisation")
    fin.add_argument("--compare", type=int, default=0, metavar="SEEDS", help="pretrained vs scratch over SEEDS seeds")
    fin.add_argument("--out", help="write the result as JSON")
    fin.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    fin.set_defaults(handler=_finetune)

    cmp = verbs.add_parser("compare", help="fine-tune encoders and scratch at several label fractions and seeds; table + plot")
    cmp.add_argument("items", nargs="*", help="encoder or run folders, then key=value overrides (downstream.steps=100, ...)")
    cmp.add_argument("--architectures", default="", help="scratch-only entries, e.g. sparse_unet:small,pointnet2:small")
    cmp.add_argument("--names", default="", help="comma-separated labels (default: each encoder's recipe)")
    cmp.add_argument("--tasks", default="", help="segmentation, depth, classification, segmentation3d, view_segmentation, "
                     "view_depth (default: segmentation,depth for vit/resnet encoders, segmentation3d for "
                     "sparse_unet/pointnet2, view_segmentation,view_depth for nerf_transformer (NPS))")
    cmp.add_argument("--fractions", default="0.05,0.1,0.2,0.5,1.0", help="label fractions of the training scenes")
    cmp.add_argument("--seeds", type=int, default=3)
    cmp.add_argument("--first-seed", type=int, default=0, help="seeds FIRST .. FIRST + SEEDS - 1")
    cmp.add_argument("--no-scratch", action="store_true", help="leave out the scratch baseline")
    cmp.add_argument("--out", default="runs/compare")
    cmp.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    cmp.set_defaults(handler=_compare)

    sw = verbs.add_parser("sweep", help="pretrain every point of a config grid, then compare them (e.g. mask3d_ratio_grid)")
    sw.add_argument("file", help="sweep YAML or preset name")
    sw.add_argument("overrides", nargs="*", help="key=value applied to every run")
    sw.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    sw.set_defaults(handler=_sweep)

    ev = verbs.add_parser("evaluate", help="reconstruction and zero-shot evaluation of a pretraining run, or novel views "
                          "from two context views (multi-view recipes), at its training resolution")
    ev.add_argument("run", help="a renderssl pretrain output folder")
    ev.add_argument("overrides", nargs="*", help="data.* overrides of the run's data, e.g. data.source=DIR "
                    "data.test_scenes=2 data.resize=stretch")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--max-frames", type=int, default=64, help="frames scored (multi-view recipes: scenes, one target each)")
    ev.add_argument("--layers", type=int, default=16, help="depth layers for GMAE zero-shot edges (paper: 16)")
    ev.add_argument("--images", help="folder of images for BSDS-protocol edge evaluation (GMAE)")
    ev.add_argument("--gt", help="folder of BSDS500 groundTruth .mat files named like the images")
    ev.add_argument("--scene", help="NPS: a scene folder (ScanNet-style, 7-Scenes, Blender, LLFF) evaluated instead of the "
                    "test split (every 8th frame held out)")
    ev.add_argument("--few-shot", metavar="K,K,...", help="NPS: few-shot NVS, fine-tuned on K views of each evaluation "
                    "scene (e.g. 3,6,10), vs zero-shot, scratch and the nearest view")
    ev.add_argument("--few-shot-steps", type=int, default=200, help="fine-tuning steps per scene and K")
    ev.add_argument("--few-shot-scenes", type=int, default=1, help="test scenes fine-tuned on (without --scene)")
    ev.add_argument("--video", action="store_true", help="NPS: render a camera path through the scene to <run>/path.gif "
                    "(and path.mp4 with imageio-ffmpeg)")
    ev.add_argument("--video-frames", type=int, default=None, help="cap on the path's frames (default 120)")
    ev.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    ev.set_defaults(handler=_evaluate)

    ex = verbs.add_parser("export", help="export the encoder of a pretraining run")
    ex.add_argument("run")
    ex.add_argument("--out", help="output folder (default <run>/encoder)")
    ex.add_argument("--checkpoint", default="last.pt")
    ex.set_defaults(handler=_export)

    data = verbs.add_parser("data", help="make, convert or inspect data").add_subparsers(dest="action", required=True)
    synth = data.add_parser("synth", help="write procedural RGB-D scenes (ScanNet-style and Blender layouts) and a preview")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--scenes", type=int, default=4)
    synth.add_argument("--views", type=int, default=10)
    synth.add_argument("--size", default="64x64", help="WIDTHxHEIGHT")
    synth.add_argument("--kind", choices=("room", "object"), default="room")
    synth.add_argument("--formats", default="scannet,blender", help="comma-separated: scannet, blender, 7scenes, llff")
    synth.add_argument("--seed", type=int, default=0, help="seed of the first scene (scene i has seed + i)")
    synth.add_argument("--no-preview", action="store_true")
    synth.set_defaults(handler=_data_synth)
    insp = data.add_parser("inspect", help="what a folder holds as the readers see it: layout, format, scenes, frames, "
                           "sizes, depth, labels, intrinsics and pose sanity, depth reprojection, skipped files")
    insp.add_argument("path", help="a scene folder, a folder of scenes, of .ply files or of images, or a .ply file")
    insp.add_argument("--max-frames", type=int, default=None, help="frames read per scene (default: all)")
    insp.add_argument("--json", default=None, metavar="FILE", help="also write the full report as JSON")
    insp.add_argument("--blender-split", default=None, help="Blender / NeRF: read transforms_<split>.json only (data.blender_split)")
    insp.add_argument("--llff-factor", type=int, default=None, help="LLFF: read images_<n>/ (data.llff_factor)")
    insp.set_defaults(handler=_data_inspect)

    bench = verbs.add_parser("bench", help="benchmarks").add_subparsers(dest="action", required=True)
    render = bench.add_parser("render", help="Gaussian rasterizer (dense vs tiles) and volume renderer speed")
    render.add_argument("--quick", action="store_true", help="small grid (1k-16k Gaussians, 64x64-128x128)")
    render.add_argument("--scenes", default="surface,cloud", help="comma-separated: surface, cloud")
    render.add_argument("--dense-max-gib", type=float, default=None,
                        help="memory budget of the dense reference in GiB: a configuration whose estimated peak "
                             "(N x pixels x 72 B) exceeds it is skipped (default: half the memory available at start; with --quick at most 2 GiB)")
    render.add_argument("--device", default="cpu")
    render.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    render.add_argument("--compositing", action="store_true",
                        help="only the compiled compositing kernel, 1 thread: ns per visited pixel-Gaussian pair "
                             "(forward, backward) vs an in-cache vectorised exp, and compiled vs tiles at 16k Gaussians, 320x240 (~15 s)")
    render.set_defaults(handler=_bench_render)
    step = bench.add_parser("step", help="training-step time, matrix-product share and profile, GFLOP/s vs the fp32 peak, "
                                         "any recipe; GMAE vs MAE at the same encoder")
    step.add_argument("config", nargs="?", default="", help="preset name or YAML path (more may follow among the overrides)")
    step.add_argument("overrides", nargs="*", metavar="PRESET | key=value",
                      help="further presets; key=value overrides apply to every one of them")
    step.add_argument("--all-tiny", action="store_true", help="every recipe's tiny preset, a table at the end")
    step.add_argument("--device", default="cpu")
    step.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    step.add_argument("--repeats", type=int, default=10, help="timed steps")
    step.add_argument("--profile", type=int, default=3, help="profiled steps after the timed ones (0: no profile)")
    step.add_argument("--no-sites", action="store_true", help="skip the second profiled run that names the source of each op")
    step.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    step.set_defaults(handler=_bench_step)
    dat = bench.add_parser("data", help="pretraining data loading: peak memory and samples/s vs pool size and workers")
    dat.add_argument("--scenes", default="1000,10000", help="synthetic pretraining pool sizes (data.pretrain_scenes)")
    dat.add_argument("--workers", default="0,2", help="DataLoader worker counts to compare")
    dat.add_argument("--batches", type=int, default=20, help="timed batches per configuration (after one warm-up)")
    dat.add_argument("--folder", default="", help="ScanNet-style folder to write (once) and read; default a temp folder")
    dat.add_argument("--folder-frames", type=int, default=2000)
    dat.add_argument("--no-folder", action="store_true", help="synthetic pools only")
    dat.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    dat.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    dat.set_defaults(handler=_bench_data)
    mem = bench.add_parser("memory", help="peak memory per batch and per rendered pixel of a pretraining step, "
                                          "presets side by side in one process")
    mem.add_argument("items", nargs="+", metavar="PRESET | key=value",
                     help="presets or YAML paths; key=value overrides apply to every one of them")
    mem.add_argument("--device", default="cpu")
    mem.add_argument("--repeats", type=int, default=2, help="measured steps per preset (after one unmeasured step)")
    mem.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    mem.set_defaults(handler=_bench_memory)
    enc = bench.add_parser("encoders", help="3D encoders: forward+backward time and peak memory vs point count")
    enc.add_argument("--counts", default="", help="comma-separated point counts (default 10k,20k,50k,100k,200k)")
    enc.add_argument("--sparse-unet", default="base", help="SparseUNet preset (base, small)")
    enc.add_argument("--pointnet2", default="scene", help="PointNet++ preset (ssg, scene, small)")
    enc.add_argument("--device", default="cpu")
    enc.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    enc.set_defaults(handler=_bench_encoders)
    bnd = bench.add_parser("boundaries", help="BSDS boundary benchmark: wall time over a test set (a seeded stand-in "
                                              "of BSDS500 when --gt/--pred are not given) and the fast path vs its twin")
    bnd.add_argument("--gt", default=None, metavar="DIR", help="folder of <stem>.mat ground truth (with --pred)")
    bnd.add_argument("--pred", default=None, metavar="DIR", help="folder of <stem>.png edge maps (with --gt)")
    bnd.add_argument("--folder", default="", help="where the stand-in is written (default: a temp folder; reused)")
    bnd.add_argument("--images", type=int, default=200, help="stand-in images")
    bnd.add_argument("--seed", type=int, default=0, help="stand-in seed")
    bnd.add_argument("--workers", type=int, default=0, help="processes for the timed run (0 = the usable cores)")
    bnd.add_argument("--check", type=int, default=20,
                     help="images evaluated by the slow twin and the fast path, which must agree (0 = no check)")
    bnd.add_argument("--thresholds", type=int, default=99, help="threshold levels (the benchmark's 99)")
    bnd.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    bnd.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    bnd.set_defaults(handler=_bench_boundaries)
    return parser


def _list_presets_in_help(parser: argparse.ArgumentParser, note: str = "") -> None:
    """``--help`` of ``parser`` ends with the presets (read when help is shown: building the parser
    imports nothing heavy) and ``note``."""
    format_help = parser.format_help

    def with_presets() -> str:
        parser.epilog = _presets_epilog() + (f"\n{note}" if note else "")
        return format_help()

    parser.format_help = with_presets


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides (and encoder paths) may also follow the options, e.g.
    ``renderssl compare ENC --tasks depth downstream.steps=50``."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    spill = next((n for n in ("items", "overrides") if isinstance(getattr(args, n, None), list)), None)
    if extra and (spill is None or any(a.startswith("-") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, spill).extend(extra)
    return args


def _start_threads(args) -> None:
    """Verbs that compute: set torch's thread count (``--threads``, RENDERSSL_THREADS, OMP_NUM_THREADS or
    from the load) and keep the governor in ``args.governor`` for the trainer to re-fit it while training."""
    from .threads import ThreadGovernor

    args.governor = ThreadGovernor.from_sources(args.threads)
    args.governor.start()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if hasattr(args, "threads"):
            _start_threads(args)
        args.handler(args)
    except InputError as err:
        print(f"renderssl: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
