"""NPS on one object scene: train the tiny generalizable NeRF on some of its frames and score frames it never
saw (rendered from their nearest training frames) against copying the nearest training frame.

    python scripts/nps_one_scene.py --views 12 --held-out 2,6,10 --steps 1500 --lr 2e-3

Training: per step 2 random targets among the training frames, each with its 3 nearest training frames
as sources (GNT's sampler, no curriculum), ``--rays`` random rays x 16 inverse-depth samples, MSE, Adam
with a cosine decay to 0. Prints the held-out PSNR of the model and of the floor every ``--every`` steps.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from renderssl.data.datasets import collate_stacked, near_far
from renderssl.data.synthetic import SyntheticConfig, generate_scene
from renderssl.data.views import SourceViewCurriculum, select_target_and_sources
from renderssl.eval.metrics import psnr
from renderssl.eval.novel_views import nearest_context
from renderssl.methods.base import StepContext
from renderssl.methods.nps import NPS, NPSConfig
from renderssl.models.encoders.resunet import ResUNetConfig
from renderssl.models.nerf.generalizable_nerf import GeneralizableNeRFConfig
from renderssl.models.nerf.transformer import NeRFTransformerConfig

SOURCES = 3


def sample(scene, ids: list[int]) -> dict:
    """The frames ``ids`` (sources, then the target) as a multi-view sample; near / far from the sources."""
    ids = torch.tensor(ids)
    near, far = near_far(scene.depth[ids[:-1]], (0.1, 100.0))
    return {"rgb": scene.rgb[ids], "depth": scene.depth[ids], "K": scene.K[ids], "c2w": scene.c2w[ids], "near": near, "far": far}


def held_out_psnr(method: NPS, scene, train: torch.Tensor, held: list[int]) -> tuple[float, float]:
    """Mean PSNR over the held-out frames: the model from the nearest training frames, and the nearest copied."""
    method.eval()
    model, floor = [], []
    for target in held:
        dist = (scene.c2w[train, :3, 3] - scene.c2w[target, :3, 3]).norm(dim=-1)
        batch = collate_stacked([sample(scene, train[dist.argsort()[:SOURCES]].tolist() + [target])])
        rendering = method.render_targets(batch).clamp(0, 1)[0, 0]
        nearest = batch["rgb"][0, int(nearest_context(batch["c2w"][:, :SOURCES], batch["c2w"][:, SOURCES:])[0, 0])]
        model.append(float(psnr(rendering[None], scene.rgb[target][None])))
        floor.append(float(psnr(nearest[None], scene.rgb[target][None])))
    method.train()
    return sum(model) / len(model), sum(floor) / len(floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--held-out", default="2,6,10")
    parser.add_argument("--size", default="32x24", help="WxH")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rays", type=int, default=128)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=1, help="the synthetic scene")
    args = parser.parse_args()
    W, H = (int(x) for x in args.size.split("x"))
    scene = generate_scene(args.seed, SyntheticConfig(kind="object", num_views=args.views, width=W, height=H))
    held = [int(i) for i in args.held_out.split(",")]
    train = torch.tensor([i for i in range(args.views) if i not in held])
    torch.manual_seed(0)
    model = GeneralizableNeRFConfig(ResUNetConfig(preset="tiny"), NeRFTransformerConfig(preset="tiny", dropout=0.0))
    method = NPS(NPSConfig(model=model, rays_per_target=args.rays, num_samples=16, eval_source_views=SOURCES))
    opt = torch.optim.Adam(method.parameters(), lr=args.lr)
    views = SourceViewCurriculum(views_start=SOURCES, jitter=0)
    g = torch.Generator().manual_seed(0)
    print(f"object scene {args.seed}: {args.views} frames at {W}x{H}, training on {train.tolist()}, held out {held}")
    start = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        ids = [train[select_target_and_sources(views, scene.c2w[train], 0, 1, g)].tolist() for _ in range(2)]
        out = method(collate_stacked([sample(scene, i) for i in ids]), StepContext(g, step + 1, args.steps))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            m, f = held_out_psnr(method, scene, train, held)
            print(f"step {step + 1}: train mse {float(out.loss.detach()):.4f}; held-out PSNR model {m:.2f} dB vs nearest "
                  f"training frame {f:.2f} dB ({m - f:+.2f}); {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
