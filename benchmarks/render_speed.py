"""Frames per second and peak memory of the generators + renderers (GMPI, GMNR, MVCGAN), side by side.

Each (model, resolution, planes) point runs in a fresh process so its peak memory is its own:
CUDA peak allocated memory on a GPU, peak resident set size (RSS) on the CPU. Networks use the
published sizes from params.yaml (not the demo's), random weights, batch 1, after a warm-up
frame (a first frame slower than 10 s counts as the first measurement instead). GMNR is timed
once per inference VdR mode (``--gmnr-vdr``: all eligible pairs, the training-time sampled share,
off as the published evaluation renders). Writes a table to docs/benchmarks.md.

    python benchmarks/render_speed.py                       # gmpi + gmnr (all, off), 256/512/1024 x 96 planes
    python benchmarks/render_speed.py --models gmnr mvcgan --resolutions 256 512 --planes 96
    python benchmarks/render_speed.py --models gmpi gmnr --gmnr-vdr all sampled off --resolutions 256 --repeats 5

Multi-view mode (``--video N``): one latent seen from N views of a yaw sweep, as ``gmnr render``
renders a video (the MPI synthesised once). Each row times the synthesis and ``--timed-frames`` of
the N frames (spread over the sweep, one render call each; on a GPU after a warm-up pass, on a CPU
without one); its per-frame time for the whole video is (synthesis + bake call + N x mean frame) / N.
GMNR ``baked`` computes K lazily (each texel the first time a frame reads it), so a frame's cost
depends on the frames before it: its rows render and time all N frames in order, and report the
time spent computing K over the whole video (inside the frames' times) and the texels computed
against the eager bake's :func:`texel_mask` count. ``--eager-bake`` bakes every texel of that
mask before the first frame instead (the bake call's time then holds all of K). The
device can be a GPU, in half precision where the network allows it:

    python benchmarks/render_speed.py --video 48 --models gmpi gmnr --gmnr-vdr baked all off --timed-frames 4
    python benchmarks/render_speed.py --video 48 --device cuda --dtype float16 --resolutions 1024 --gmnr-vdr baked off
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SLOW_FIRST_FRAME_S = 10.0  # a first frame this slow is measured, not thrown away as warm-up


def measure(model: str, resolution: int, planes: int, repeats: int, device: str, threads: int,
            vdr: str = "all") -> dict:
    import torch

    from gmnr.config import load_params
    from gmnr.models.factory import build_generator, set_inference_vdr
    from gmnr.render.camera import pose_to_cam2world

    torch.set_num_threads(threads)
    params = load_params(ROOT / "params.yaml", ["dataset=ffhq256", f"model={model}", f"pack.resolution={resolution}"])
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    G = set_inference_vdr(build_generator(params).to(dev), vdr).eval()
    cam = pose_to_cam2world(torch.tensor([0.3]), torch.tensor([0.1])).to(dev)
    z = torch.randn(1, G.z_dim, device=dev)

    pairs = []

    def frame():
        with torch.no_grad():
            out = G(z, cam, n_planes=planes)
            out["image"].sum().item()  # .item() waits for the GPU
            if "n_sampled" in out:  # GMNR: (plane, pixel) pairs that got view-dependent colour
                pairs.append(int(out["n_sampled"].sum()))

    start = time.perf_counter()
    frame()  # warm-up (allocations, kernels)
    first = time.perf_counter() - start
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [first] if first > SLOW_FIRST_FRAME_S else []
    while len(times) < repeats:
        start = time.perf_counter()
        frame()
        times.append(time.perf_counter() - start)
    seconds = sum(times) / len(times)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20
        name = torch.cuda.get_device_name(dev)
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        name = f"CPU: {_cpu_name()}, {threads} threads"
    pairs = pairs[-len(times):]
    return {"model": model, "vdr": vdr if model == "gmnr" else "-", "resolution": resolution, "planes": planes,
            "seconds_per_frame": seconds, "fps": 1 / seconds, "frames_timed": len(times),
            "peak_memory_mb": peak_mb, "memory_kind": "CUDA peak allocated" if dev.type == "cuda" else "peak RSS",
            "device": name, "generator_parameters": sum(p.numel() for p in G.parameters()),
            "vdr_pairs_per_frame": sum(pairs) / len(pairs) if pairs else None,
            "vdr_pairs_per_pixel": sum(pairs) / len(pairs) / resolution ** 2 if pairs else None}


def video_cameras(params, frames: int):
    """cam2world [frames, 4, 4] of the benchmark videos: a yaw sweep over +-truncation x yaw_std, pitch 0."""
    import torch

    from gmnr.render.camera import pose_to_cam2world
    cam = params.camera()
    yaw = cam.truncation * cam.yaw_std * torch.sin(torch.arange(frames) / frames * 2 * torch.pi)
    return pose_to_cam2world(yaw, torch.zeros(frames), 0.0, cam.radius, tuple(cam.center))


def measure_video(model: str, resolution: int, planes: int, frames: int, timed: int, device: str, threads: int,
                  vdr: str = "all", dtype: str = "float32", eager_bake: bool = False, bake_matmul: str = "auto") -> dict:
    """One latent, a ``frames``-view yaw sweep (see the module docstring): seconds of the synthesis,
    the bake call, each of ``timed`` frames (all of them when K is baked lazily) and the computation
    of K wherever it happens, and the per-frame time of the whole video."""
    import torch

    from gmnr.config import load_params
    from gmnr.models.factory import build_generator, set_inference_vdr
    from gmnr.models.gmnr import texel_mask

    torch.set_num_threads(threads)
    params = load_params(ROOT / "params.yaml", ["dataset=ffhq256", f"model={model}", f"pack.resolution={resolution}"])
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    torch.manual_seed(0)  # the same random weights in every row: GMNR's modes render the same MPI
    G = set_inference_vdr(build_generator(params).to(dev), vdr).eval()
    cams = video_cameras(params, frames).to(dev)
    baking = getattr(G, "baking", lambda: False)()
    k_products = None
    if baking:
        G.bake_matmul = bake_matmul
        k_products = str(G.bake_products(dev)).removeprefix("torch.")
    lazy = baking and not eager_bake
    # lazily baked K: a frame's cost depends on the frames before it, so every frame is rendered and timed
    picked = list(range(frames)) if lazy else torch.linspace(0, frames - 1, timed).round().long().tolist()
    amp = torch.autocast(dev.type, dtype=getattr(torch, dtype)) if dtype != "float32" else torch.autocast(dev.type, enabled=False)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
    k_seconds = [0.0]
    if baking:  # time every computation of K (the eager bake's and the on-demand one inside the frames)
        bake_texels = G.bake_texels

        def timed_bake_texels(*args, **kwargs):
            sync()
            start = time.perf_counter()
            n = bake_texels(*args, **kwargs)
            sync()
            k_seconds[0] += time.perf_counter() - start
            return n
        G.bake_texels = timed_bake_texels
    with torch.no_grad(), amp:
        z = torch.randn(1, G.z_dim, device=dev)
        # On a GPU a first pass warms up allocations and kernels (cuDNN, autocast caches); the second is timed.
        # A CPU needs none, and a second synthesis and bake at 1024 px would cost as long as the measurement.
        for warm in ((True, False) if dev.type == "cuda" else (False,)):
            sync()
            start = time.perf_counter()
            mpi = G.synthesize(G.mapping(z, None), planes, noise_mode="const")
            sync()
            synth_s = time.perf_counter() - start
            bake_s = k_seconds[0] = 0.0
            if baking:
                start = time.perf_counter()
                mpi = G.bake(mpi, eager=eager_bake)
                sync()
                bake_s = time.perf_counter() - start
            times, pairs = [], []
            for i in (picked[:1] if warm else picked):
                start = time.perf_counter()
                out = G.render_mpi(mpi, cams[i:i + 1])
                out["image"].sum().item()
                times.append(time.perf_counter() - start)
                pairs.append(int(out["n_sampled"].sum()) if "n_sampled" in out else 0)
    frame_s = sum(times) / len(times)
    per_frame = (synth_s + bake_s + frames * frame_s) / frames
    texels = None
    if baking:
        texels = {"texels_baked": int(mpi["baked_mask"].sum()),
                  "texels_eager": int(texel_mask(mpi["alpha"], G.cfg.vdr_threshold).sum()),
                  "texels_total": mpi["baked_mask"].numel()}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU: {_cpu_name()}, {threads} threads"
    return {"model": model, "vdr": vdr if model == "gmnr" else "-", "resolution": resolution, "planes": planes,
            "video_frames": frames, "frames_timed": len(times), "synthesis_s": synth_s, "bake_s": bake_s,
            "bake_mode": ("eager" if eager_bake else "lazy") if baking else None, "k_products": k_products,
            "k_s": k_seconds[0] if baking else None, **(texels or {}),
            "frame_s": frame_s, "seconds_per_frame": per_frame, "fps": 1 / per_frame, "device": name, "dtype": dtype,
            "vdr_pairs_per_pixel": sum(pairs) / len(pairs) / resolution ** 2 if any(pairs) else None,
            "peak_memory_mb": (torch.cuda.max_memory_allocated() if dev.type == "cuda"
                               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 20,
            "memory_kind": "CUDA peak allocated" if dev.type == "cuda" else "peak RSS"}


def write_video_markdown(rows: list[dict], out: Path, section: str) -> None:
    argv = sys.argv[1:]
    shown = [a for i, a in enumerate(argv) if not a.startswith("--out") and not (i > 0 and argv[i - 1] == "--out")]
    command = shlex.join(["python", "benchmarks/render_speed.py", *shown])
    load = f" (1-minute load average at the end: {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else ""
    r0 = rows[0]
    timed = sorted({r["frames_timed"] for r in rows if r.get("bake_mode") != "lazy"})
    timed_text = (f"{'/'.join(map(str, timed))} of the frames timed one render call each" if timed else
                  "all frames timed")
    lazy = any(r.get("bake_mode") == "lazy" for r in rows)
    eager = any(r.get("bake_mode") == "eager" for r in rows)
    baked_text = "; ".join(
        ([f"GMNR `baked` computes K lazily: the bake call only allocates the texel cache, each frame computes "
          f"the texels its pairs read that no earlier frame computed, so all {r0['video_frames']} frames are "
          f"rendered in order and timed (mean frame: over all of them, on-demand K included)"] if lazy else []) +
        (["`baked (eager)`: K baked for every texel of `texel_mask` in the bake call, before the first "
          "frame"] if eager else []))
    lines = [f"## {section}", "",
             f"`{command}` on **{r0['device']}**{load}, {r0['dtype']}, published network sizes (random weights), one "
             f"latent seen from a {r0['video_frames']}-view yaw sweep as `gmnr render` renders a video: the MPI "
             f"synthesised once, {timed_text}" + (f"; {baked_text}" if baked_text else "") + ". "
             "'per frame' = (synthesis + bake call + frames x mean frame) / frames; 'K (s)': all the time spent "
             "computing K over the video (the bake call's and the frames' on-demand share; not added again, "
             "it is inside those); 'texels baked / eager': the texels whose K was computed over the video, "
             "against the count in `texel_mask` (what the eager bake computes); 'K in bfloat16 / float32': the "
             "dtype of MLP_K's matrix products in the bake (`GMNRGenerator.bake_matmul`). "
             f"'vs GMPI' divides 'per frame' by GMPI's in the same run. Memory: {r0['memory_kind']}.", "",
             "| model | VdR | resolution | planes | synthesis (s) | bake call (s) | K (s) | texels baked / eager "
             "| mean frame (s) | per frame of the video (s) | FPS | pairs / pixel | peak memory (MB) | vs GMPI |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    gmpi = {(r["resolution"], r["planes"]): r["seconds_per_frame"] for r in rows if r["model"] == "gmpi"}
    for r in rows:
        key = (r["resolution"], r["planes"])
        ratio = f"{r['seconds_per_frame'] / gmpi[key]:.2f}x" if key in gmpi else "-"
        per_pixel = f"{r['vdr_pairs_per_pixel']:.2f}" if r.get("vdr_pairs_per_pixel") else "-"
        vdr = r["vdr"] + "".join(f", {x}" for x in ("eager" if r.get("bake_mode") == "eager" else None,
                                                       r.get("k_products") and f"K in {r['k_products']}") if x)
        k_s = f"{r['k_s']:.3f}" if r.get("k_s") is not None else "-"
        texels = (f"{r['texels_baked']:,} / {r['texels_eager']:,} ({r['texels_baked'] / max(r['texels_eager'], 1):.1%})"
                  if r.get("texels_baked") is not None else "-")
        lines.append(f"| {r['model']} | {vdr} | {r['resolution']} | {r['planes']} | {r['synthesis_s']:.3f} | "
                     f"{r['bake_s']:.3f} | {k_s} | {texels} | {r['frame_s']:.3f} | {r['seconds_per_frame']:.3f} | "
                     f"{r['fps']:.3f} | {per_pixel} | {r['peak_memory_mb']:.0f} | {ratio} |")
    _replace_section(out, section, "\n".join(lines) + "\n")


def _replace_section(out: Path, section: str, body: str) -> None:
    text = out.read_text() if out.exists() else "# Benchmarks\n\nEvery table here is written by the command above it.\n\n"
    start = text.find(f"## {section}\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + body + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + body
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def write_markdown(rows: list[dict], out: Path, section: str = "Render speed") -> None:
    device, kind = rows[0]["device"], rows[0]["memory_kind"]
    argv = sys.argv[1:]
    shown = [a for i, a in enumerate(argv)  # the command as typed, less where its table was written
             if not a.startswith("--out") and not (i > 0 and argv[i - 1] == "--out")]
    command = shlex.join(["python", "benchmarks/render_speed.py", *shown])
    load = f" (1-minute load average at the end: {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else ""
    lines = [f"## {section}", "",
             f"`{command}` on **{device}**{load}, batch 1, published network sizes from "
             f"params.yaml (random weights), generator + renderer (mapping, synthesis of the MPI, "
             f"rendering), one process per row. Memory: {kind}. 'time vs GMPI' is this row's time per "
             f"frame over GMPI's at the same resolution and plane count, measured in the same run.", "",
             "GMNR rows differ by the inference VdR mode (`evaluate.vdr` / `render.vdr`): `all` gives "
             "view-dependent colour to every (plane, pixel) pair with compositing weight above "
             "`gmnr.vdr_threshold`, `sampled` to the training-time random share (`gmnr.vdr_fraction`), "
             "`off` to none (how the published GMNR code renders its evaluation images). Their cost grows "
             "with the VdR pairs, MLP_K's ~1.3 M multiply-adds each at the published sizes. Random weights "
             "give dense, half-transparent alphas, so many planes in front of the background qualify: a "
             "worst case; a trained MPI's alphas are nearly 0 or 1.", "",
             "MVCGAN has no planes: it renders `mvcgan.samples_per_ray` samples per ray at its last "
             "curriculum stage's ray resolution (64 x 64 x 16 published) and GNet decodes the features to "
             "the resolution; its 'time vs' columns compare it with GMPI and with each GMNR mode at the same "
             "resolution (with the most planes measured there).", "",
             "| model | VdR | resolution | planes | s / frame | FPS | peak memory (MB) | VdR pairs / frame "
             "| pairs / pixel | time vs GMPI | time vs GMNR |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def base(model: str, vdr: str) -> dict:
        return {(r["resolution"], r["planes"]): r["seconds_per_frame"] for r in rows
                if r["model"] == model and r.get("vdr", "-") == vdr}
    gmpi = base("gmpi", "-")
    gmnr_modes = {v: base("gmnr", v) for v in sorted({r.get("vdr", "-") for r in rows if r["model"] == "gmnr"})}

    def most_planes(times: dict, res: int):
        same = sorted((p, t) for (r_, p), t in times.items() if r_ == res)
        return same[-1] if same else None

    for r in rows:
        key = (r["resolution"], r["planes"])
        vs_gmpi = f"{r['seconds_per_frame'] / gmpi[key]:.2f}x" if key in gmpi and r["model"] != "mvcgan" else "-"
        vs_gmnr = "-"
        if r["model"] == "mvcgan":  # against GMPI and each GMNR mode at the same resolution, most planes measured
            ref = most_planes(gmpi, r["resolution"])
            vs_gmpi = f"{r['seconds_per_frame'] / ref[1]:.2f}x ({ref[0]} planes)" if ref else "-"
            cells = [f"{r['seconds_per_frame'] / ref[1]:.2f}x ({mode}, {ref[0]} planes)"
                     for mode, times in gmnr_modes.items() if (ref := most_planes(times, r["resolution"]))]
            vs_gmnr = "; ".join(cells) or "-"
        pairs = f"{r['vdr_pairs_per_frame']:,.0f}" if r.get("vdr_pairs_per_frame") is not None else "-"
        per_pixel = f"{r['vdr_pairs_per_pixel']:.2f}" if r.get("vdr_pairs_per_pixel") is not None else "-"
        planes = "-" if r["model"] == "mvcgan" else r["planes"]
        lines.append(f"| {r['model']} | {r.get('vdr', '-')} | {r['resolution']} | {planes} | "
                     f"{r['seconds_per_frame']:.3f} | {r['fps']:.3f} | {r['peak_memory_mb']:.0f} | {pairs} | "
                     f"{per_pixel} | {vs_gmpi} | {vs_gmnr} |")
    _replace_section(out, section, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gmpi", "gmnr"], choices=["gmpi", "gmnr", "mvcgan"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--planes", type=int, nargs="+", default=[96])
    parser.add_argument("--gmnr-vdr", nargs="+", default=["all", "off"], choices=["all", "baked", "sampled", "off"],
                        help="GMNR inference VdR modes, one row each")
    parser.add_argument("--video", type=int, default=0, metavar="FRAMES",
                        help="multi-view mode: one latent, a FRAMES-view video (see the module docstring)")
    parser.add_argument("--timed-frames", type=int, default=4,
                        help="multi-view mode: frames timed per row (GMNR lazily baked: all frames)")
    parser.add_argument("--eager-bake", action="store_true",
                        help="multi-view mode: GMNR `baked` bakes every texel of texel_mask before the first frame")
    parser.add_argument("--bake-matmul", nargs="+", default=["auto"], choices=["auto", "float32", "bfloat16"],
                        help="multi-view mode: GMNR `baked` rows, one per dtype of the baked K's matrix products "
                             "(auto: bfloat16 where the device multiplies it natively)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="multi-view mode: autocast dtype (float16 / bfloat16 on a GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--section", default="Render speed",
                        help="title of the table's section in --out (replaced when it exists, else appended)")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)  # child process mode: model res planes vdr matmul
    args = parser.parse_args()
    if args.one:
        model, res, planes, vdr, matmul = args.one[0], int(args.one[1]), int(args.one[2]), args.one[3], args.one[4]
        if args.video:
            print(json.dumps(measure_video(model, res, planes, args.video, args.timed_frames, args.device,
                                           args.threads, vdr, args.dtype, args.eager_bake, matmul)))
        else:
            print(json.dumps(measure(model, res, planes, args.repeats, args.device, args.threads, vdr)))
        return
    if args.video and "mvcgan" in args.models:
        raise SystemExit("--video times MPI models (gmpi, gmnr); MVCGAN renders every frame from scratch")
    rows = []
    for res in args.resolutions:
        for planes in args.planes:
            # models side by side for each point: one timing environment
            points = [(m, v, k) for m in args.models for v in (args.gmnr_vdr if m == "gmnr" else ["-"])
                      for k in (args.bake_matmul if v == "baked" and args.video else ["auto"])]
            for model, vdr, matmul in points:
                if model == "mvcgan" and planes != args.planes[0]:
                    continue  # planes mean nothing to a radiance field: one row per resolution
                done = subprocess.run([sys.executable, __file__, "--one", model, str(res), str(planes), vdr, matmul,
                                       "--repeats", str(args.repeats), "--device", args.device,
                                       "--threads", str(args.threads), "--video", str(args.video),
                                       "--timed-frames", str(args.timed_frames), "--dtype", args.dtype,
                                       *(["--eager-bake"] if args.eager_bake else [])],
                                      capture_output=True, text=True, cwd=ROOT)
                if done.returncode != 0:
                    raise SystemExit(f"{model} {res} px, {planes} planes failed:\n{done.stderr[-2000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{model:5s} {vdr:7s} {res:5d} px {planes:3d} planes: {row['seconds_per_frame']:.3f} s/frame, "
                      f"{row['fps']:.2f} FPS, {row['peak_memory_mb']:.0f} MB, VdR pairs/pixel "
                      f"{row['vdr_pairs_per_pixel'] or 0:.2f}" + (
                          f", K {row['k_s']:.3f} s ({row['bake_mode']}), texels baked / eager "
                          f"{row['texels_baked']:,} / {row['texels_eager']:,}" if row.get("k_s") is not None else ""),
                      flush=True)
                rows.append(row)
    if args.video:
        write_video_markdown(rows, args.out, args.section if args.section != "Render speed" else
                             f"Video render speed ({args.video} frames)")
    else:
        write_markdown(rows, args.out, args.section)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
