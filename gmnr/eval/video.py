"""What people look at: multi-view videos (yaw sweep, circle), depth videos and a grid of
seeds x views, rendered from a trained generator."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from gmnr.render.camera import pose_to_cam2world
from gmnr.train.samples import grid_latents, to_uint8


def trajectory(kind: str, frames: int, yaw_amplitude: float, pitch_amplitude: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Yaw and pitch [frames] (radians): a left-right ``sweep`` or an elliptical ``circle``."""
    t = torch.arange(frames, dtype=torch.float32) / frames * 2 * math.pi
    if kind == "sweep":
        return yaw_amplitude * torch.sin(t), torch.zeros(frames)
    if kind == "circle":
        return yaw_amplitude * torch.cos(t), pitch_amplitude * torch.sin(t)
    raise ValueError(f"unknown trajectory {kind!r}; expected 'sweep' or 'circle'")


def depth_to_uint8(depth: torch.Tensor, near: float, far: float) -> np.ndarray:
    """[N, 1, H, W] camera depth -> [N, H, W, 3] uint8 (viridis; near is bright)."""
    import matplotlib
    d = ((far - depth.detach().float().cpu().numpy()[:, 0]) / (far - near)).clip(0, 1)
    return (matplotlib.colormaps["viridis"](d)[..., :3] * 255).round().astype(np.uint8)


@torch.no_grad()
def render_frames(G, z: torch.Tensor, cam2world: torch.Tensor, n_planes: int | None, batch: int = 8
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [F, 3, R, R] and depths [F, 1, R, R] of one latent seen from F cameras. An MPI model
    synthesises the latent's MPI once (and GMNR bakes its K once, ``vdr: baked``) and renders every
    frame from it; other models render the latent per batch of frames."""
    ws = G.mapping(z[:1], None, truncation_psi=1.0, update_w_avg=False)
    mpi = None
    if hasattr(G, "render_mpi"):
        mpi = G.synthesize(ws, n_planes or G.cfg.planes_eval, noise_mode="const")
        if getattr(G, "baking", lambda: False)():
            mpi = G.bake(mpi)
    images, depths = [], []
    for start in range(0, cam2world.shape[0], batch):
        cams = cam2world[start:start + batch]
        if mpi is not None:
            out = G.render_mpi(mpi, cams)
        else:
            out = G.render(ws.expand(cams.shape[0], -1, -1), cams, n_planes=n_planes, noise_mode="const")
        images.append(out["image"].cpu())
        depths.append(out["depth"].cpu())
    return torch.cat(images), torch.cat(depths)


def write_video(frames: np.ndarray, path: Path, fps: int = 24) -> list[Path]:
    """``path`` as MP4 (H.264 via imageio-ffmpeg) and a GIF beside it (previewed by MLflow's UI)."""
    import imageio.v2 as imageio
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    mp4 = path.with_suffix(".mp4")
    with imageio.get_writer(mp4, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)
    written.append(mp4)
    gif = path.with_suffix(".gif")
    imageio.mimsave(gif, list(frames), duration=1 / fps, loop=0)
    written.append(gif)
    return written


def render_outputs(G, out_dir: Path, seeds: int, frames: int, yaw_amplitude: float, pitch_amplitude: float,
                   radius: float, center, depth_range: tuple[float, float], n_planes: int | None,
                   device: torch.device, fps: int = 24) -> list[Path]:
    """Videos for the first latent, depth videos, and a seeds x views grid. Returns the files."""
    from gmnr.data.images import write_png_atomic
    z = grid_latents(seeds, G.z_dim, device)
    written: list[Path] = []
    for kind in ("sweep", "circle"):
        yaw, pitch = trajectory(kind, frames, yaw_amplitude, pitch_amplitude)
        cams = pose_to_cam2world(yaw, pitch, 0.0, radius, center).to(device)
        images, depths = render_frames(G, z, cams, n_planes)
        written += write_video(to_uint8(images), out_dir / f"{kind}", fps)
        written += write_video(depth_to_uint8(depths, *depth_range), out_dir / f"{kind}_depth", fps)
    views = 5
    yaw = torch.linspace(-yaw_amplitude, yaw_amplitude, views)
    cams = pose_to_cam2world(yaw, torch.zeros(views), 0.0, radius, center).to(device)
    rows = []
    for i in range(seeds):
        images, _ = render_frames(G, z[i:i + 1], cams, n_planes)
        rows.append(np.concatenate(list(to_uint8(images)), axis=1))
    grid = out_dir / "grid.png"
    write_png_atomic(grid, np.concatenate(rows, axis=0))
    return written + [grid]
