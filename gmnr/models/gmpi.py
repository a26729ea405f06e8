"""GMPI generator (Zhao et al., ECCV 2022): a StyleGAN2 generator that outputs one RGB image and
one alpha map per fronto-parallel plane, rendered to any camera by homography + compositing.

Alpha branch (per block resolution r <= ``alpha_max_res``): instance-normalise the block's
feature x_r, add a w-modulated embedding of the plane's normalised depth, map to one channel
with a modulated 1x1 "ToAlpha", and accumulate over resolutions through the FIR-upsampled skip
path, exactly like StyleGAN2's ToRGB skips. The farthest plane is a background plane, alpha = 1.

ToAlpha is linear in its input, so ToAlpha(norm(x) + e_p) = ToAlpha(norm(x)) + ToAlpha'(e_p)
(the second term without the bias): we evaluate the feature term once and add one scalar per
plane, which is the same function at O(C r^2 + P r^2) instead of O(P C r^2) cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gmnr.models.backbone import StyleGAN2Backbone
from gmnr.models.stylegan2 import FullyConnectedLayer, setup_filter, upsample2d
from gmnr.render.camera import intrinsics_from_fov, pose_to_cam2world
from gmnr.render.mpi import plane_depths, render_mpi


@dataclass(frozen=True)
class GMPIConfig:
    resolution: int
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    channel_base: int = 32768
    channel_max: int = 512
    planes_train: int = 32
    planes_eval: int = 96
    alpha_max_res: int = 256
    fov_deg: float = 12.6
    radius: float = 1.0
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    depth_range: tuple[float, float] = (0.95, 1.12)


class PlaneAlpha(nn.Module):
    """ToAlpha of one block resolution: feature [B, C, r, r] + plane depths [P] -> logits [B, P, 1, r, r]."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.channels, self.w_dim = channels, w_dim
        self.depth_affine = FullyConnectedLayer(w_dim, channels, bias_init=1)  # w-modulation of the embedding
        self.depth_weight = nn.Parameter(torch.randn(channels))
        self.depth_bias = nn.Parameter(torch.zeros(channels))
        self.alpha_affine = FullyConnectedLayer(w_dim, channels, bias_init=1)  # ToAlpha's style
        self.alpha_weight = nn.Parameter(torch.randn(channels))
        self.alpha_bias = nn.Parameter(torch.zeros(1))
        self.weight_gain = 1 / math.sqrt(channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, depth01: torch.Tensor) -> torch.Tensor:
        b, c, r, _ = x.shape
        assert c == self.channels and w.shape == (b, self.w_dim), \
            f"PlaneAlpha expects x [B, {self.channels}, r, r] and w [B, {self.w_dim}], got {tuple(x.shape)}, {tuple(w.shape)}"
        x = torch.nn.functional.instance_norm(x)
        style = self.alpha_affine(w) * self.alpha_weight * self.weight_gain               # [B, C]
        feature_term = torch.einsum("bchw,bc->bhw", x, style)                             # [B, r, r]
        embedding = (self.depth_affine(w)[:, None, :] * self.depth_weight * depth01[None, :, None]
                     + self.depth_bias)                                                    # [B, P, C]
        depth_term = torch.einsum("bpc,bc->bp", embedding, style)                          # [B, P]
        logits = feature_term[:, None] + depth_term[:, :, None, None] + self.alpha_bias
        return logits[:, :, None]                                                          # [B, P, 1, r, r]


class GMPIGenerator(StyleGAN2Backbone):
    """The StyleGAN2 backbone plus the alpha branch, rendered as an MPI."""

    def __init__(self, cfg: GMPIConfig):
        super().__init__(cfg)
        self.alpha_resolutions = [r for r in self.synthesis.block_resolutions if r <= min(cfg.alpha_max_res, cfg.resolution)]
        self.alpha_layers = nn.ModuleDict({str(r): PlaneAlpha(self.synthesis.channels_dict[r], cfg.w_dim)
                                           for r in self.alpha_resolutions})
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        canonical = pose_to_cam2world(torch.tensor([0.0]), torch.tensor([0.0]), 0.0, cfg.radius, cfg.center)
        self.register_buffer("canonical_cam2world", canonical, persistent=False)

    # -- the MPI ------------------------------------------------------------------------------
    def plane_depths(self, n_planes: int, device=None) -> torch.Tensor:
        return plane_depths(*self.cfg.depth_range, n_planes, device=device)

    def synthesize(self, ws: torch.Tensor, n_planes: int, noise_mode: str = "const"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ws [B, num_ws, w_dim] -> shared rgb [B, 3, R, R], alpha [B, P, 1, R, R], depths [P]."""
        assert n_planes >= 2, "an MPI needs at least one plane and the background plane"
        img, features = self.synthesis(ws, noise_mode=noise_mode, return_features=True)
        depths = self.plane_depths(n_planes, device=ws.device)
        near, far = self.cfg.depth_range
        depth01 = (depths - near) / (far - near)
        block_ws = self.synthesis.split_ws(ws)
        logits = None
        for r in self.alpha_resolutions:
            w = block_ws[r][:, -1]  # the style this block's ToRGB reads
            term = self.alpha_layers[str(r)](features[r], w, depth01)
            if logits is not None:
                b, p = logits.shape[:2]
                logits = upsample2d(logits.reshape(b * p, 1, *logits.shape[-2:]), self.resample_filter
                                    ).reshape(b, p, 1, r, r)
            logits = term if logits is None else logits + term
        if logits.shape[-1] != self.cfg.resolution:
            b, p = logits.shape[:2]
            logits = torch.nn.functional.interpolate(logits.reshape(b * p, 1, *logits.shape[-2:]),
                                                     size=self.cfg.resolution, mode="bilinear",
                                                     align_corners=False).reshape(b, p, 1, *img.shape[-2:])
        alpha = torch.sigmoid(logits)
        alpha = torch.cat([alpha[:, :-1], torch.ones_like(alpha[:, -1:])], dim=1)  # background plane
        return img, alpha, depths

    def canonical_intrinsics(self, device=None) -> torch.Tensor:
        return intrinsics_from_fov(self.cfg.fov_deg, self.cfg.resolution).to(device)

    def render(self, ws: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor | None = None,
               n_planes: int | None = None, noise_mode: str = "const", return_planes: bool = False
               ) -> dict[str, torch.Tensor]:
        """Render the MPI of ``ws`` [B, num_ws, w_dim] from ``cam2world`` [B * V, 4, 4] (V views per
        latent, latent-major) with normalised intrinsics [B * V, 3, 3] (None: the dataset camera).
        Returns image [B * V, 3, R, R], depth, alpha_acc, weights, the MPI itself, the cameras used
        (``k_src``, ``k_tgt`` in pixels, ``src_cam2world``) and, with ``return_planes``, each
        pixel's per-plane texture coordinates and colours (see :func:`render_mpi`)."""
        n_planes = n_planes or (self.cfg.planes_train if self.training else self.cfg.planes_eval)
        res = self.cfg.resolution
        img, alpha, depths = self.synthesize(ws, n_planes, noise_mode)
        views = cam2world.shape[0] // ws.shape[0]
        assert cam2world.shape[0] == views * ws.shape[0], \
            f"cam2world batch {cam2world.shape[0]} must be a multiple of the latent batch {ws.shape[0]}"
        if views > 1:  # several views of each MPI (latent-major order): synthesise once, render many
            img, alpha = img.repeat_interleave(views, 0), alpha.repeat_interleave(views, 0)
        k_src = self.canonical_intrinsics(ws.device)
        if intrinsics is None:
            k_tgt = k_src
        else:
            k_tgt = intrinsics.clone()
            k_tgt[..., :2, :] = k_tgt[..., :2, :] * res
        src = self.canonical_cam2world.to(ws.device)
        out = render_mpi(img, alpha, depths, src, k_src, cam2world, k_tgt, (res, res), return_planes)
        image = out.pop("rgb")
        return {"image": image, **out, "alpha": alpha, "mpi_rgb": img, "plane_depths": depths,
                "k_src": k_src, "k_tgt": k_tgt, "src_cam2world": src}
