"""How far GMNR's ``baked`` view-dependent colour is from the exact ``all``: PSNR and max abs difference
of rendered frames (K interpolated bilinearly between texels and stored in float16, against MLP_K at
each pair's exact texture coordinate), for a trained checkpoint or random weights.

    python benchmarks/vdr_baked_error.py --checkpoint runs/demo/gmnr/final.pt       # the demo's trained GMNR
    python benchmarks/vdr_baked_error.py --random --resolution 64 --planes 32         # random weights, demo sizes
    python benchmarks/vdr_baked_error.py --random --resolution 256 --planes 96 --published
    python benchmarks/vdr_baked_error.py --random --resolution 256 --planes 96 --published --device cuda

Frames: a yaw sweep over the pose box (+-truncation * std) for ``--latents`` latents; every frame
is compared over all its pixels in [0, 1] units (PSNR = 10 log10(1 / MSE)). Also reported: the same
numbers between ``all`` and ``off``, the size of the view-dependent term the baking approximates.
Appends a table section to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _psnr(a, b) -> tuple[float, float]:
    err = ((a - b) / 2).double()  # [-1, 1] images -> [0, 1] units
    mse = float(err.square().mean())
    return (math.inf if mse == 0 else 10 * math.log10(1 / mse)), float(err.abs().max())


def main() -> None:
    import torch

    from gmnr.config import load_params
    from gmnr.models.factory import build_generator, load_generator
    from gmnr.render.camera import pose_to_cam2world

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a GMNR final.pt (or training checkpoint)")
    source.add_argument("--random", action="store_true", help="random weights (seed 0)")
    parser.add_argument("--resolution", type=int, default=64, help="with --random")
    parser.add_argument("--planes", type=int, default=None, help="default: the checkpoint's / params' planes_eval")
    parser.add_argument("--published", action="store_true", help="with --random: the published sizes, not the demo's")
    parser.add_argument("--latents", type=int, default=2)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where both modes render (the latents and cameras are drawn on the CPU either way)")
    parser.add_argument("--bake-matmul", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="the baked K's matrix products (GMNRGenerator.bake_matmul; auto: bfloat16 where the "
                             "device multiplies it natively)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.checkpoint:
        G, params, _ = load_generator(args.checkpoint, device, "all")
        label = f"trained: `{args.checkpoint}`"
    else:
        dataset = "ffhq256" if args.published else "demo"
        params = load_params(ROOT / "params.yaml", [f"dataset={dataset}", "model=gmnr", f"pack.resolution={args.resolution}",
                                                    "gmpi.pretrained=null", "gmnr.zero_init=false"])  # a VdR that does something
        G = build_generator(params).eval().requires_grad_(False).to(device)
        label = f"random weights ({'published' if args.published else 'demo'} sizes)"
    planes = args.planes or G.cfg.planes_eval
    G.bake_matmul = args.bake_matmul
    products = str(G.bake_products(device)).removeprefix("torch.")
    if device.type == "cuda":
        label += f", on {torch.cuda.get_device_name(device)}"
    cam = params.camera()
    yaw = torch.linspace(-1, 1, args.views) * cam.truncation * cam.yaw_std
    cams = pose_to_cam2world(yaw, torch.zeros(args.views), 0.0, cam.radius, tuple(cam.center)).to(device)
    frames = {mode: [] for mode in ("all", "baked", "off")}
    pairs = 0
    with torch.no_grad():
        z = torch.randn(args.latents, G.z_dim).to(device)
        for i in range(args.latents):
            ws = G.mapping(z[i:i + 1], None)
            for mode in frames:
                G.set_inference_vdr(mode)
                mpi = G.synthesize(ws, planes, noise_mode="const")
                if mode == "baked":
                    mpi = G.bake(mpi)
                out = G.render_mpi(mpi, cams)
                frames[mode].append(out["image"])
                if mode == "all":
                    pairs += int(out["n_sampled"].sum())
    images = {m: torch.cat(v).cpu() for m, v in frames.items()}
    psnr, max_abs = _psnr(images["baked"], images["all"])
    vdr_psnr, vdr_max = _psnr(images["off"], images["all"])
    res = G.cfg.resolution
    per_pixel = pairs / (args.latents * args.views * res * res)
    print(f"{label}, {res} px, {planes} planes, K products in {products}: baked vs all PSNR {psnr:.2f} dB, max |diff| {max_abs:.5f} "
          f"(8-bit step {1 / 255:.5f}); off vs all PSNR {vdr_psnr:.2f} dB, max {vdr_max:.5f}; {per_pixel:.2f} pairs/pixel")
    argv = sys.argv[1:]
    shown = [a for i, a in enumerate(argv) if not a.startswith("--out") and not (i > 0 and argv[i - 1] == "--out")]
    command = " ".join(["python", "benchmarks/vdr_baked_error.py", *shown])
    section = "## GMNR baked vs all: error of the interpolated K"
    row = (f"| {label} | {res} | {planes} | {products} | {args.latents} x {args.views} | {per_pixel:.2f} | {psnr:.2f} | "
           f"{max_abs:.5f} | {vdr_psnr:.2f} | {vdr_max:.4f} | `{command}` |")
    header = [section, "",
              "Frames of a yaw sweep over the pose box, compared over every pixel in [0, 1] units. `baked` bakes K "
              "once per MPI on the texel grid (stored in float16; its matrix products in the 'K products' dtype, "
              "see `GMNRGenerator.bake_matmul`) and interpolates it bilinearly; `all` runs MLP_K in float32 at each "
              "pair's exact texture coordinate. The `off` columns measure the view-dependent term itself (what "
              "`all` adds to GMPI's colour), the scale the baking error is to be read against. An 8-bit colour "
              "step is 0.0039.", "",
              "| weights | resolution | planes | K products | latents x views | pairs / pixel | baked vs all PSNR (dB) | max abs diff "
              "| off vs all PSNR (dB) | off vs all max abs diff | command |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    text = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
    if section in text:
        start = text.index(section)
        end = text.find("\n## ", start + 1)
        body = text[start:end if end >= 0 else len(text)].rstrip("\n").splitlines()
        if header[4] not in body:  # the table's columns changed: its old rows do not fit them
            body = header
        body = [line for line in body if not line.endswith(f"`{command}` |")] + [row]
        text = text[:start] + "\n".join(body) + "\n" + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + "\n".join(header + [row]) + "\n"
    args.out.write_text(text)


if __name__ == "__main__":
    main()
