"""A head in front of a wall, rendered analytically: the ground truth for fitting MVCGAN's radiance field.

A textured sphere (the "head", radius HEAD_RADIUS at the world origin, where the cameras look) in front of a
textured wall (the plane z = WALL_Z, facing the cameras at +z). Both lie inside MVCGAN's published ray
range [0.88, 1.12] for cameras at radius 1: the head's front at distance 0.94 on the optical axis, the wall at
1.08. The texture varies with the 3D point (period about 0.16, 12 rays at 16 x 16 rays and fov 12 degrees), so
the views agree only through the true geometry.
"""
from __future__ import annotations

import math

import torch

from gmnr.render.camera import intrinsics_from_fov, pose_to_cam2world
from gmnr.render.volume import camera_rays

Tensor = torch.Tensor

HEAD_RADIUS = 0.06
WALL_Z = -0.08
_MISS = 1e9
RAYS = 16  # the demo's ray resolution
YAW_RANGE, PITCH_RANGE = 0.3, 0.15  # within MVCGAN's pose prior (yaw std 0.3, pitch std 0.155)


def texture(points: Tensor) -> Tensor:
    """RGB in [0.1, 0.9] [..., 3] at world points [..., 3]."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack([0.5 + 0.4 * torch.sin(40 * x + 1), 0.5 + 0.4 * torch.sin(40 * y + 2),
                        0.5 + 0.4 * torch.sin(40 * (x + y) + 3)], dim=-1)


def head_and_wall(cam2world: Tensor, intrinsics: Tensor, resolution: int) -> tuple[Tensor, Tensor, Tensor]:
    """Image [N, 3, r, r] in [0, 1], camera-z depth [N, 1, r, r] and head mask [N, 1, r, r] (bool) of
    the scene from ``cam2world`` [N, 4, 4] with pixel intrinsics [3, 3] at r = ``resolution``."""
    origins, dirs, cos = camera_rays(cam2world, intrinsics, resolution, resolution)
    b = (origins * dirs).sum(-1)
    disc = b * b - ((origins * origins).sum(-1) - HEAD_RADIUS ** 2)
    t_head = torch.where(disc > 0, -b - disc.clamp(min=0).sqrt(), torch.full_like(b, _MISS))
    t_wall = (WALL_Z - origins[..., 2]) / dirs[..., 2]
    head = t_head < t_wall
    t = torch.where(head, t_head, t_wall)
    image = texture(origins + dirs * t[..., None]).permute(0, 3, 1, 2)
    return image, (t * cos)[:, None], head[:, None]


def scene_views(views: int, seed: int = 1) -> torch.Tensor:
    """cam2world [views, 4, 4] uniform within MVCGAN's pose range, radius 1, looking at the origin."""
    g = torch.Generator().manual_seed(seed)
    yaw = (torch.rand(views, generator=g) * 2 - 1) * YAW_RANGE
    pitch = (torch.rand(views, generator=g) * 2 - 1) * PITCH_RANGE
    return pose_to_cam2world(yaw, pitch)


def depth_relation(rendered: torch.Tensor, true: torch.Tensor, head: torch.Tensor) -> dict:
    """Least-squares ``rendered = slope * true + offset`` over every pixel, their correlation, and the mean
    absolute error on head and on wall pixels."""
    x, y = true.flatten().double(), rendered.flatten().double()
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    slope, offset = torch.linalg.lstsq(design, y[:, None]).solution.flatten().tolist()
    error = (rendered - true).abs()
    return {"slope": round(slope, 3), "offset": round(offset, 3),
            "correlation": round(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), 3),
            "head_error": round(float(error[head].mean()), 4), "wall_error": round(float(error[~head].mean()), 4)}


def fit(G, cam2world: torch.Tensor, steps: int, lr: float, depth_weight: float, every: int = 0,
        seed: int = 0) -> tuple[list[dict], torch.Tensor]:
    """Fit ``G``'s field and one latent's code to the scene from ``cam2world``; returns one record per
    ``every`` steps (and the last) and the fitted code. Modifies ``G``."""
    k = intrinsics_from_fov(G.cfg.fov_deg, RAYS)
    image, depth, head = head_and_wall(cam2world, k, RAYS)
    torch.manual_seed(seed)
    code = torch.nn.Parameter(G.mapping(torch.randn(1, G.z_dim), None).detach())
    optimizer = torch.optim.Adam([*G.field.parameters(), code], lr=lr, betas=(0.0, 0.9))
    records = []
    for step in range(steps + 1):
        if step == steps or (every and step % every == 0):
            with torch.no_grad():
                out = G.render_rays(code, cam2world)  # bin centres, no noise: the geometry as rendered
            mse = float((out["rgb_raw"] - image).pow(2).mean())
            records.append({"step": step, "rgb_psnr": round(-10 * math.log10(mse), 2),
                            "sigma_max": round(float(out["sigma_raw"].max()), 2),
                            **depth_relation(out["depth_raw"], depth, head)})
        if step == steps:
            break
        out = G.render_rays(code, cam2world, noise_mode="random")  # stratified samples, as in training
        loss = (out["rgb_raw"] - image).pow(2).mean()
        if depth_weight:
            loss = loss + depth_weight * (out["depth_raw"] - depth).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return records, code.detach()
