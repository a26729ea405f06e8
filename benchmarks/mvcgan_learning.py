"""Does MVCGAN learn on the demo set, and after how many steps? Train it for a long run and measure FID
(160 images, torch-fidelity protocol, as `gmnr evaluate` on the demo) at its initialisation and at every
checkpoint; write the curve as JSON and a plot. The figures in README's MVCGAN paragraph come from this
script.

    python benchmarks/mvcgan_learning.py                                  # variant published-32, 2,000 steps
    python benchmarks/mvcgan_learning.py --variant demo --steps 100 --every 50
    python benchmarks/mvcgan_learning.py --steps 4000 --every 500 --threads 1
    python benchmarks/mvcgan_learning.py --variant lr5x-32 --steps 6000 --every 500 --threads 1 --extend-from 3000

Needs the packed demo set (``snakemake --cores all pack``). Trains into
``runs/demo/learning/mvcgan-<variant>-<steps>/`` (a folder of its own, with its own copy of the packed set in
``mvcgan-<variant>-<steps>-data/`` beside it: nothing of the pipeline's is touched, and a pipeline run beside it cannot change its data;
a killed run resumes from its last checkpoint when the command is repeated; ``--extend-from N`` starts a longer
run from a copy of the finished ``mvcgan-<variant>-<N>`` run and its data), writes
``benchmarks/results/mvcgan_learning-<variant>-<steps>.{json,png}``. The sample grids training writes every
``--every`` steps are in the run folder's ``samples/`` (the last one copied to ``...-grid.png``); the final
generator's videos, depth videos and grid (``gmnr render``) in its ``render/`` (five frames of its depth sweep in
``...-depth.png``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# The published FFHQ curriculum (curriculums.FFHQ, stage 1: 64 px output, 64 x 64 rays, batch 56, lr G 6e-5,
# lr D 2e-4, pose weight 15) at the demo's sizes: 32 px output from 16 x 16 rays, batch 8, one stage, the
# published annealing lengths (density noise 5,000 steps, top-k every 2,000). Only the sizes change.
PUBLISHED_32 = ("[{start: 0, resolution: 32, ray_resolution: 16, batch_per_gpu: 8, lr_g: 6.0e-5, lr_d: 2.0e-4,"
                " pose_weight: 15.0}]")
# The same at 5 times the published learning rates (lr_g 3e-4 as the demo, lr_d 1e-3: the published ratio), the
# density noise annealed by step 2,500: does the field form a surface once its density may grow 5 times faster
# (the density moves at most about lr x (width + 1) per Adam step: benchmarks/mvcgan_field_fit.py)?
LR5X_32 = ("[{start: 0, resolution: 32, ray_resolution: 16, batch_per_gpu: 8, lr_g: 3.0e-4, lr_d: 1.0e-3,"
           " pose_weight: 15.0}]")
# lr5x-32 with the rays at the output's resolution (16 x 16 rays, 16 px output), as the published first stage
# renders 64 x 64 rays for its 64 px output: the decoder only refines, it does not upsample. Does a surface form
# when the 2D decoder has less room to draw the face itself from a feature fog?
LR5X_16_1TO1 = ("[{start: 0, resolution: 16, ray_resolution: 16, batch_per_gpu: 8, lr_g: 3.0e-4, lr_d: 1.0e-3,"
                " pose_weight: 15.0}]")
VARIANTS = {  # name -> overrides on top of the demo section
    "published-32": [f"mvcgan.curriculum={PUBLISHED_32}", "mvcgan.density_noise_steps=5000",
                     "mvcgan.topk_interval=2000", "mvcgan.fade_steps=2000"],
    "lr5x-32": [f"mvcgan.curriculum={LR5X_32}", "mvcgan.density_noise_steps=2500",
                "mvcgan.topk_interval=2000", "mvcgan.fade_steps=2000"],
    "lr5x-16-1to1": [f"mvcgan.curriculum={LR5X_16_1TO1}", "mvcgan.density_noise_steps=2500",
                     "mvcgan.topk_interval=2000", "mvcgan.fade_steps=2000"],
    # lr5x-32 with the photometric loss on the rendered features instead of the field's RGB head, which only that
    # loss trains and which goes flat (benchmarks/mvcgan_geometry.py): a diagnostic, not the published model.
    # Does a loss that sees the features' parallax pull the density onto the head the features hold?
    "lr5x-32-featphoto": [f"mvcgan.curriculum={LR5X_32}", "mvcgan.density_noise_steps=2500",
                          "mvcgan.topk_interval=2000", "mvcgan.fade_steps=2000", "mvcgan.photometric_on=features"],
    "demo": [],
}


def snapshot_packed_set(params, folder: Path) -> Path:
    """``folder``/<dataset>: a copy of the packed training set, made once (staged, then renamed into place);
    returns ``folder`` (what ``paths.processed`` is set to)."""
    import shutil
    target = folder / params.dataset
    if not target.is_dir():
        source = ROOT / params.processed_dir()
        if not (source / "dataset.json").is_file():
            raise SystemExit(f"{source}: no packed set; run `snakemake --cores all pack` first")
        staging = folder / f".{params.dataset}.partial"
        shutil.rmtree(staging, ignore_errors=True)  # our own leftover from a killed copy
        shutil.copytree(source, staging)
        staging.rename(target)
    return folder


def extend(shorter: Path, out: Path) -> None:
    """Start ``out`` (a longer run of the same variant) as a copy of the finished run ``shorter`` and of its data
    copy: training then resumes from its last checkpoint. The shorter run's renders are left behind (they are of
    its final generator). Each copy is staged and renamed into place; nothing is copied when ``out`` exists."""
    import shutil
    if out.exists():
        return
    if not (shorter / "final.pt").is_file():
        raise SystemExit(f"--extend-from: {shorter} holds no finished run (final.pt)")
    for source, target in ((shorter.with_name(shorter.name + "-data"), out.with_name(out.name + "-data")),
                           (shorter, out)):
        if target.exists():
            continue
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)  # our own leftover from a killed copy
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns("render", "render-report"))
        staging.rename(target)


def add_train_seconds(out: Path, seconds: float) -> float:
    """The training time of the run in ``out`` over every invocation (resumed, extended), kept in the run folder
    beside its checkpoints, so that a crash after training or a longer run started from a copy keeps it."""
    from gmnr.io import atomic_write
    path = out / "benchmark-train-seconds.json"
    total = (json.loads(path.read_text())["train_seconds"] if path.is_file() else 0.0) + seconds
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps({"train_seconds": round(total, 1)}) + "\n"))
    return total


def figures(run: Path, stem: Path) -> None:
    """Beside the curve: the last training sample grid (latents x views of G_ema) as ``<stem>-grid.png``,
    and five frames of the final generator's depth sweep (``gmnr render``'s sweep_depth.gif) stacked as
    ``<stem>-depth.png``: does the field put a head in front of a background?"""
    import shutil

    import imageio.v3 as iio
    import numpy as np
    grids = sorted((run / "samples").glob("step-*.png"))
    if grids:
        shutil.copyfile(grids[-1], stem.with_name(stem.name + "-grid.png"))
    depth = iio.imread(run / "render" / "sweep_depth.gif")
    frames = [depth[i][..., :3] for i in np.linspace(0, len(depth) - 1, 5).round().astype(int)]
    iio.imwrite(stem.with_name(stem.name + "-depth.png"), np.concatenate(frames, 0)[::2, ::2])


def field_geometry(G, params, latents: int = 4) -> dict:
    """Is the radiance field forming a surface? Over ``latents`` latents seen from the frontal camera
    (seed 0): the densities' mean and 99th percentile, the opacity the samples in front of the far wall
    reach (1 - exp(-sum relu(sigma) delta); an opaque head needs about 1), and the spread of the
    expected depth across each image (0 for a flat wall: no head in front of a background)."""
    import torch

    from gmnr.render.camera import pose_to_cam2world
    torch.manual_seed(0)
    z = torch.randn(latents, G.z_dim)
    cam = params.model_camera()
    c2w = pose_to_cam2world(torch.zeros(latents), torch.zeros(latents), 0.0, cam.radius, tuple(cam.center))
    with torch.no_grad():
        out = G.render_rays(G.mapping(z, None), c2w)
    sigma, t = out["sigma_raw"], out["t_raw"]
    front = (sigma[..., :-1].relu() * (t[..., 1:] - t[..., :-1])).sum(-1)
    return {"sigma_mean": round(float(sigma.mean()), 3),
            "sigma_p99": round(float(sigma.flatten().quantile(0.99)), 3),
            "opacity_before_far_wall": round(float((1 - torch.exp(-front)).mean()), 4),
            "depth_std_in_image": round(float(out["depth_raw"].flatten(1).std(1).mean()), 5)}


def plot(curve: list[tuple[int, float]], init: float, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([s for s, _ in curve], [f for _, f in curve], marker="o", label="G_ema at checkpoint")
    ax.axhline(init, color="grey", linestyle="--", label=f"initialisation ({init:.1f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (160 images, lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    import torch

    from demo_recipe import fid
    from gmnr.config import load_params
    from gmnr.eval.evaluate import _load
    from gmnr.models.factory import load_generator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="published-32", choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250, help="checkpoint (and FID) every N steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extend-from", type=int, metavar="STEPS",
                        help="start from a copy of the finished run of this variant with STEPS steps")
    args = parser.parse_args()
    if args.steps < 1 or args.every < 1:
        raise SystemExit("--steps and --every must be positive")
    if args.extend_from is not None and not 0 < args.extend_from < args.steps:
        raise SystemExit(f"--extend-from must be between 0 and --steps ({args.steps}), got {args.extend_from}")
    torch.set_num_threads(args.threads)
    name = f"mvcgan-{args.variant}-{args.steps}"
    out = ROOT / "runs" / "demo" / "learning" / name
    if args.extend_from is not None:
        extend(out.with_name(f"mvcgan-{args.variant}-{args.extend_from}"), out)
    # Train and measure on a copy of the packed set made at the first start: a pipeline run beside this one
    # (which repacks data/processed/demo when its inputs change, swapping the folder whole) would otherwise
    # pull the images from under the trainer, and a resumed run would see other images than its start.
    packed = snapshot_packed_set(load_params(ROOT / "params.yaml"), out.with_name(f"{name}-data"))  # beside the run
    overrides = [f"paths.processed={packed}", "model=mvcgan", f"train.steps={args.steps}",
                 f"train.checkpoint_every={args.every}",
                 f"train.sample_every={args.every}", f"train.keep_last={args.steps // args.every + 1}",
                 f"train.threads={args.threads}", *VARIANTS[args.variant]]
    cmd = [sys.executable, "-m", "gmnr", "train", "--no-progress", "--output", str(out)]
    for o in overrides:
        cmd += ["-S", o]
    start = time.time()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if done.returncode != 0:
        raise SystemExit(f"{name}: training failed (exit {done.returncode})")
    train_s = add_train_seconds(out, time.time() - start)

    params = load_params(ROOT / "params.yaml", overrides)
    G, *_ = _load(params, out / "final.pt", "init", torch.device("cpu"))  # the trainer's seeded start
    init = round(fid(G, params), 2)
    geometry = {0: field_geometry(G, params)}
    curve = []
    for ckpt in sorted((out / "checkpoints").glob("step-*.pt")):
        G, ckpt_params, state = load_generator(ckpt)
        step = int(state["step"])
        curve.append((step, round(fid(G, ckpt_params), 2)))
        geometry[step] = field_geometry(G, ckpt_params)
        print(f"step {step}: FID {curve[-1][1]}, field {geometry[step]}", flush=True)
    results = ROOT / "benchmarks" / "results"
    result = {"variant": args.variant, "overrides": overrides, "train_seconds": round(train_s, 1),
              "threads": args.threads, "fid_init": init, "fid_by_step": dict(curve), "field_by_step": geometry,
              "best": min(curve, key=lambda c: c[1]) if curve else None}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"mvcgan_learning-{args.variant}-{args.steps}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(curve, init, f"MVCGAN on the demo set, variant {args.variant}",
         results / f"mvcgan_learning-{args.variant}-{args.steps}.png")
    # Videos, depth videos and a seeds x views grid of the final generator, as the pipeline's render stage.
    render = [sys.executable, "-m", "gmnr", "render", "--no-progress", "--checkpoint", str(out / "final.pt"),
              "--output", str(out / "render"), "--reports", str(out / "render-report")]
    for o in overrides:
        render += ["-S", o]
    if subprocess.run(render, cwd=ROOT).returncode != 0:
        raise SystemExit(f"{name}: render failed")
    figures(out, results / f"mvcgan_learning-{args.variant}-{args.steps}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
