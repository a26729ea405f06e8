"""Where a GMNR video frame's time goes: torch.profiler over one frame of ``baked`` and of ``all``.

Published network sizes (random weights, seed 0), 96 planes, one latent seen from an 8-view yaw sweep; K
baked lazily, six frames rendered before the profiled one (as in a video, most texels it reads are then
computed). Prints each mode's frame time (profiled, so somewhat slower than in render_speed.py) and the
operators by device time and by host time: on a GPU, whether a frame is bound by its kernels or by
launching and synchronising them.

    python benchmarks/profile_vdr_frame.py --device cuda --dtype bfloat16 --resolution 1024
    python benchmarks/profile_vdr_frame.py --resolution 256            # CPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gmnr.config import load_params  # noqa: E402
from gmnr.models.factory import build_generator, set_inference_vdr  # noqa: E402
from gmnr.render.camera import pose_to_cam2world  # noqa: E402

VIEWS, WARM_FRAMES = 8, 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--planes", type=int, default=96)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--rows", type=int, default=14, help="operators listed per table")
    args = parser.parse_args()
    dev = torch.device(args.device)
    params = load_params(ROOT / "params.yaml", ["dataset=ffhq256", "model=gmnr", f"pack.resolution={args.resolution}"])
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    device_key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    cams = pose_to_cam2world(0.3 * torch.sin(torch.arange(VIEWS) / VIEWS * 2 * torch.pi), torch.zeros(VIEWS)).to(dev)
    amp = (torch.autocast(dev.type, dtype=getattr(torch, args.dtype)) if args.dtype != "float32"
           else torch.autocast(dev.type, enabled=False))
    for mode in ("baked", "all"):
        torch.manual_seed(0)
        G = set_inference_vdr(build_generator(params).to(dev), mode).eval()
        with torch.no_grad(), amp:
            mpi = G.synthesize(G.mapping(torch.randn(1, G.z_dim, device=dev), None), args.planes, noise_mode="const")
            if mode == "baked":
                mpi = G.bake(mpi)
            for i in range(WARM_FRAMES):
                G.render_mpi(mpi, cams[i:i + 1])["image"].sum().item()
            with torch.profiler.profile(activities=activities) as prof:
                start = time.perf_counter()
                G.render_mpi(mpi, cams[WARM_FRAMES:WARM_FRAMES + 1])["image"].sum().item()
                seconds = time.perf_counter() - start
        print(f"{mode} {args.resolution} px {args.planes} planes on {args.device}, {args.dtype}: frame {seconds:.4f} s "
              f"(profiled)", flush=True)
        averages = prof.key_averages()
        print(averages.table(sort_by=device_key, row_limit=args.rows, max_name_column_width=40))
        if dev.type == "cuda":
            print(averages.table(sort_by="cpu_time_total", row_limit=args.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
