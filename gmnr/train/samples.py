"""Sample grids at fixed latents and fixed views: what a person looks at to judge training."""
from __future__ import annotations

import numpy as np
import torch

from gmnr.render.camera import pose_to_cam2world

GRID_SEED = 20231001  # fixed latents: grids of different steps and runs are comparable
PREVIEW_TILE = 256  # smaller renders are shown upscaled (nearest, an integer factor) to at least this


def preview_factor(size: int, target: int = PREVIEW_TILE) -> int:
    """The integer factor that brings a ``size``-pixel render to at least ``target`` pixels (1 for
    renders that size or larger): a 64 px demo image is a dot in MLflow's preview and an image viewer."""
    return max(1, -(-target // max(1, int(size))))


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale of [..., H, W, C] by an integer factor (every pixel a factor x factor
    block: no interpolation adds or hides detail)."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=-3), factor, axis=-2)


def grid_latents(n: int, z_dim: int, device: torch.device) -> torch.Tensor:
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(GRID_SEED)).to(device)


def grid_cameras(n_views: int, yaw_range: float, radius: float, center, device: torch.device) -> torch.Tensor:
    """``n_views`` cameras from -yaw_range to +yaw_range (radians) at pitch 0."""
    yaws = torch.linspace(-yaw_range, yaw_range, n_views) if n_views > 1 else torch.zeros(1)
    return pose_to_cam2world(yaws, torch.zeros_like(yaws), 0.0, radius, center).to(device)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W, 3] uint8."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def render_grid(G, z: torch.Tensor, cameras: torch.Tensor, n_planes: int | None = None) -> np.ndarray:
    """Rows = latents, columns = views: uint8 [L * R * k, V * R * k, 3], with each R-pixel render
    upscaled by :func:`preview_factor` (k = 4 for the demo's 64 px; 1 from 256 px on)."""
    ws = G.mapping(z, None, truncation_psi=1.0, update_w_avg=False)
    views = cameras.shape[0]
    cams = cameras.repeat(z.shape[0], 1, 1)  # latent-major: each latent's V views together
    images = to_uint8(G.render(ws, cams, n_planes=n_planes, noise_mode="const")["image"])
    r = images.shape[1]
    rows = images.reshape(z.shape[0], views, r, r, 3)
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    return upscale(grid, preview_factor(r))
