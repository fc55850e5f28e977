"""``renderssl <verb>``: the command-line entry point."""

from __future__ import annotations

import argparse
import sys

from .errors import InputError


def _data_synth(args) -> None:
    from .data.export import export_synthetic, parse_size

    export_synthetic(
        args.out, scenes=args.scenes, views=args.views, size=parse_size(args.size), kind=args.kind,
        formats=[f for f in args.formats.split(",") if f], seed=args.seed, preview=not args.no_preview,
    )


def _bench_render(args) -> None:
    import torch

    from .bench.render import COUNTS, SIZES, bench_render, format_render_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    counts, sizes = (COUNTS[:3], SIZES[:2]) if args.quick else (COUNTS, SIZES)
    scenes = tuple(s for s in args.scenes.split(",") if s)
    print(f"renderssl bench render on {args.device} ({torch.get_num_threads()} threads, torch {torch.__version__})")
    result = bench_render(counts, sizes, scenes=scenes, dense_max_pairs=args.dense_max_pairs, device=args.device)
    print(format_render_bench(result))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="renderssl", description="Self-supervised pretraining by differentiable rendering.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="make or convert data").add_subparsers(dest="action", required=True)
    synth = data.add_parser("synth", help="write procedural RGB-D scenes (ScanNet-style and Blender layouts) and a preview")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--scenes", type=int, default=4)
    synth.add_argument("--views", type=int, default=10)
    synth.add_argument("--size", default="64x64", help="WIDTHxHEIGHT")
    synth.add_argument("--kind", choices=("room", "object"), default="room")
    synth.add_argument("--formats", default="scannet,blender", help="comma-separated: scannet, blender, 7scenes, llff")
    synth.add_argument("--seed", type=int, default=0, help="seed of the first scene (scene i has seed + i)")
    synth.add_argument("--no-preview", action="store_true")
    synth.set_defaults(run=_data_synth)

    bench = verbs.add_parser("bench", help="benchmarks").add_subparsers(dest="action", required=True)
    render = bench.add_parser("render", help="Gaussian rasterizer (dense vs tiles) and volume renderer speed")
    render.add_argument("--quick", action="store_true", help="small grid (1k-16k Gaussians, 64x64-128x128)")
    render.add_argument("--scenes", default="surface,cloud", help="comma-separated: surface, cloud")
    render.add_argument("--dense-max-pairs", type=float, default=2.7e8, help="run dense only where N x pixels <= this")
    render.add_argument("--device", default="cpu")
    render.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    render.set_defaults(run=_bench_render)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except InputError as err:
        print(f"renderssl: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
