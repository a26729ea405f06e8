"""Evaluation metrics (GMPI's protocol, which GMNR reports), one small module each.

Every metric has the same shape::

    metric = SomeMetric(...settings...)
    result = metric.compute(G, ctx)      # -> {"<key>": value, ..., "backend": "<what measured it>"}

where ``ctx`` is an :class:`EvalContext` (camera, device, plane count, seed). The metric math
itself is a pure function on arrays in each module (``frechet_distance``, ``kernel_inception_distance``,
``cosine_similarity``, ``normalized_depth_mse``, ``pose_mse``), tested against known truth.

Heavy back ends (torch Inception, mediapipe, dlib) are imported inside functions, so importing
this package is cheap.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class EvalContext:
    """What every metric needs to render from a generator the way the dataset camera sees it."""
    resolution: int
    fov_deg: float
    radius: float
    center: tuple[float, float, float]
    yaw_std: float
    pitch_std: float
    truncation: float
    n_planes: int | None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    batch_size: int = 16

    def sample_latents(self, n: int, z_dim: int, stream: int) -> torch.Tensor:
        """``n`` latents N(0, I), a pure function of (seed, stream) so metrics never share draws."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + stream)
        return torch.randn(n, z_dim, generator=gen)

    def sample_poses(self, n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Yaw, pitch [n] from the dataset's truncated pose prior (as GMPI's evaluation samples them)."""
        from gmnr.render.camera import sample_pose_prior
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + stream + 7919)
        pose = sample_pose_prior(n, self.yaw_std, self.pitch_std, self.truncation, generator=gen)
        return pose["yaw"], pose["pitch"]

    def cam2world(self, yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
        from gmnr.render.camera import pose_to_cam2world
        return pose_to_cam2world(yaw, pitch, 0.0, self.radius, self.center)


@torch.no_grad()
def render(G, z: torch.Tensor, cam2world: torch.Tensor, ctx: EvalContext, with_depth: bool = False):
    """uint8 images [N, R, R, 3] (and camera depth [N, R, R] float32) of latents ``z`` [N, z_dim]
    seen from ``cam2world`` [N, 4, 4], one view per latent, in batches of ``ctx.batch_size``."""
    from gmnr.train.samples import to_uint8
    images, depths = [], []
    for s in range(0, z.shape[0], ctx.batch_size):
        zb = z[s:s + ctx.batch_size].to(ctx.device)
        ws = G.mapping(zb, None, truncation_psi=1.0, update_w_avg=False)
        out = G.render(ws, cam2world[s:s + ctx.batch_size].to(ctx.device), n_planes=ctx.n_planes,
                       noise_mode="const")
        images.append(to_uint8(out["image"]))
        if with_depth:
            depths.append(out["depth"][:, 0].float().cpu().numpy())
    imgs = np.concatenate(images) if images else np.zeros((0, ctx.resolution, ctx.resolution, 3), np.uint8)
    if not with_depth:
        return imgs
    return imgs, (np.concatenate(depths) if depths else np.zeros((0, ctx.resolution, ctx.resolution), np.float32))


def nan_if_empty(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")
