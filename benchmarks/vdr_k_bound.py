"""How close can GMNR's ``baked`` video frames come to GMPI's? A lower bound from MLP_K's arithmetic.

A ``baked`` frame is GMPI's render plus two things: the per-pair work of view-dependent colour (gather,
bilinear K, K H, compositing) and, for the texels no earlier frame read, MLP_K itself. The second has a floor
that no rewrite of the per-pair code moves: over a video, MLP_K runs once on each texel some frame reads, and
each run costs the same multiply-adds (published sizes: ~1.27 M). So per frame of an N-frame video

    baked >= GMPI + texels x FLOPs_per_texel / (peak matrix-product rate) / N

and issue 18's goal (baked <= 1.5 GMPI) is out of reach on a device wherever that last term alone exceeds half
a GMPI frame. This script measures each term side by side in one process, for the same latent, weights and
48-view yaw sweep as ``render_speed.py --video`` (so its texel counts match that table's on the same device):

- GMPI's frame: GMNR with VdR ``off`` (GMPI's render, bit for bit), ``--timed-frames`` frames spread over the
  video, each rendered between two baked frames;
- the texels read over the video and the per-pair work: every frame rendered ``baked`` with MLP_K replaced by
  zeros (the real code path otherwise: pair selection, texel bookkeeping, bilinear K, compositing);
- MLP_K's rate: its real forward on 65,536 texels in the dtype the bake uses (``bake_products``), against
  the device's peak for one matrix product of its hidden layer's shape in that dtype.

    python benchmarks/vdr_k_bound.py                                  # 256 and 512 px, CPU, 2 threads
    python benchmarks/vdr_k_bound.py --resolutions 256 512 1024 --device cuda --dtype bfloat16

Writes a table into docs/benchmarks.md (section "Baked frames: the floor MLP_K sets"; ``--out`` elsewhere) and
the rows as JSON into benchmarks/results/vdr_k_bound-<device>.json (``--json`` elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from render_speed import _cpu_name, _replace_section, video_cameras  # noqa: E402

from gmnr.config import load_params  # noqa: E402
from gmnr.models.factory import build_generator, set_inference_vdr  # noqa: E402

PROBE_TEXELS = 1 << 16  # MLP_K's rate is timed on this many texels (one bake chunk: INFERENCE_CHUNK)
SECTION = "Baked frames: the floor MLP_K sets"


def mlp_k_macs_per_texel(vdr) -> int:
    """Multiply-adds of one texel through MLP_K as :meth:`AlphaVdR.position_coefficients` runs it: the
    first layer on gamma(u), gamma(v) only (its gamma(d), w part is computed once per plane and latent),
    then every further layer whole."""
    layers = list(vdr.mlp_k.hidden) + [vdr.mlp_k.out]
    per_texel_inputs = 2 * 2 * vdr.pos_freqs  # gamma(u), gamma(v): sin and cos of pos_freqs frequencies each
    return per_texel_inputs * layers[0].out_features + sum(l.in_features * l.out_features for l in layers[1:])


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev: torch.device, repeats: int = 3) -> float:
    """Best of ``repeats`` calls of fn (after one untimed call), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(dev)
        start = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(rows: int, width: int, dtype: torch.dtype, dev: torch.device) -> float:
    """FLOP/s of one [rows, width] x [width, width] product in ``dtype`` (float32 accumulation where the
    device does that): the device's rate for MLP_K's hidden layers, with no activation or gather around it."""
    a = torch.randn(rows, width, device=dev).to(dtype)
    b = torch.randn(width, width, device=dev).to(dtype)
    return 2 * rows * width * width / timed(lambda: a @ b, dev)


def measure(resolution: int, planes: int, frames: int, timed_frames: int, dev: torch.device, dtype: str,
            bake_matmul: str) -> dict:
    params = load_params(ROOT / "params.yaml", ["dataset=ffhq256", "model=gmnr", f"pack.resolution={resolution}"])
    torch.manual_seed(0)  # the weights and latent of render_speed.py --video on the same device
    G = set_inference_vdr(build_generator(params).to(dev), "off").eval()
    G.bake_matmul = bake_matmul
    products = G.bake_products(dev)
    cams = video_cameras(params, frames).to(dev)
    amp = (torch.autocast(dev.type, dtype=getattr(torch, dtype)) if dtype != "float32"
           else torch.autocast(dev.type, enabled=False))
    with torch.no_grad(), amp:
        z = torch.randn(1, G.z_dim, device=dev)
        sync(dev)
        start = time.perf_counter()
        mpi = G.synthesize(G.mapping(z, None), planes, noise_mode="const")
        sync(dev)
        synth_s = time.perf_counter() - start
        picked = set(torch.linspace(0, frames - 1, timed_frames).round().long().tolist())
        G.render_mpi(mpi, cams[:1])  # warm-up (first-call allocations), untimed
        real_k = G.vdr.position_coefficients
        baked = G.bake(mpi)
        gmpi_frames, pair_frames, pairs = [], [], 0

        def frame(mode: str, source: dict, i: int) -> dict:
            G.set_inference_vdr(mode)
            sync(dev)
            start = time.perf_counter()
            out = G.render_mpi(source, cams[i:i + 1])
            out["image"].sum().item()
            (gmpi_frames if mode == "off" else pair_frames).append(time.perf_counter() - start)
            return out
        # Every frame baked with MLP_K's output replaced by zeros (the texels the video reads, and the rest of
        # the frame); GMPI's frames of the picked views in between, so that both see the machine in one state
        # (timed in a block before the baked frames, GMPI came out 1.8x slower at 256 px on 2 CPU threads).
        G.vdr.position_coefficients = lambda uv, *rest: uv.new_zeros(uv.shape[0], 3, 4)
        try:
            for i in range(frames):
                if i in picked:
                    frame("off", mpi, i)
                pairs += int(frame("baked", baked, i)["n_sampled"].sum())
        finally:
            G.vdr.position_coefficients = real_k
        texels = int(baked["baked_mask"].sum())
        # MLP_K's real forward on PROBE_TEXELS texels of this MPI, as bake_texels runs it
        g = torch.Generator(device="cpu").manual_seed(1)
        uv = (torch.rand(PROBE_TEXELS, 2, generator=g) * 2 - 1).to(dev)
        plane = torch.randint(0, planes, (PROBE_TEXELS,), generator=g).to(dev)
        latent = torch.zeros(PROBE_TEXELS, dtype=torch.long, device=dev)
        depths, w = mpi["depths"].to(uv), mpi["w"]

        def mlp_k():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=products == torch.bfloat16):
                return G.vdr.position_coefficients(uv, depths, plane, w, latent)
        k_per_texel = timed(mlp_k, dev) / PROBE_TEXELS
    macs = mlp_k_macs_per_texel(G.vdr)
    hidden = G.vdr.mlp_k.hidden[-1].out_features
    peak = matmul_peak(PROBE_TEXELS, hidden, products, dev)
    gmpi_frame = (synth_s + frames * sum(gmpi_frames) / len(gmpi_frames)) / frames
    pair_frame = (synth_s + sum(pair_frames)) / frames  # the synthesis is shared by a video's frames
    k_floor = texels * 2 * macs / peak / frames        # MLP_K at the device's peak rate, per frame
    k_run = texels * k_per_texel / frames              # MLP_K at the rate it runs here, per frame
    return {"resolution": resolution, "planes": planes, "frames": frames, "gmpi_frames_timed": len(gmpi_frames),
            "device": _device_name(dev), "dtype": dtype, "k_products": str(products).removeprefix("torch."), "synthesis_s": synth_s,
            "gmpi_frame_s": gmpi_frame, "pair_frame_s": pair_frame, "pairs_per_pixel": pairs / frames / resolution ** 2,
            "texels": texels, "mlp_k_macs_per_texel": macs, "peak_flops": peak,
            "mlp_k_flops": 2 * macs / k_per_texel, "k_floor_frame_s": k_floor, "k_run_frame_s": k_run,
            "floor_vs_gmpi": (gmpi_frame + k_floor) / gmpi_frame,
            "predicted_vs_gmpi": (pair_frame + k_run) / gmpi_frame}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU: {_cpu_name()}, {torch.get_num_threads()} threads"


def write_markdown(rows: list[dict], out: Path) -> None:
    command = shlex.join(["python", "benchmarks/vdr_k_bound.py", *sys.argv[1:]])
    load = f" (1-minute load average at the end: {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else ""
    r0 = rows[0]
    lines = [f"## {SECTION}", "",
             f"`{command}` on **{r0['device']}**{load}, {r0['dtype']}, published network sizes (random weights, the "
             f"latent and {r0['frames']}-view yaw sweep of `render_speed.py --video`). Per frame of the video: "
             f"'GMPI' = GMNR with VdR off (GMPI's render, bit for bit; {r0['gmpi_frames_timed']} frames spread over the video, each between "
             "two baked frames), synthesis shared by the frames; "
             "'baked, K = 0' = every frame rendered `baked` with MLP_K's output replaced by zeros (all of a baked "
             "frame but MLP_K: pair selection, texel bookkeeping, bilinear K, K H, compositing); 'texels' = those "
             "the video reads, each through MLP_K once; 'MLP_K rate' = its forward on 65,536 texels in the "
             "products' dtype, against 'peak' = one matrix product of its hidden layer's shape in that dtype. "
             "'K floor' = texels x FLOPs / peak / frames; 'floor' = (GMPI + K floor) / GMPI: the least a baked "
             "frame can cost in GMPI frames on this device, whatever the per-pair code; 'predicted' = (baked, K = 0 "
             "+ texels x MLP_K's measured time / frames) / GMPI. The goal of issue 18 is 1.5x.", "",
             "| resolution | planes | GMPI (s) | baked, K = 0 (s) | pairs / pixel | texels | MLP_K MFLOP / texel "
             "| K in | peak (GFLOP/s) | MLP_K rate (GFLOP/s) | K floor (s) | K as run (s) | floor vs GMPI "
             "| predicted vs GMPI |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['resolution']} | {r['planes']} | {r['gmpi_frame_s']:.3f} | {r['pair_frame_s']:.3f} | "
                     f"{r['pairs_per_pixel']:.2f} | {r['texels']:,} | {2 * r['mlp_k_macs_per_texel'] / 1e6:.2f} | "
                     f"{r['k_products']} | {r['peak_flops'] / 1e9:.0f} | {r['mlp_k_flops'] / 1e9:.0f} | "
                     f"{r['k_floor_frame_s']:.3f} | {r['k_run_frame_s']:.3f} | {r['floor_vs_gmpi']:.2f}x | "
                     f"{r['predicted_vs_gmpi']:.2f}x |")
    _replace_section(out, SECTION, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--planes", type=int, default=96)
    parser.add_argument("--video", type=int, default=48, metavar="FRAMES")
    parser.add_argument("--timed-frames", type=int, default=4, help="GMPI frames timed (spread over the sweep)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--bake-matmul", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the rows go (default: benchmarks/results/vdr_k_bound-<device>.json)")
    args = parser.parse_args()
    if args.video < 1 or args.timed_frames < 1 or args.planes < 2:
        raise SystemExit("--video and --timed-frames must be >= 1, --planes >= 2")
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    rows = []
    for res in args.resolutions:
        row = measure(res, args.planes, args.video, args.timed_frames, dev, args.dtype, args.bake_matmul)
        print(f"{res} px: GMPI {row['gmpi_frame_s']:.3f} s, baked with K = 0 {row['pair_frame_s']:.3f} s, "
              f"{row['texels']:,} texels, MLP_K {row['mlp_k_flops'] / 1e9:.0f} of peak {row['peak_flops'] / 1e9:.0f} "
              f"GFLOP/s, K floor {row['k_floor_frame_s']:.3f} s a frame: floor {row['floor_vs_gmpi']:.2f}x GMPI, "
              f"predicted {row['predicted_vs_gmpi']:.2f}x", flush=True)
        rows.append(row)
    rows_json = args.json or ROOT / "benchmarks" / "results" / f"vdr_k_bound-{dev.type}.json"
    rows_json.parent.mkdir(parents=True, exist_ok=True)
    rows_json.write_text(json.dumps(rows, indent=2) + "\n")
    write_markdown(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
