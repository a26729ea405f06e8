"""The demo's fine-tune recipe against the published one: train GMPI (or GMNR) on the demo set with each
variant of learning rates and R1, and measure FID (160 images, torch-fidelity protocol) at every
checkpoint. The figures next to ``demo.train`` in params.yaml come from this script.

    python benchmarks/demo_recipe.py                       # every variant, GMPI
    python benchmarks/demo_recipe.py --model gmnr --variants demo
    python benchmarks/demo_recipe.py --variants published demo --steps 200

Needs the packed demo set (``snakemake --cores all pack``). Each variant trains into
``runs/demo/recipe/<model>-<variant>/`` (its own folder: nothing of the pipeline's is touched), from the
bundled backbone, with the demo's params plus the variant's overrides. The pretrained start is measured
once (the weights every variant starts from).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {  # name -> overrides on top of the demo section
    "published": ["train.lr_g=0.002", "train.lr_d=0.002", "train.r1_gamma=10", "train.r1_interval=1"],
    "before": ["train.lr_g=0.0005", "train.lr_d=0.002", "train.r1_gamma=1", "train.r1_interval=4"],
    "lr5e-4": ["train.lr_g=0.0005", "train.lr_d=0.0005"],
    "lr2e-4": ["train.lr_g=0.0002", "train.lr_d=0.0002"],
    "lr2e-4-r1-every-step": ["train.lr_g=0.0002", "train.lr_d=0.0002", "train.r1_interval=1"],
    "demo": [],
}


def fid(G, params, protocol: str = "torch-fidelity") -> float:
    """FID of a generator as `gmnr evaluate` measures it (the same latents, poses, images and cache)."""
    import torch

    from gmnr.eval.metrics import EvalContext
    from gmnr.eval.metrics.fid import FIDKID
    from gmnr.eval.metrics.inception import load_extractor
    cam, e = params.model_camera(), params.evaluate
    ctx = EvalContext(resolution=params.training_resolution(), fov_deg=cam.fov_deg, radius=cam.radius,
                      center=tuple(cam.center), yaw_std=cam.yaw_std, pitch_std=cam.pitch_std,
                      truncation=cam.truncation, n_planes=params.gmpi.planes_eval, device=torch.device("cpu"),
                      seed=params.seed, batch_size=e.batch_size)
    cache = Path(params.paths.runs) / params.dataset / ".cache"
    metric = FIDKID(params.processed_dir(), e.fid_images, e.fid_real_max, e.kid_subsets, e.kid_subset_size, cache,
                    extractor=load_extractor(e.inception, "cpu", protocol), generated_cache_dir=cache / "generated")
    return float(metric.compute(G, ctx)["fid"])


def main() -> None:
    import torch

    from gmnr.config import load_params
    from gmnr.models.factory import load_generator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gmpi", choices=["gmpi", "gmnr"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {}
    for name in args.variants:
        out = ROOT / "runs" / "demo" / "recipe" / f"{args.model}-{name}"
        overrides = [f"model={args.model}", f"train.steps={args.steps}", *VARIANTS[name]]
        cmd = [sys.executable, "-m", "gmnr", "train", "--no-progress", "--output", str(out)]
        for o in overrides:
            cmd += ["-S", o]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name}: training failed:\n{done.stderr[-2000:]}")
        row = {}
        for ckpt in sorted((out / "checkpoints").glob("step-*.pt")):
            G, params, state = load_generator(ckpt)
            row[int(state["step"])] = round(fid(G, params), 2)
        results[name] = {"overrides": VARIANTS[name], "fid_by_step": row}
        print(name, json.dumps(results[name]), flush=True)
    params = load_params(ROOT / "params.yaml", [f"model={args.model}"])
    from gmnr.eval.evaluate import _load
    G, *_ = _load(params, ROOT / "runs" / "demo" / "recipe" / f"{args.model}-{args.variants[0]}" / "final.pt",
                  "pretrained", torch.device("cpu"))
    print("pretrained start", round(fid(G, params), 2))


if __name__ == "__main__":
    main()
