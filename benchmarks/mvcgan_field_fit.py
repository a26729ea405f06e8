"""Can MVCGAN's radiance field and renderer hold a head in front of a wall, and how fast can its density grow?

Fits the field of the demo's MVCGAN generator (params.yaml with its demo section: its widths, box warp, FiLM
frequencies, samples per ray, ray range) to an analytic scene with known depth (tests/analytic_scene.py: a
textured sphere in front of a textured wall) seen from ``--views`` cameras drawn within MVCGAN's pose range
(yaw +-0.3, pitch +-0.15), at 16 x 16 rays, the demo's ray resolution. Adam with the trainer's betas (0, 0.9)
updates the field's weights and one latent's FiLM code. Two fits from the same start:

* ``photometric``: the rendered RGB against the views only (what multi-view consistency alone gives, the
  signal MVCGAN's photometric loss carries), and
* ``photometric+depth``: plus an L1 loss on the expected depth (what the field and renderer can represent).

Every ``--every`` steps it records the RGB PSNR, the relation of rendered to true depth over every pixel of
every view (least-squares slope and offset, correlation), the mean depth error on head and on wall pixels,
and the densities' maximum against the cap Adam puts on them: the density is a linear read-out of a sine
layer (|h| <= 1), so it can move by at most (width + 1) x (Adam's largest step) per step; Adam's step is
about lr for a steady gradient and at most lr / sqrt(1 - beta2) = 3.16 lr with beta1 = 0. Writes
``benchmarks/results/mvcgan_field_fit-lr<lr>-<steps>.{json,png}``.

    python benchmarks/mvcgan_field_fit.py                    # 1,000 steps at lr 1e-3, 12 views (about 4 min)
    python benchmarks/mvcgan_field_fit.py --steps 200 --lr 6e-5
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gmnr.config import load_params  # noqa: E402
from gmnr.models.factory import build_generator  # noqa: E402
from tests.analytic_scene import RAYS, fit, scene_views  # noqa: E402

def demo_field_generator(seed: int = 0):
    """The demo's MVCGAN generator (params.yaml + its demo section), seeded, set to 16 x 16 rays."""
    params = load_params(ROOT / "params.yaml", ["model=mvcgan"])
    torch.manual_seed(seed)
    G = build_generator(params)
    G.set_phase(RAYS, RAYS)  # only render_rays is used: the output resolution does not matter
    return G


def density_cap(G, lr: float, steps: int) -> dict:
    """The densities' bound after ``steps`` Adam steps at ``lr`` from ``G``'s start: sum |w| + |b| of the
    read-out grows by at most (width + 1) x step size per step."""
    head = G.field.density
    start = float(head.weight.detach().abs().sum() + head.bias.detach().abs().sum())
    width = head.weight.shape[1] + 1
    return {"start": round(start, 3), "steady_step": round(start + width * lr * steps, 2),
            "largest_step": round(start + width * lr * steps / math.sqrt(1 - 0.9), 2)}


def plot(runs: dict, caps: list[tuple[int, dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=120)
    for name, records in runs.items():
        steps = [r["step"] for r in records]
        left.plot(steps, [r["head_error"] for r in records], marker="o", label=f"{name}: head")
        left.plot(steps, [r["wall_error"] for r in records], linestyle="--", label=f"{name}: wall")
        right.plot(steps, [r["sigma_max"] for r in records], marker="o", label=name)
    right.plot([s for s, _ in caps], [c["steady_step"] for _, c in caps], color="grey", label="cap, Adam step = lr")
    right.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("mean |depth - true depth|")
    right.set_xlabel("step")
    right.set_ylabel("largest density")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle("MVCGAN's field fitted to a head in front of a wall (demo sizes, 16 x 16 rays)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.steps < 1 or args.every < 1 or args.views < 2 or args.lr <= 0:
        raise SystemExit("--steps, --every and --lr must be positive and --views at least 2")
    torch.set_num_threads(args.threads)
    cams = scene_views(args.views)
    runs, seconds = {}, {}
    for name, depth_weight in (("photometric", 0.0), ("photometric+depth", 1.0)):
        G = demo_field_generator()
        start = time.perf_counter()
        runs[name], _ = fit(G, cams, args.steps, args.lr, depth_weight, args.every)
        seconds[name] = round(time.perf_counter() - start, 1)
        for r in runs[name]:
            print(name, json.dumps(r), flush=True)
    G = demo_field_generator()
    caps = [(r["step"], density_cap(G, args.lr, r["step"])) for r in runs["photometric"]]
    cfg = G.cfg
    result = {"steps": args.steps, "lr": args.lr, "views": args.views, "rays": RAYS, "threads": args.threads,
              "field": {"siren_layers": cfg.siren_layers, "siren_hidden": cfg.siren_hidden,
                        "samples_per_ray": cfg.samples_per_ray, "ray_range": list(cfg.ray_range)},
              "seconds": seconds, "runs": runs, "density_cap": dict(caps)}
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stem = f"mvcgan_field_fit-lr{args.lr:g}-{args.steps}"  # the lr's dot is no suffix: name the files whole
    (results / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, caps, results / f"{stem}.png")
    print(json.dumps({name: records[-1] for name, records in runs.items()}))


if __name__ == "__main__":
    main()
