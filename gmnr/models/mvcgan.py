"""MVCGAN generator (Zhang et al., CVPR 2022): a pi-GAN radiance field rendered at low resolution
and a 2D AdaIN decoder that upsamples its feature image to the output resolution.

* Mapping: z -> w (StyleGAN2's :class:`MappingNetwork`, trained at ``mapping_lr_multiplier`` times
  the generator's learning rate, as pi-GAN's mapping network), broadcast to one w per FiLM layer and
  per decoder AdaIN; a per-layer affine turns w into FiLM frequencies ``freq_scale * f + freq_bias``
  and phases.
* Radiance field: a FiLM-SIREN MLP ``h <- sin(freq * (W h + b) + phase)`` on the sample's position
  (normalised so the [near, far] depth range spans [-1, 1]); density from a linear head on the last
  hidden layer, features from a FiLM-SIREN colour layer on [view direction, h] and a linear head.
  The first 3 feature channels pass a sigmoid: they are the low-resolution RGB image in [0, 1].
* Volume rendering (:mod:`gmnr.render.volume`) of density and features at the stage's ray
  resolution, sampling between the camera family's near and far planes.
* Decoder: a 1x1 input layer, then per doubling of resolution an upsampling block (bilinear x2,
  two 3x3 convs, each followed by AdaIN on w and leaky ReLU) whose ToRGB is added to the upsampled
  image of the previous resolution (skip architecture, starting from the rendered RGB); a new
  resolution's ToRGB fades in (progressive growing).

The training stage (output/ray resolution, fade, density-noise std) lives in persistent buffers set
by :meth:`MVCGANGenerator.set_stage`, so the EMA copy and ``final.pt`` render what training
reached. Shapes derive from the config; none is hard-coded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gmnr.models.stylegan2 import Conv2dLayer, FullyConnectedLayer, MappingNetwork
from gmnr.render.camera import intrinsics_from_fov
from gmnr.render.volume import camera_rays, composite, stratified_depths

Tensor = torch.Tensor

SIREN_INIT_FREQ = 25.0  # pi-GAN's frequency_init(25) for hidden SIREN layers
FILM_INIT_GAIN = 0.25  # pi-GAN scales its mapping output layer's initial weights by 0.25
LEAKY_SLOPE = 0.2


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class MVCGANConfig:
    resolution: int  # the largest output resolution (the packed data's)
    ray_resolution: int  # rays per side when no stage has been set (the curriculum's last stage)
    min_ray_resolution: int  # the smallest ray resolution of the curriculum (decoder depth)
    z_dim: int = 256
    w_dim: int = 256
    mapping_layers: int = 3
    mapping_lr_multiplier: float = 0.05
    siren_layers: int = 8
    siren_hidden: int = 256
    freq_scale: float = 15.0
    freq_bias: float = 30.0
    feature_dim: int = 32
    samples_per_ray: int = 24
    decoder_channels: int = 256
    fov_deg: float = 12.0
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    depth_range: tuple[float, float] = (0.88, 1.12)

    def __post_init__(self):
        for name in ("resolution", "ray_resolution", "min_ray_resolution"):
            _require(_is_pow2(getattr(self, name)), f"MVCGANConfig.{name} must be a power of two, got {getattr(self, name)}")
        _require(self.min_ray_resolution <= self.ray_resolution <= self.resolution,
                 f"need min_ray_resolution <= ray_resolution <= resolution, got {self.min_ray_resolution}, "
                 f"{self.ray_resolution}, {self.resolution}")
        _require(self.feature_dim >= 3, f"feature_dim must be >= 3 (RGB + features), got {self.feature_dim}")


# --------------------------------------------------------------------------------------------
# Radiance field
# --------------------------------------------------------------------------------------------

class FiLMSiren(nn.Module):
    """``sin(freq * (W x + b) + phase)`` with per-sample FiLM frequency/phase [N, out]; x [N, P, in]."""

    def __init__(self, in_features: int, out_features: int, first: bool):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        # pi-GAN init: the first layer sees raw coordinates (bound 1/in); later layers are scaled so
        # that sin's argument stays O(1) under the large FiLM frequencies (bound sqrt(6/in)/25).
        bound = 1.0 / in_features if first else math.sqrt(6.0 / in_features) / SIREN_INIT_FREQ
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: Tensor, freq: Tensor, phase: Tensor) -> Tensor:
        return torch.sin(freq[:, None] * self.linear(x) + phase[:, None])


class RadianceField(nn.Module):
    """FiLM-SIREN: positions [N, P, 3], unit directions [N, P, 3], FiLM [N, L + 1, 2, hidden]
    -> density [N, P], features [N, P, feature_dim] (first 3 in [0, 1])."""

    def __init__(self, layers: int, hidden: int, feature_dim: int):
        super().__init__()
        self.layers, self.hidden, self.feature_dim = layers, hidden, feature_dim
        self.siren = nn.ModuleList([FiLMSiren(3 if i == 0 else hidden, hidden, first=i == 0) for i in range(layers)])
        self.density = nn.Linear(hidden, 1)
        self.colour_film = FiLMSiren(hidden + 3, hidden, first=False)
        self.colour = nn.Linear(hidden, feature_dim)

    @property
    def num_film(self) -> int:
        return self.layers + 1

    def forward(self, points: Tensor, dirs: Tensor, film: Tensor) -> tuple[Tensor, Tensor]:
        n, p, _ = points.shape
        _require(dirs.shape == points.shape and film.shape == (n, self.num_film, 2, self.hidden),
                 f"RadianceField: points {tuple(points.shape)}, dirs {tuple(dirs.shape)}, film {tuple(film.shape)}; "
                 f"expected film [{n}, {self.num_film}, 2, {self.hidden}]")
        h = points
        for i, layer in enumerate(self.siren):
            h = layer(h, film[:, i, 0], film[:, i, 1])
        sigma = self.density(h)[..., 0]
        c = self.colour_film(torch.cat([dirs, h], dim=-1), film[:, -1, 0], film[:, -1, 1])
        feats = self.colour(c)
        feats = torch.cat([torch.sigmoid(feats[..., :3]), feats[..., 3:]], dim=-1)
        return sigma, feats


class FiLMAffine(nn.Module):
    """w [N, num_film, w_dim] -> FiLM parameters [N, num_film, 2, hidden] (frequency, phase)."""

    def __init__(self, num_film: int, w_dim: int, hidden: int, freq_scale: float, freq_bias: float, lr_multiplier: float):
        super().__init__()
        self.num_film, self.hidden = num_film, hidden
        self.freq_scale, self.freq_bias = freq_scale, freq_bias
        self.affines = nn.ModuleList([FullyConnectedLayer(w_dim, 2 * hidden, lr_multiplier=lr_multiplier)
                                      for _ in range(num_film)])
        with torch.no_grad():
            for a in self.affines:
                a.weight.mul_(FILM_INIT_GAIN)

    def forward(self, ws: Tensor) -> Tensor:
        out = torch.stack([a(ws[:, i]) for i, a in enumerate(self.affines)], dim=1)
        out = out.reshape(ws.shape[0], self.num_film, 2, self.hidden)
        return torch.stack([self.freq_scale * out[:, :, 0] + self.freq_bias, out[:, :, 1]], dim=2)


# --------------------------------------------------------------------------------------------
# 2D decoder
# --------------------------------------------------------------------------------------------

class AdaIN(nn.Module):
    """Instance-normalise x [N, C, H, W], then scale (1 + a(w)) and shift b(w)."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.affine = FullyConnectedLayer(w_dim, 2 * channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        scale, shift = self.affine(w)[:, :, None, None].chunk(2, dim=1)
        return F.instance_norm(x) * (1 + scale) + shift


class UpBlock(nn.Module):
    """Bilinear x2 upsampling, then two (3x3 conv, AdaIN, leaky ReLU); reads two w."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        # Replicate padding: zero padding makes border pixels differ from the interior, which the
        # generator turns into bright frames around every image.
        self.conv0, self.conv1 = (nn.Conv2d(channels, channels, 3, padding=1, padding_mode="replicate")
                                  for _ in range(2))
        self.norm0, self.norm1 = AdaIN(channels, w_dim), AdaIN(channels, w_dim)
        self.to_rgb = Conv2dLayer(channels, 3, 1)

    def forward(self, x: Tensor, w0: Tensor, w1: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.leaky_relu(self.norm0(self.conv0(x), w0), LEAKY_SLOPE)
        return F.leaky_relu(self.norm1(self.conv1(x), w1), LEAKY_SLOPE)


class AdaINDecoder(nn.Module):
    """Rendered features [N, F, r, r] and the rendered RGB [N, 3, r, r] in [-1, 1] -> image
    [N, 3, R, R]. Skip architecture: every doubling adds its ToRGB to the bilinearly upsampled image
    of the previous resolution, starting from the rendered RGB, so the 3D-consistent rendering stays
    the image's base and the decoder adds detail. The newest resolution's ToRGB is faded in:
    ``up(image at R/2) + fade * ToRGB_R``, so fade 0 shows exactly the previous stage's image."""

    def __init__(self, feature_dim: int, channels: int, w_dim: int, min_input: int, max_output: int):
        super().__init__()
        self.channels = channels
        self.resolutions = [2 ** k for k in range(int(math.log2(min_input)) + 1, int(math.log2(max_output)) + 1)]
        self.from_features = Conv2dLayer(feature_dim, channels, 1, activation="lrelu")
        self.blocks = nn.ModuleDict({str(r): UpBlock(channels, w_dim) for r in self.resolutions})

    @property
    def num_ws(self) -> int:
        return 2 * len(self.resolutions)

    def forward(self, features: Tensor, rgb: Tensor, ws: Tensor, resolution: int, fade: float) -> Tensor:
        r = features.shape[-1]
        _require(rgb.shape[-2:] == features.shape[-2:] and ws.shape[1] == self.num_ws,
                 f"AdaINDecoder: features {tuple(features.shape)}, rgb {tuple(rgb.shape)}, ws {tuple(ws.shape)}")
        if resolution == r:
            return rgb
        _require(str(resolution) in self.blocks and resolution > r and _is_pow2(resolution // r),
                 f"decoder cannot go from {r} to {resolution} (built for {self.resolutions})")
        x = self.from_features(features)
        image = rgb
        while x.shape[-1] < resolution:
            res = 2 * x.shape[-1]
            i = 2 * self.resolutions.index(res)
            block = self.blocks[str(res)]
            x = block(x, ws[:, i], ws[:, i + 1])
            gain = fade if res == resolution else 1.0
            image = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False) + gain * block.to_rgb(x)
        return image


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------

class MVCGANGenerator(nn.Module):
    def __init__(self, cfg: MVCGANConfig):
        super().__init__()
        self.cfg = cfg
        self.field = RadianceField(cfg.siren_layers, cfg.siren_hidden, cfg.feature_dim)
        self.decoder = AdaINDecoder(cfg.feature_dim, cfg.decoder_channels, cfg.w_dim, cfg.min_ray_resolution,
                                    cfg.resolution)
        self.num_film = self.field.num_film
        self.z_dim, self.w_dim = cfg.z_dim, cfg.w_dim
        self.num_ws = self.num_film + self.decoder.num_ws
        self.mapping = MappingNetwork(cfg.z_dim, 0, cfg.w_dim, self.num_ws, num_layers=cfg.mapping_layers,
                                      lr_multiplier=cfg.mapping_lr_multiplier)
        self.film = FiLMAffine(self.num_film, cfg.w_dim, cfg.siren_hidden, cfg.freq_scale, cfg.freq_bias,
                               cfg.mapping_lr_multiplier)
        # The training stage: persistent, so G_ema (whose buffers the trainer copies) and final.pt
        # render at the resolution training reached.
        self.register_buffer("stage_resolution", torch.tensor(cfg.resolution))
        self.register_buffer("stage_ray_resolution", torch.tensor(cfg.ray_resolution))
        self.register_buffer("stage_fade", torch.tensor(1.0))
        self.register_buffer("density_noise", torch.tensor(0.0))

    # -- stage --------------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return int(self.stage_resolution)

    @property
    def ray_resolution(self) -> int:
        return int(self.stage_ray_resolution)

    def set_stage(self, resolution: int, ray_resolution: int, fade: float = 1.0, density_noise: float = 0.0) -> None:
        """Output and ray resolution, fade-in of the newest decoder resolution in [0, 1], and the
        std of the noise added to densities when rendering with noise_mode='random'."""
        ok = (_is_pow2(resolution) and _is_pow2(ray_resolution) and self.cfg.min_ray_resolution <= ray_resolution
              <= resolution <= self.cfg.resolution)
        _require(ok, f"stage resolution {resolution} / rays {ray_resolution}: need powers of two with "
                     f"{self.cfg.min_ray_resolution} <= rays <= resolution <= {self.cfg.resolution}")
        _require(0.0 <= fade <= 1.0 and density_noise >= 0, f"fade must be in [0, 1] and density_noise >= 0, "
                                                            f"got {fade}, {density_noise}")
        self.stage_resolution.fill_(resolution)
        self.stage_ray_resolution.fill_(ray_resolution)
        self.stage_fade.fill_(fade)
        self.density_noise.fill_(density_noise)

    # -- cameras ------------------------------------------------------------------------------
    def canonical_intrinsics(self, device=None) -> Tensor:
        """Pixel intrinsics [3, 3] of the output image (the stage's resolution)."""
        return intrinsics_from_fov(self.cfg.fov_deg, self.resolution).to(device)

    def ray_intrinsics(self, n: int, intrinsics: Tensor | None, device) -> Tensor:
        """Pixel intrinsics at the ray resolution: [1, 3, 3] (the family's fov) or [n, 3, 3] from
        normalised ``intrinsics`` (the dataset's label form)."""
        r = self.ray_resolution
        if intrinsics is None:
            return intrinsics_from_fov(self.cfg.fov_deg, r).to(device)[None]
        k = intrinsics.reshape(-1, 3, 3).to(device=device, dtype=torch.float32).clone()
        _require(k.shape[0] in (1, n), f"intrinsics batch {k.shape[0]} must be 1 or {n}")
        k[:, :2] = k[:, :2] * r
        return k

    # -- rendering ----------------------------------------------------------------------------
    def render_rays(self, ws: Tensor, cam2world: Tensor, intrinsics: Tensor | None = None,
                    noise_mode: str = "const") -> dict[str, Tensor]:
        """Volume-render ``ws`` [B, num_ws, w_dim] from ``cam2world`` [B * V, 4, 4] (V views per
        latent, latent-major) at the ray resolution r. Returns ``features`` [B * V, F, r, r] (the
        first 3 channels: RGB in [0, 1]), ``image_raw`` [B * V, 3, r, r] in [-1, 1], ``depth_raw``
        [B * V, 1, r, r] (camera z), ``opacity_raw`` and ``k_rays`` (pixel intrinsics at r,
        [1 or B * V, 3, 3]). ``noise_mode='random'`` jitters the samples and adds density noise."""
        b = ws.shape[0]
        _require(ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim),
                 f"ws must be [B, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        n = cam2world.shape[0]
        _require(cam2world.shape[1:] == (4, 4) and n % b == 0,
                 f"cam2world must be [B * V, 4, 4] with B = {b}, got {tuple(cam2world.shape)}")
        ws = ws.repeat_interleave(n // b, 0)
        r, s = self.ray_resolution, self.cfg.samples_per_ray
        near, far = self.cfg.depth_range
        random = noise_mode == "random"
        k = self.ray_intrinsics(n, intrinsics, ws.device)
        origins, dirs, cos = camera_rays(cam2world.float(), k, r, r)  # [N, r, r, 3], [N, r, r]
        z = stratified_depths(near, far, s, (n, r, r), perturb=random, device=ws.device)
        t = z / cos[..., None]  # distance along the unit ray to camera depth z
        points = origins[..., None, :] + dirs[..., None, :] * t[..., None]  # [N, r, r, S, 3]
        center = torch.as_tensor(self.cfg.center, device=ws.device, dtype=points.dtype)
        points = (points - center) * (2.0 / (far - near))  # the depth range spans [-1, 1] (pi-GAN's box warp)
        view = dirs[..., None, :].expand_as(points)
        noise = float(self.density_noise) if random else 0.0
        # The field stays in float32 under autocast: sin of FiLM frequencies ~30-100 times O(1)
        # arguments is meaningless at bfloat16's 8-bit mantissa.
        with torch.autocast(ws.device.type, enabled=False):
            film = self.film(ws[:, :self.num_film].float())
            sigma, feats = self.field(points.reshape(n, -1, 3), view.reshape(n, -1, 3), film)
            out = composite(sigma.reshape(n, r, r, s), feats.reshape(n, r, r, s, -1), t, noise_std=noise)
        features = out["values"].permute(0, 3, 1, 2)
        depth = (out["depth"] * cos)[:, None]  # along-ray distance -> camera z
        return {"features": features, "image_raw": features[:, :3] * 2 - 1, "depth_raw": depth,
                "opacity_raw": out["opacity"][:, None], "k_rays": k}

    def decode(self, ws: Tensor, features: Tensor) -> Tensor:
        """Rendered features [B * V, F, r, r] -> image [B * V, 3, R, R] at the stage's resolution."""
        n = features.shape[0]
        ws = ws.repeat_interleave(n // ws.shape[0], 0)
        return self.decoder(features, features[:, :3] * 2 - 1, ws[:, self.num_film:], self.resolution,
                            float(self.stage_fade))

    def render(self, ws: Tensor, cam2world: Tensor, intrinsics: Tensor | None = None, n_planes: int | None = None,
               noise_mode: str = "const") -> dict[str, Tensor]:
        """The generator protocol (see :class:`gmnr.models.gmpi.GMPIGenerator.render`): image
        [B * V, 3, R, R] in [-1, 1] and depth [B * V, 1, R, R] (camera z) at the stage's output
        resolution R, plus the low-resolution rendering (``render_rays``). ``n_planes`` is ignored
        (there are no planes)."""
        out = self.render_rays(ws, cam2world, intrinsics, noise_mode)
        image = self.decode(ws, out["features"])
        depth = F.interpolate(out["depth_raw"], size=image.shape[-2:], mode="bilinear", align_corners=False)
        return {"image": image, "depth": depth, **out}

    def forward(self, z: Tensor, cam2world: Tensor, intrinsics: Tensor | None = None, truncation_psi: float = 1.0,
                n_planes: int | None = None, noise_mode: str = "const") -> dict[str, Tensor]:
        _require(z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [B, {self.z_dim}], got {tuple(z.shape)}")
        ws = self.mapping(z, None, truncation_psi=truncation_psi)
        return self.render(ws, cam2world, intrinsics, n_planes, noise_mode)
