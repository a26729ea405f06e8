"""What people look at: multi-view videos (yaw sweep, circle), depth videos and a grid of
seeds x views, rendered from a trained generator."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from gmnr.models.registry import MPIRenderer
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


DEPTH_COLORMAP = "viridis"


def depth_to_uint8(depth: torch.Tensor, near: float, far: float) -> np.ndarray:
    """[N, 1, H, W] camera depth -> [N, H, W, 3] uint8 (viridis; near is bright)."""
    import matplotlib
    d = ((far - depth.detach().float().cpu().numpy()[:, 0]) / (far - near)).clip(0, 1)
    return (matplotlib.colormaps[DEPTH_COLORMAP](d)[..., :3] * 255).round().astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont
    try:
        import matplotlib
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except (OSError, ImportError):
        return ImageFont.load_default()


def depth_colorbar(height: int, near: float, far: float) -> np.ndarray:
    """A [height, W, 3] uint8 key for :func:`depth_to_uint8`'s colours: a vertical bar from the near
    colour (top) to the far colour (bottom), labelled with both distances (the camera's depth range,
    in scene units) on a white panel."""
    import matplotlib
    from PIL import Image, ImageDraw
    margin = max(4, height // 16)
    font = _font(max(10, height // 18))
    labels = [f"near {near:.3g}", f"far {far:.3g}"]
    width = max(int(font.getlength(t)) for t in labels) + 3 * margin + max(12, height // 12)
    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel)
    text_h = font.getbbox("Ag")[3]
    top, bottom = text_h + 2 * margin, height - text_h - 2 * margin
    bar_w = max(12, height // 12)
    x0 = (width - bar_w) // 2
    ramp = np.linspace(1.0, 0.0, max(2, bottom - top))  # 1 = near (bright), as depth_to_uint8 maps it
    colours = (matplotlib.colormaps[DEPTH_COLORMAP](ramp)[:, :3] * 255).round().astype(np.uint8)
    bar = np.repeat(colours[:, None, :], bar_w, axis=1)
    panel.paste(Image.fromarray(bar), (x0, top))
    for text, y in ((labels[0], margin), (labels[1], height - text_h - margin)):
        draw.text(((width - font.getlength(text)) / 2, y), text, fill="black", font=font)
    return np.asarray(panel)


def with_colorbar(frames: np.ndarray, near: float, far: float) -> np.ndarray:
    """Depth frames [N, H, W, 3] with :func:`depth_colorbar` to their right."""
    bar = depth_colorbar(frames.shape[1], near, far)
    return np.concatenate([frames, np.broadcast_to(bar, (frames.shape[0], *bar.shape))], axis=2)


@torch.no_grad()
def render_frames(G, z: torch.Tensor, cam2world: torch.Tensor, n_planes: int | None, batch: int = 8
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [F, 3, R, R] and depths [F, 1, R, R] of one latent seen from F cameras. An MPI model
    synthesises the latent's MPI once (GMNR ``vdr: baked``: with an empty K cache that the frames
    fill, each texel once) and renders every frame from it; other models render the latent per
    batch of frames."""
    ws = G.mapping(z[:1], None, truncation_psi=1.0, update_w_avg=False)
    mpi = None
    if isinstance(G, MPIRenderer):
        mpi = G.synthesize(ws, n_planes or G.cfg.planes_eval, noise_mode="const")
        if G.baking():
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
    """``path`` as MP4 and a GIF beside it (previewed by MLflow's UI). The MP4 is what browsers play:
    H.264, yuv420p (even width and height: a frame with an odd side is padded by one pixel), the index
    at the front (``+faststart``) so a page can start it before the whole file has arrived."""
    import imageio.v2 as imageio
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    mp4 = path.with_suffix(".mp4")
    pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
    even = np.pad(frames, pad, mode="edge") if any(p[1] for p in pad) else frames
    with imageio.get_writer(mp4, fps=fps, codec="libx264", quality=8, macro_block_size=1, pixelformat="yuv420p",
                            output_params=["-movflags", "+faststart"]) as writer:
        for frame in even:
            writer.append_data(frame)
    written.append(mp4)
    gif = path.with_suffix(".gif")
    imageio.mimsave(gif, list(frames), duration=1 / fps, loop=0)
    written.append(gif)
    return written


def render_outputs(G, out_dir: Path, seeds: int, frames: int, yaw_amplitude: float, pitch_amplitude: float,
                   radius: float, center, depth_range: tuple[float, float], n_planes: int | None,
                   device: torch.device, fps: int = 24) -> list[Path]:
    """Videos for the first latent, depth videos (with a near/far colour key), and a seeds x views
    grid, every picture upscaled to at least 256 px (:func:`gmnr.train.samples.preview_factor`).
    Returns the files."""
    from gmnr.data.images import write_png_atomic
    from gmnr.train.samples import preview_factor, upscale
    z = grid_latents(seeds, G.z_dim, device)
    written: list[Path] = []
    for kind in ("sweep", "circle"):
        yaw, pitch = trajectory(kind, frames, yaw_amplitude, pitch_amplitude)
        cams = pose_to_cam2world(yaw, pitch, 0.0, radius, center).to(device)
        images, depths = render_frames(G, z, cams, n_planes)
        k = preview_factor(images.shape[-1])
        written += write_video(upscale(to_uint8(images), k), out_dir / f"{kind}", fps)
        depth = with_colorbar(upscale(depth_to_uint8(depths, *depth_range), k), *depth_range)
        written += write_video(depth, out_dir / f"{kind}_depth", fps)
    views = 5
    yaw = torch.linspace(-yaw_amplitude, yaw_amplitude, views)
    cams = pose_to_cam2world(yaw, torch.zeros(views), 0.0, radius, center).to(device)
    rows = []
    for i in range(seeds):
        images, _ = render_frames(G, z[i:i + 1], cams, n_planes)
        rows.append(np.concatenate(list(to_uint8(images)), axis=1))
    grid = out_dir / "grid.png"
    write_png_atomic(grid, upscale(np.concatenate(rows, axis=0), preview_factor(images.shape[-1])))
    return written + [grid]
