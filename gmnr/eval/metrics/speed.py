"""Speed: frames per second of the whole generator (mapping, synthesis of the planes, rendering)
at the evaluation resolution and plane count, one frame at a time (batch 1), after warm-up."""
from __future__ import annotations

import os
import time

import torch

from gmnr.eval.metrics import EvalContext


def frames_per_second(seconds: list[float]) -> float:
    """Frames per second from per-frame wall times (median, robust to a shared machine's hiccups)."""
    if not seconds:
        return float("nan")
    s = sorted(seconds)
    mid = len(s) // 2
    median = s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])
    return 1.0 / median if median > 0 else float("inf")


class Speed:
    """Also reports the machine's 1-minute load average before timing (``speed_load_avg``) against its
    CPU count: at or above it (``speed_under_load``), other work shared the CPU and the FPS is low
    for that reason (``gmnr compare`` marks it)."""
    name = "speed"

    def __init__(self, frames: int = 20, warmup: int = 3):
        self.frames, self.warmup = frames, warmup

    @torch.no_grad()
    def compute(self, G, ctx: EvalContext) -> dict:
        device = ctx.device
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # the minute before timing
        z = ctx.sample_latents(self.frames + self.warmup, G.z_dim, stream=4).to(device)
        yaw, pitch = ctx.sample_poses(self.frames + self.warmup, stream=4)
        cams = ctx.cam2world(yaw, pitch).to(device)
        times, resolution = [], ctx.resolution
        for i in range(self.frames + self.warmup):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            ws = G.mapping(z[i:i + 1], None, truncation_psi=1.0, update_w_avg=False)
            out = G.render(ws, cams[i:i + 1], n_planes=ctx.n_planes, noise_mode="const")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= self.warmup:
                times.append(time.perf_counter() - t0)
            resolution = int(out["image"].shape[-1])
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
        cpus = os.cpu_count() or 1
        return {"fps": frames_per_second(times), "speed_frames": len(times), "speed_resolution": resolution,
                "speed_planes": ctx.n_planes, "speed_load_avg": load, "speed_cpus": cpus,
                "speed_under_load": bool(load >= cpus), "backend": f"wall clock, batch 1, median frame time on {name}"}
