"""Volume rendering along camera rays (MVCGAN / pi-GAN): pure tensor functions.

Conventions follow :mod:`gmnr.render.camera` (OpenCV cameras, pixel intrinsics with pixel centres
at ``i + 0.5``). Samples are placed uniformly in *camera depth* z between the near and far planes
(the same [near, far] planes as the MPI renderer), so a ray's samples are ``t = z / cos`` along the
unit ray direction, where ``cos`` is the cosine between the ray and the optical axis. The depth map
is returned as camera-space z, what :func:`gmnr.render.warp.backward_warp` expects.

Quadrature (NeRF): sample i stands for the segment up to sample i + 1,
``alpha_i = 1 - exp(-delta_i * relu(sigma_i + noise))``, ``w_i = alpha_i prod_{j<i} (1 - alpha_j + 1e-10)``
(front to back, the same 1e-10 as the MPI compositing), ``value = sum_i w_i v_i + T background``
with ``T = prod_i (1 - alpha_i + 1e-10)`` the light that passes every sample.
"""
from __future__ import annotations

import torch

from gmnr.render.camera import pixel_rays

Tensor = torch.Tensor

FAR_DELTA = 1e10  # NeRF / pi-GAN: the last sample's segment runs to infinity (an opaque far wall)
COMPOSITE_EPS = 1e-10


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def camera_rays(cam2world: Tensor, intrinsics: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Ray origins and unit directions [B, H, W, 3] through pixel centres, and each ray's cosine with
    the optical axis [B, H, W] (camera z of the unit direction). ``intrinsics`` in pixels, [3, 3]
    shared by the batch or [B, 3, 3] per camera."""
    cam2world = cam2world.reshape(-1, 4, 4)
    b = cam2world.shape[0]
    k = intrinsics.to(cam2world)
    _require(k.shape[-2:] == (3, 3) and k.ndim in (2, 3), f"intrinsics must be [3, 3] or [B, 3, 3], got {tuple(k.shape)}")
    if k.ndim == 2 or k.shape[0] == 1:
        origins, dirs = pixel_rays(cam2world, k.reshape(3, 3), height, width)
    else:
        _require(k.shape[0] == b, f"intrinsics batch {k.shape[0]} != cameras {b}")
        # Per-camera intrinsics: fold K^-1 into the rotation so pixel_rays with K = I yields
        # normalize(R K^-1 x), the true pixel directions (the translation is unchanged).
        folded = cam2world.clone()
        folded[:, :3, :3] = cam2world[:, :3, :3] @ torch.linalg.inv(k)
        origins, dirs = pixel_rays(folded, torch.eye(3, dtype=k.dtype, device=k.device), height, width)
    cos = (dirs * cam2world[:, None, None, :3, 2]).sum(-1)
    return origins, dirs, cos


def stratified_depths(near: float, far: float, n_samples: int, shape: tuple[int, ...], perturb: bool,
                      device=None, dtype=None) -> Tensor:
    """Sample depths [*shape, n] from near to far (both included when not perturbed). With
    ``perturb`` each sample moves uniformly within +-half a spacing (pi-GAN's stratification),
    drawn from the global RNG (the trainer seeds it per step)."""
    _require(n_samples >= 2 and far > near, f"need n_samples >= 2 and far > near, got {n_samples}, [{near}, {far}]")
    z = torch.linspace(near, far, n_samples, device=device, dtype=dtype or torch.get_default_dtype())
    z = z.expand(*shape, n_samples)
    if perturb:
        spacing = (far - near) / (n_samples - 1)
        z = z + (torch.rand(z.shape, device=device, dtype=z.dtype) - 0.5) * spacing
    return z.contiguous()


def composite(sigma: Tensor, values: Tensor, t: Tensor, noise_std: float = 0.0, last_delta: float = FAR_DELTA,
              background: Tensor | float = 0.0) -> dict[str, Tensor]:
    """Front-to-back compositing along rays.

    sigma [..., S] densities, values [..., S, C] per-sample colours/features, t [..., S] increasing
    distances along the (unit) ray; ``noise_std`` > 0 adds N(0, noise_std^2) to sigma before the
    ReLU (regularises early training; anneal it to 0). ``last_delta`` is the length of the last
    sample's segment (infinite by default: the far sample is an opaque wall).
    Returns ``values`` [..., C], ``depth`` [...] (expected t; the light that passes every sample is
    placed at the last sample), ``weights`` [..., S] and ``opacity`` [...] = sum of the weights.
    """
    _require(sigma.shape == t.shape and values.shape[:-1] == sigma.shape,
             f"sigma {tuple(sigma.shape)}, t {tuple(t.shape)} must match and values must be [..., S, C], "
             f"got {tuple(values.shape)}")
    deltas = torch.cat([t[..., 1:] - t[..., :-1], torch.full_like(t[..., :1], last_delta)], dim=-1)
    if noise_std > 0:
        sigma = sigma + torch.randn_like(sigma) * noise_std
    alpha = 1.0 - torch.exp(-deltas * torch.relu(sigma))
    passing = torch.cumprod(1.0 - alpha + COMPOSITE_EPS, dim=-1)
    transmittance = torch.cat([torch.ones_like(passing[..., :1]), passing[..., :-1]], dim=-1)
    weights = alpha * transmittance
    remaining = passing[..., -1]
    out = (weights[..., None] * values).sum(-2)
    out = out + remaining[..., None] * torch.as_tensor(background, dtype=out.dtype, device=out.device)
    depth = (weights * t).sum(-1) + remaining * t[..., -1]
    return {"values": out, "depth": depth, "weights": weights, "opacity": weights.sum(-1)}
