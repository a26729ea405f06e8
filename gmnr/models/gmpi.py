"""GMPI generator (Zhao et al., ECCV 2022): a StyleGAN2 generator that outputs one RGB image and
one alpha map per fronto-parallel plane, rendered to any camera by homography + compositing.

Followed: apple/ml-gmpi ``gmpi/models/networks/networks_cond_on_pos_enc.py`` (SynthesisBlock with
``torgba_cond_on_pos_enc: normalize_add_z``, ``torgba_cond_on_pos_enc_embed_func: modulated_lrelu``,
``cond_on_pos_enc_only_alpha``, ``build_background_from_rgb``, ``background_alpha_full``,
``G_final_img_act: tanh``) and ``gmpi/core/mpi_renderer.py`` with ``use_confined_volume: True``.

Alpha branch (per block resolution r <= ``alpha_max_res``): instance-normalise the block's
feature x_r (mean and unbiased std per channel, as GMPI's ``calc_mean_std``), add an embedding
of the plane's normalised depth made by a w-modulated MLP (:class:`DepthEmbedding`), map to one
channel with a modulated 1x1 "ToAlpha", and accumulate over resolutions through the FIR-upsampled
skip path like StyleGAN2's ToRGB (blocks above ``alpha_max_res`` add nothing and only upsample).
alpha = (tanh + 1) / 2, the image is tanh of the skip image (GMPI's final activation on all
channels). The farthest plane is a background plane, alpha = 1, coloured by the same ToRGB layers
applied to the left and right 5 % border columns of each block's features (detached), linearly
interpolated across: a face image on the back plane would show a second face under parallax.

ToAlpha is linear in its input, so ToAlpha(norm(x) + e_p) = ToAlpha(norm(x)) + ToAlpha'(e_p)
(the second term without the bias; the clamp is applied to the sum, as GMPI's bias_act does):
the feature term is evaluated once and one scalar per (latent, plane) is added, the same function
at O(C r^2 + P C) instead of O(P C r^2) cost.

Plane extents follow GMPI's confined volume (:func:`gmnr.render.mpi.confined_plane_extents`): the
background plane covers every camera of the pose box (+-truncation * std in yaw and pitch), so
every pixel of every view the prior can draw ends on it (alpha_acc = 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gmnr.models.backbone import StyleGAN2Backbone
from gmnr.models.stylegan2 import FullyConnectedLayer, ToRGBLayer, bias_act, setup_filter, upsample2d
from gmnr.render.camera import intrinsics_from_fov, pose_to_cam2world
from gmnr.render.mpi import confined_plane_extents, plane_depths, plane_texture_intrinsics, render_mpi

INSTANCE_NORM_EPS = 1e-8      # GMPI's calc_mean_std: var + eps, and std + eps in the division
BACKGROUND_BORDER = 0.05      # GMPI's build_background_from_rgb_ratio
PLANE_ENLARGE = 1.001         # GMPI's spatial_enlarge_factor (all datasets)


@dataclass(frozen=True)
class GMPIConfig:
    resolution: int
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    planes_train: int = 32
    planes_eval: int = 96
    alpha_max_res: int = 256
    fov_deg: float = 12.6
    radius: float = 1.0
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    depth_range: tuple[float, float] = (0.95, 1.12)
    yaw_max: float = 2 * 0.289    # the pose box the planes are sized for: +-truncation * std (radians)
    pitch_max: float = 2 * 0.127


def instance_normalize(x: torch.Tensor) -> torch.Tensor:
    """GMPI's normalisation of a block feature [B, C, H, W]: per channel, subtract the spatial mean
    and divide by sqrt(unbiased variance + 1e-8) + 1e-8 (``calc_mean_std`` in the published code)."""
    flat = x.flatten(2)
    std = (flat.var(dim=2, unbiased=True) + INSTANCE_NORM_EPS).sqrt()
    return (x - flat.mean(dim=2)[..., None, None]) / (std[..., None, None] + INSTANCE_NORM_EPS)


def border_background_features(x: torch.Tensor, ratio: float = BACKGROUND_BORDER) -> torch.Tensor:
    """GMPI's background features of a block feature x [B, C, H, W] (``build_background_from_rgb``):
    the left and right ``pad = max(1, floor(ratio W))`` columns as they are, and in between a linear
    ramp from column ``pad`` to column ``W - pad - 1`` (weight (j - pad) / (W - 2 pad)), detached."""
    x = x.detach()
    width = x.shape[-1]
    pad = max(1, int(math.floor(ratio * width)))
    out = torch.zeros_like(x)
    out[..., :pad] = x[..., :pad]
    out[..., width - pad:] = x[..., width - pad:]
    start, end = pad, width - pad
    if start < end:
        t = (torch.arange(start, end, device=x.device, dtype=x.dtype) - start) / (end - start + 1e-8)
        out[..., start:end] = (1 - t) * x[..., start:start + 1] + t * x[..., end - 1:end]
    return out


class DepthEmbedding(nn.Module):
    """The w-modulated depth embedding of one block (GMPI's ``ToRGBLayerDeeperModulatedConv`` on the
    1-channel normalised plane depth): four modulated 1x1 layers without demodulation, widths
    1 -> C/4 -> C/2 -> C -> C, each with bias and leaky ReLU (NVlabs gain sqrt 2, conv clamp), all
    styled by the block's conv1 w. The input is constant over a plane, so this runs on vectors:
    depth01 [P], w [B, w_dim] -> [B, P, C]."""

    def __init__(self, channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        widths = [1, max(1, channels // 4), max(1, channels // 2), channels, channels]
        self.channels, self.w_dim, self.conv_clamp = channels, w_dim, conv_clamp
        self.affines = nn.ModuleList(FullyConnectedLayer(w_dim, a, bias_init=1) for a in widths[:-1])
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(b, a)) for a, b in zip(widths[:-1], widths[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in widths[1:])

    def forward(self, depth01: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        assert depth01.ndim == 1 and w.ndim == 2 and w.shape[1] == self.w_dim, \
            f"DepthEmbedding expects depth01 [P] and w [B, {self.w_dim}], got {tuple(depth01.shape)}, {tuple(w.shape)}"
        h = depth01.to(w.dtype)[None, :, None].expand(w.shape[0], -1, 1)  # [B, P, 1]
        for affine, weight, bias in zip(self.affines, self.weights, self.biases):
            styles = affine(w) / math.sqrt(weight.shape[1])               # [B, in]
            h = torch.einsum("bpi,oi->bpo", h * styles[:, None, :], weight)
            h = bias_act(h, bias, act="lrelu", clamp=self.conv_clamp, dim=2)
        return h


class PlaneAlpha(nn.Module):
    """ToAlpha of one block: feature x [B, C, r, r], the block's conv1 and ToRGB styles, plane
    depths [P] -> alpha logits [B, P, 1, r, r] (before the skip accumulation and the activation)."""

    def __init__(self, channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.channels, self.w_dim = channels, w_dim
        self.depth_embed = DepthEmbedding(channels, w_dim, conv_clamp)
        self.to_alpha = ToRGBLayer(channels, 1, w_dim, conv_clamp=conv_clamp)

    def forward(self, x: torch.Tensor, w_conv1: torch.Tensor, w_torgb: torch.Tensor, depth01: torch.Tensor
                ) -> torch.Tensor:
        b, c, r, _ = x.shape
        assert c == self.channels and w_conv1.shape == w_torgb.shape == (b, self.w_dim), \
            f"PlaneAlpha expects x [B, {self.channels}, r, r] and w [B, {self.w_dim}], got {tuple(x.shape)}, " \
            f"{tuple(w_conv1.shape)}, {tuple(w_torgb.shape)}"
        layer = self.to_alpha
        style = layer.affine(w_torgb) * layer.weight_gain * layer.weight[0, :, 0, 0]          # [B, C]
        feature_term = torch.einsum("bchw,bc->bhw", instance_normalize(x), style)             # [B, r, r]
        depth_term = torch.einsum("bpc,bc->bp", self.depth_embed(depth01, w_conv1), style)     # [B, P]
        logits = feature_term[:, None] + depth_term[:, :, None, None]
        return bias_act(logits[:, :, None], layer.bias, clamp=layer.conv_clamp, dim=2)         # [B, P, 1, r, r]


class GMPIGenerator(StyleGAN2Backbone):
    """The StyleGAN2 backbone plus the alpha branch and the background plane, rendered as an MPI."""

    def __init__(self, cfg: GMPIConfig):
        super().__init__(cfg)
        self.alpha_resolutions = [r for r in self.synthesis.block_resolutions if r <= min(cfg.alpha_max_res, cfg.resolution)]
        self.alpha_layers = nn.ModuleDict({str(r): PlaneAlpha(self.synthesis.channels_dict[r], cfg.w_dim, cfg.conv_clamp)
                                           for r in self.alpha_resolutions})
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        canonical = pose_to_cam2world(torch.tensor([0.0]), torch.tensor([0.0]), 0.0, cfg.radius, cfg.center)
        self.register_buffer("canonical_cam2world", canonical, persistent=False)
        # the front planes' and the background plane's half-extents (x, y): they depend only on the
        # farthest depth and the pose box, not on the number of planes
        extents = confined_plane_extents(torch.tensor(cfg.depth_range), cfg.fov_deg, cfg.radius, cfg.center,
                                         cfg.yaw_max, cfg.pitch_max, PLANE_ENLARGE)
        self.register_buffer("plane_half_extents", extents, persistent=False)

    # -- the MPI ------------------------------------------------------------------------------
    def plane_depths(self, n_planes: int, device=None) -> torch.Tensor:
        return plane_depths(*self.cfg.depth_range, n_planes, device=device)

    def texture_intrinsics(self, n_planes: int, device=None) -> torch.Tensor:
        """Per-plane source intrinsics [P, 3, 3] of the confined volume (texture pixels)."""
        extents = torch.cat([self.plane_half_extents[:1].expand(n_planes - 1, 2), self.plane_half_extents[1:]])
        res = self.cfg.resolution
        return plane_texture_intrinsics(self.plane_depths(n_planes, device), extents.to(device), (res, res))

    def synthesize(self, ws: torch.Tensor, n_planes: int, noise_mode: str = "const") -> dict[str, torch.Tensor]:
        """ws [B, num_ws, w_dim] -> the MPI: ``rgb`` [B, 3, R, R] shared by the front planes,
        ``background`` [B, 3, R, R] (last plane), ``alpha`` [B, P, 1, R, R] (last plane 1), ``depths`` [P];
        colours in [-1, 1] (tanh)."""
        assert n_planes >= 2, "an MPI needs at least one plane and the background plane"
        img, features = self.synthesis(ws, noise_mode=noise_mode, return_features=True)
        depths = self.plane_depths(n_planes, device=ws.device)
        near, far = self.cfg.depth_range
        depth01 = (depths - near) / (far - near)
        block_ws = self.synthesis.split_ws(ws)
        logits = background = None
        for r in self.synthesis.block_resolutions:
            w_conv1, w_torgb = block_ws[r][:, -2], block_ws[r][:, -1]
            block = getattr(self.synthesis, f"b{r}")
            bg_term = block.torgb(border_background_features(features[r]), w_torgb).to(torch.float32)
            background = bg_term if background is None else upsample2d(background, self.resample_filter) + bg_term
            if logits is not None:  # the skip path: upsample what the lower blocks accumulated
                b, p = logits.shape[:2]
                logits = upsample2d(logits.reshape(b * p, 1, *logits.shape[-2:]), self.resample_filter
                                    ).reshape(b, p, 1, r, r)
            if str(r) in self.alpha_layers:
                term = self.alpha_layers[str(r)](features[r], w_conv1, w_torgb, depth01)
                logits = term if logits is None else logits + term
        alpha = (torch.tanh(logits) + 1) / 2
        alpha = torch.cat([alpha[:, :-1], torch.ones_like(alpha[:, -1:])], dim=1)  # background plane
        return {"rgb": torch.tanh(img), "background": torch.tanh(background), "alpha": alpha, "depths": depths}

    def canonical_intrinsics(self, device=None) -> torch.Tensor:
        return intrinsics_from_fov(self.cfg.fov_deg, self.cfg.resolution).to(device)

    def render(self, ws: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor | None = None,
               n_planes: int | None = None, noise_mode: str = "const", **render_kwargs) -> dict[str, torch.Tensor]:
        """Render the MPI of ``ws`` [B, num_ws, w_dim] from ``cam2world`` [B * V, 4, 4] (V views per
        latent, latent-major) with normalised intrinsics [B * V, 3, 3] (None: the dataset camera);
        ``render_kwargs`` go to :meth:`render_mpi`."""
        n_planes = n_planes or (self.cfg.planes_train if self.training else self.cfg.planes_eval)
        return self.render_mpi(self.synthesize(ws, n_planes, noise_mode), cam2world, intrinsics, **render_kwargs)

    def render_mpi(self, mpi: dict[str, torch.Tensor], cam2world: torch.Tensor, intrinsics: torch.Tensor | None = None,
                   return_planes: bool = False) -> dict[str, torch.Tensor]:
        """Render an MPI from :meth:`synthesize` (B latents) from ``cam2world`` [B * V, 4, 4].
        Returns image [B * V, 3, R, R] in [-1, 1], depth, alpha_acc, weights, the MPI itself, the
        cameras used (``k_src`` [P, 3, 3] per plane and ``k_tgt`` in pixels, ``src_cam2world``) and,
        with ``return_planes``, each pixel's per-plane texture coordinates and colours (see
        :func:`gmnr.render.mpi.render_mpi`)."""
        res = self.cfg.resolution
        rgb, background, alpha, depths = mpi["rgb"], mpi["background"], mpi["alpha"], mpi["depths"]
        views = cam2world.shape[0] // rgb.shape[0]
        assert cam2world.shape[0] == views * rgb.shape[0], \
            f"cam2world batch {cam2world.shape[0]} must be a multiple of the latent batch {rgb.shape[0]}"
        if views > 1:  # several views of each MPI (latent-major order): synthesise once, render many
            rgb, background, alpha = (t.repeat_interleave(views, 0) for t in (rgb, background, alpha))
        k_src = self.texture_intrinsics(alpha.shape[1], rgb.device)
        if intrinsics is None:
            k_tgt = self.canonical_intrinsics(rgb.device)
        else:
            k_tgt = intrinsics.clone()
            k_tgt[..., :2, :] = k_tgt[..., :2, :] * res
        src = self.canonical_cam2world.to(rgb.device)
        out = render_mpi(rgb, alpha, depths, src, k_src[None], cam2world, k_tgt, (res, res), return_planes,
                         background=background)
        image = out.pop("rgb")
        return {"image": image, **out, "alpha": mpi["alpha"], "mpi_rgb": mpi["rgb"], "mpi_background": mpi["background"],
                "plane_depths": depths, "k_src": k_src, "k_tgt": k_tgt, "src_cam2world": src}
