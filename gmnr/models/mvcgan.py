"""MVCGAN generator (Zhang et al., CVPR 2022) as published: a pi-GAN FiLM-SIREN radiance field
whose features are volume-rendered at low resolution, and GNet, a 2D AdaIN decoder whose ToRGB is
the image (Xuanmeng-Zhang/MVCGAN ``siren/siren.py: SPATIALSIRENBASELINE``,
``generators/generators.py: ImplicitGenerator3d``, ``generators/refinegan.py: GNet``).

* Mapping (pi-GAN's ``CustomMappingNetwork``): z -> ``mapping_layers`` x (linear, leaky ReLU) ->
  one linear layer giving every FiLM layer's raw frequencies and phases. The last hidden layer is
  the *code* the decoder's AdaIN layers read. Plain linear layers, trained at the generator's
  learning rate. :meth:`PiGANMapping.forward` returns ``[code, frequencies, phases]`` as one
  vector ``[B, 1, code_dim]``, so it fits the project's ``mapping -> render`` protocol.
* Field: points are scaled by ``2 / box_side`` (pi-GAN's UniformBoxWarp), then ``siren_layers``
  FiLM-SIREN layers ``h <- sin((freq_scale f + freq_bias) * (W h + b) + phase)``; density is a
  linear head on h; the *features* are one more FiLM-SIREN layer on [view direction, h]
  (``siren_hidden`` wide: the 256-d features that are rendered); RGB is a linear head on the
  features with a sigmoid.
* Rendering (:mod:`gmnr.render.volume`): ``samples_per_ray`` samples between ``ray_range`` (distances
  along each ray, pi-GAN's ray_start / ray_end), jittered within their bins and with density noise
  while training, composited once. The published forward pass renders these samples only: its
  ``hierarchical_sample`` flag is never read, so there are no importance samples here either.
* Decoder (GNet): leaky ReLU, AdaIN, 3x3 conv, leaky ReLU, AdaIN at the ray resolution; per doubling
  of the resolution nearest-neighbour upsampling and twice (3x3 conv, leaky ReLU, AdaIN); the
  image is the newest resolution's ToRGB, faded in over the previous resolution's ToRGB upsampled
  (bilinear, then a [1 2 1] blur). At the ray resolution itself the image is ToRGB of the first
  convolution's features. Equalised-learning-rate convolutions (He's constant), biases from 0.

The curriculum phase (output/ray resolution, fade, density-noise std) lives in persistent buffers set
by :meth:`MVCGANGenerator.set_phase`, so the EMA copy and ``final.pt`` render what training
reached. Every width derives from the config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gmnr.render.camera import intrinsics_from_fov
from gmnr.render.volume import camera_rays, composite, stratified_depths

Tensor = torch.Tensor

SIREN_INIT_FREQ = 25.0  # pi-GAN's frequency_init(25) for the SIREN's linear layers
FILM_INIT_GAIN = 0.25  # pi-GAN scales its mapping network's output layer's initial weights by 0.25
ADAIN_INIT_GAIN = 0.25  # GNet scales its AdaIN style layers' initial weights by 0.25 (biases 0)
ADAIN_EPS = 1e-8
LEAKY_SLOPE = 0.2
MEAN_CODE_SAMPLES = 10_000  # pi-GAN's generate_avg_frequencies: the truncation centre from 10,000 z
MEAN_CODE_SEED = 0


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class MVCGANConfig:
    resolution: int  # the largest output resolution (the packed data's)
    ray_resolution: int  # rays per side when no phase has been set (the curriculum's last phase)
    min_ray_resolution: int  # the smallest ray resolution of the curriculum (the decoder's first width)
    z_dim: int = 256
    w_dim: int = 256  # mapping network width = the decoder's code
    mapping_layers: int = 3
    siren_layers: int = 8
    siren_hidden: int = 256  # = the rendered feature width
    freq_scale: float = 15.0
    freq_bias: float = 30.0
    box_side: float = 0.24
    samples_per_ray: int = 16
    decoder_channels: tuple[int, ...] = (256, 256, 256, 128, 64)
    fov_deg: float = 12.0
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ray_range: tuple[float, float] = (0.88, 1.12)

    def __post_init__(self):
        for name in ("resolution", "ray_resolution", "min_ray_resolution"):
            _require(_is_pow2(getattr(self, name)), f"MVCGANConfig.{name} must be a power of two, got {getattr(self, name)}")
        _require(self.min_ray_resolution <= self.ray_resolution <= self.resolution,
                 f"need min_ray_resolution <= ray_resolution <= resolution, got {self.min_ray_resolution}, "
                 f"{self.ray_resolution}, {self.resolution}")
        needed = 1 + self.max_doublings
        _require(len(self.decoder_channels) >= needed,
                 f"decoder_channels has {len(self.decoder_channels)} widths; going from {self.min_ray_resolution} "
                 f"rays to {self.resolution} px needs {needed} (one at the ray resolution, one per doubling)")
        _require(0 < self.ray_range[0] < self.ray_range[1], f"ray_range must be 0 < start < end, got {self.ray_range}")

    @property
    def max_doublings(self) -> int:
        return int(math.log2(self.resolution // self.min_ray_resolution))


# --------------------------------------------------------------------------------------------
# Mapping network
# --------------------------------------------------------------------------------------------

class PiGANMapping(nn.Module):
    """z [B, z_dim] -> code vector [B, 1, w_dim + 2 * num_film * hidden]: the last hidden layer (the
    decoder's code), then every FiLM layer's raw frequencies, then the phases."""

    def __init__(self, z_dim: int, w_dim: int, layers: int, num_film: int, hidden: int):
        super().__init__()
        self.z_dim, self.w_dim, self.num_film, self.hidden = z_dim, w_dim, num_film, hidden
        self.hidden_layers = nn.ModuleList([nn.Linear(z_dim if i == 0 else w_dim, w_dim) for i in range(layers)])
        self.film = nn.Linear(w_dim, 2 * num_film * hidden)
        with torch.no_grad():
            for layer in (*self.hidden_layers, self.film):
                nn.init.kaiming_normal_(layer.weight, a=LEAKY_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
            self.film.weight.mul_(FILM_INIT_GAIN)

    @property
    def code_dim(self) -> int:
        return self.w_dim + 2 * self.num_film * self.hidden

    def codes(self, z: Tensor) -> Tensor:
        h = z
        for layer in self.hidden_layers:
            h = F.leaky_relu(layer(h), LEAKY_SLOPE)
        return torch.cat([h, self.film(h)], dim=-1)

    @torch.no_grad()
    def mean_code(self, device) -> Tensor:
        """pi-GAN's truncation centre: the mean code of 10,000 latents (fixed seed, so a truncated
        sample is a function of z alone)."""
        z = torch.randn(MEAN_CODE_SAMPLES, self.z_dim, generator=torch.Generator().manual_seed(MEAN_CODE_SEED))
        return self.codes(z.to(device)).mean(0)

    def forward(self, z: Tensor, c=None, truncation_psi: float = 1.0, truncation_cutoff=None,
                update_w_avg: bool = False) -> Tensor:
        """The mapping protocol of :class:`gmnr.models.stylegan2.MappingNetwork` (``c``,
        ``truncation_cutoff`` and ``update_w_avg`` have no meaning here and are ignored)."""
        _require(z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [B, {self.z_dim}], got {tuple(z.shape)}")
        code = self.codes(z)
        if truncation_psi != 1.0:
            code = torch.lerp(self.mean_code(z.device), code, truncation_psi)
        return code[:, None]

    def split(self, ws: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, 1, code_dim] -> code [B, w_dim], raw frequencies and phases [B, num_film, hidden]."""
        _require(ws.ndim == 3 and ws.shape[1:] == (1, self.code_dim),
                 f"ws must be [B, 1, {self.code_dim}], got {tuple(ws.shape)}")
        ws = ws[:, 0]
        n = self.num_film * self.hidden
        shape = (ws.shape[0], self.num_film, self.hidden)
        return ws[:, :self.w_dim], ws[:, self.w_dim:self.w_dim + n].reshape(shape), ws[:, self.w_dim + n:].reshape(shape)


# --------------------------------------------------------------------------------------------
# Radiance field
# --------------------------------------------------------------------------------------------

def _siren_linear(in_features: int, out_features: int, first: bool = False) -> nn.Linear:
    """pi-GAN's init: the first layer sees raw coordinates (weights U(+-1/in)); every other linear
    layer of the field U(+-sqrt(6/in)/25), so that sin's argument stays O(1) under the FiLM
    frequencies (~30). Biases keep nn.Linear's default, as published."""
    layer = nn.Linear(in_features, out_features)
    bound = 1.0 / in_features if first else math.sqrt(6.0 / in_features) / SIREN_INIT_FREQ
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
    return layer


class FiLMSiren(nn.Module):
    """``sin(freq * (W x + b) + phase)``; x [N, P, in], freq and phase [N, out]."""

    def __init__(self, in_features: int, out_features: int, first: bool = False):
        super().__init__()
        self.linear = _siren_linear(in_features, out_features, first)

    def forward(self, x: Tensor, freq: Tensor, phase: Tensor) -> Tensor:
        return torch.sin(freq[:, None] * self.linear(x) + phase[:, None])


class RadianceField(nn.Module):
    """SPATIALSIRENBASELINE: world points [N, P, 3], unit view directions [N, P, 3], FiLM frequencies
    (already ``freq_scale f + freq_bias``) and phases [N, layers + 1, hidden] -> density [N, P],
    RGB in [0, 1] [N, P, 3], features [N, P, hidden]."""

    def __init__(self, layers: int, hidden: int, box_side: float):
        super().__init__()
        self.layers, self.hidden, self.box_scale = layers, hidden, 2.0 / box_side
        self.siren = nn.ModuleList([FiLMSiren(3 if i == 0 else hidden, hidden, first=i == 0) for i in range(layers)])
        self.density = _siren_linear(hidden, 1)
        self.features = FiLMSiren(hidden + 3, hidden)  # on [view direction, h], as published
        self.rgb = _siren_linear(hidden, 3)

    @property
    def num_film(self) -> int:
        return self.layers + 1

    def forward(self, points: Tensor, dirs: Tensor, freqs: Tensor, phases: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, p, _ = points.shape
        film = (n, self.num_film, self.hidden)
        _require(dirs.shape == points.shape and freqs.shape == film and phases.shape == film,
                 f"RadianceField: points {tuple(points.shape)}, dirs {tuple(dirs.shape)}, freqs {tuple(freqs.shape)}, "
                 f"phases {tuple(phases.shape)}; expected FiLM [{n}, {self.num_film}, {self.hidden}]")
        h = points * self.box_scale
        for i, layer in enumerate(self.siren):
            h = layer(h, freqs[:, i], phases[:, i])
        sigma = self.density(h)[..., 0]
        features = self.features(torch.cat([dirs, h], dim=-1), freqs[:, -1], phases[:, -1])
        return sigma, torch.sigmoid(self.rgb(features)), features


# --------------------------------------------------------------------------------------------
# GNet decoder
# --------------------------------------------------------------------------------------------

class EqualizedConv2d(nn.Module):
    """Progressive GAN's equalised convolution: weights N(0, 1), bias 0, and the output (bias
    included) scaled at run time by He's constant sqrt(2 / fan_in)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.gain = math.sqrt(2.0 / (in_channels * kernel_size ** 2))
        self.padding = kernel_size // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.padding) * self.gain


class AdaIN(nn.Module):
    """Instance-normalise x [N, C, H, W] (variance + 1e-8), then ``a(code) * x + b(code)``; the style
    layer is a plain linear layer with weights x 0.25 and biases 0, as GNet's."""

    def __init__(self, code_dim: int, channels: int):
        super().__init__()
        self.style = nn.Linear(code_dim, 2 * channels)
        with torch.no_grad():
            self.style.weight.mul_(ADAIN_INIT_GAIN)
            self.style.bias.zero_()

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = (x.square().mean(dim=(2, 3), keepdim=True) - mean.square()).clamp_min(0)
        scale, shift = self.style(code)[:, :, None, None].chunk(2, dim=1)
        return scale * (x - mean) * torch.rsqrt(var + ADAIN_EPS) + shift


class DecoderScale(nn.Module):
    """One doubling: nearest x2, then twice (3x3 conv, leaky ReLU, AdaIN)."""

    def __init__(self, in_channels: int, out_channels: int, code_dim: int):
        super().__init__()
        self.conv0, self.conv1 = EqualizedConv2d(in_channels, out_channels, 3), EqualizedConv2d(out_channels, out_channels, 3)
        self.norm0, self.norm1 = AdaIN(code_dim, out_channels), AdaIN(code_dim, out_channels)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.norm0(F.leaky_relu(self.conv0(x), LEAKY_SLOPE), code)
        return self.norm1(F.leaky_relu(self.conv1(x), LEAKY_SLOPE), code)


def blur_121(x: Tensor) -> Tensor:
    """The normalised [1 2 1] x [1 2 1] blur with reflected borders (kornia ``filter2d``'s default)."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    k = (k[:, None] * k[None, :]) / 16.0
    c = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k.expand(c, 1, 3, 3), groups=c)


class GNetDecoder(nn.Module):
    """Rendered features [N, F, r, r] and codes [N, code_dim] -> image [N, 3, r * 2^k, r * 2^k].

    ``widths[0]`` is the first convolution's (at r), ``widths[i]`` that of the i-th doubling;
    ``to_rgb[i]`` reads the features after i doublings. With k doublings the image is
    ``(1 - fade) * blur(up(to_rgb[k-1])) + fade * to_rgb[k]``; with none it is ``to_rgb[0]``."""

    def __init__(self, feature_dim: int, widths: tuple[int, ...], code_dim: int):
        super().__init__()
        self.widths = tuple(widths)
        self.norm_in = AdaIN(code_dim, feature_dim)
        self.conv_in = EqualizedConv2d(feature_dim, widths[0], 3)
        self.norm_conv = AdaIN(code_dim, widths[0])
        self.scales = nn.ModuleList([DecoderScale(widths[i - 1], widths[i], code_dim) for i in range(1, len(widths))])
        self.to_rgb = nn.ModuleList([EqualizedConv2d(w, 3, 1) for w in widths])

    def forward(self, features: Tensor, code: Tensor, doublings: int, fade: float) -> Tensor:
        _require(features.ndim == 4 and code.shape == (features.shape[0], self.norm_in.style.in_features),
                 f"GNetDecoder: features {tuple(features.shape)}, code {tuple(code.shape)}")
        _require(0 <= doublings < len(self.widths), f"the decoder has {len(self.widths) - 1} doublings, "
                                                    f"asked for {doublings}")
        x = self.norm_in(F.leaky_relu(features, LEAKY_SLOPE), code)
        x = self.norm_conv(F.leaky_relu(self.conv_in(x), LEAKY_SLOPE), code)
        if doublings == 0:
            return self.to_rgb[0](x)
        for i in range(doublings):
            previous = x
            x = self.scales[i](x, code)
        skip = blur_121(F.interpolate(self.to_rgb[doublings - 1](previous), scale_factor=2, mode="bilinear",
                                      align_corners=False))
        return torch.lerp(skip, self.to_rgb[doublings](x), fade)


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------

class MVCGANGenerator(nn.Module):
    def __init__(self, cfg: MVCGANConfig):
        super().__init__()
        self.cfg = cfg
        self.field = RadianceField(cfg.siren_layers, cfg.siren_hidden, cfg.box_side)
        self.num_film = self.field.num_film
        self.mapping = PiGANMapping(cfg.z_dim, cfg.w_dim, cfg.mapping_layers, self.num_film, cfg.siren_hidden)
        self.decoder = GNetDecoder(cfg.siren_hidden, cfg.decoder_channels[:1 + cfg.max_doublings], cfg.w_dim)
        self.z_dim, self.w_dim = cfg.z_dim, cfg.w_dim
        self.num_ws = 1
        # The curriculum phase (buffers named stage_* as checkpoints hold them): persistent, so G_ema (whose buffers the trainer copies) and final.pt
        # render at the resolution training reached.
        self.register_buffer("stage_resolution", torch.tensor(cfg.resolution))
        self.register_buffer("stage_ray_resolution", torch.tensor(cfg.ray_resolution))
        self.register_buffer("stage_fade", torch.tensor(1.0))
        self.register_buffer("density_noise", torch.tensor(0.0))

    # -- curriculum phase -----------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return int(self.stage_resolution)

    @property
    def ray_resolution(self) -> int:
        return int(self.stage_ray_resolution)

    def set_phase(self, resolution: int, ray_resolution: int, fade: float = 1.0, density_noise: float = 0.0) -> None:
        """Output and ray resolution, fade-in of the newest decoder resolution in [0, 1], and the
        std of the noise added to densities when rendering with noise_mode='random'."""
        ok = (_is_pow2(resolution) and _is_pow2(ray_resolution) and self.cfg.min_ray_resolution <= ray_resolution
              <= resolution <= self.cfg.resolution
              and math.log2(resolution // ray_resolution) < len(self.decoder.widths))
        _require(ok, f"phase resolution {resolution} / rays {ray_resolution}: need powers of two with "
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
        """Pixel intrinsics at the ray resolution: [1, 3, 3] (MVCGAN's fov) or [n, 3, 3] from
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
        """Volume-render the codes ``ws`` [B, 1, code_dim] from ``cam2world`` [B * V, 4, 4] (V views
        per latent, latent-major) at the ray resolution r. Returns ``features`` [B * V, F, r, r],
        ``rgb_raw`` [B * V, 3, r, r] in [0, 1] (the field's own colour), ``image_raw`` (the same in
        [-1, 1]), ``depth_raw`` [B * V, 1, r, r] (camera z), ``opacity_raw``, ``k_rays`` (pixel
        intrinsics at r, [1 or B * V, 3, 3]), and the densities ``sigma_raw`` [B * V, r, r, S] at the
        sample distances ``t_raw`` [B * V, r, r, S] (before density noise: what the geometry is).

        ``noise_mode='random'`` (training) jitters the samples within their bins and adds density
        noise; the light no sample stops is lost (pi-GAN's ``last_back: False``). Otherwise the
        samples sit at their bin centres and that light takes the last sample's values, as the
        published evaluation renders (``eval_last_back: True``). The expected depth always puts it
        at the last sample, so a ray that passes everything ends at the far end, not at 0."""
        b = ws.shape[0]
        n = cam2world.shape[0]
        _require(cam2world.shape[1:] == (4, 4) and n % b == 0,
                 f"cam2world must be [B * V, 4, 4] with B = {b}, got {tuple(cam2world.shape)}")
        code, freqs, phases = self.mapping.split(ws)
        freqs = self.cfg.freq_scale * freqs + self.cfg.freq_bias
        views = n // b
        r, s = self.ray_resolution, self.cfg.samples_per_ray
        start, end = self.cfg.ray_range
        random = noise_mode == "random"
        k = self.ray_intrinsics(n, intrinsics, ws.device)
        origins, dirs, cos = camera_rays(cam2world.float(), k, r, r)  # [N, r, r, 3], [N, r, r]
        t = stratified_depths(start, end, s, (n, r, r), perturb=random, device=ws.device)  # along the unit ray
        points = origins[..., None, :] + dirs[..., None, :] * t[..., None]  # [N, r, r, S, 3]
        view = dirs[..., None, :].expand_as(points)
        # The field stays in float32 under autocast: sin of FiLM frequencies ~30-100 times O(1)
        # arguments is meaningless at bfloat16's 8-bit mantissa.
        with torch.autocast(ws.device.type, enabled=False):
            sigma, rgb, feats = self.field(points.reshape(n, -1, 3), view.reshape(n, -1, 3),
                                           freqs.float().repeat_interleave(views, 0),
                                           phases.float().repeat_interleave(views, 0))
            values = torch.cat([rgb, feats], dim=-1).reshape(n, r, r, s, -1)
            background = 0.0 if random else values[..., -1, :]
            out = composite(sigma.reshape(n, r, r, s), values, t,
                            noise_std=float(self.density_noise) if random else 0.0, background=background)
        rendered = out["values"].permute(0, 3, 1, 2)
        rgb_raw, features = rendered[:, :3], rendered[:, 3:]
        depth = (out["depth"] * cos)[:, None]  # expected distance along the ray -> camera z
        return {"features": features, "rgb_raw": rgb_raw, "image_raw": rgb_raw * 2 - 1, "depth_raw": depth,
                "opacity_raw": out["opacity"][:, None], "k_rays": k,
                "sigma_raw": sigma.reshape(n, r, r, s), "t_raw": t}

    def decode(self, ws: Tensor, features: Tensor) -> Tensor:
        """Rendered features [B * V, F, r, r] -> image [B * V, 3, R, R] at the stage's resolution."""
        n = features.shape[0]
        code = self.mapping.split(ws)[0].repeat_interleave(n // ws.shape[0], 0)
        doublings = int(math.log2(self.resolution // features.shape[-1]))
        _require(features.shape[-1] << doublings == self.resolution,
                 f"features of {features.shape[-1]} px cannot be decoded to {self.resolution} px")
        image = self.decoder(features, code, doublings, float(self.stage_fade))
        assert image.shape == (n, 3, self.resolution, self.resolution), image.shape
        return image

    def render(self, ws: Tensor, cam2world: Tensor, intrinsics: Tensor | None = None, n_planes: int | None = None,
               noise_mode: str = "const") -> dict[str, Tensor]:
        """The generator protocol (see :class:`gmnr.models.gmpi.GMPIGenerator.render`): image
        [B * V, 3, R, R] (GNet's output, unbounded like the published generator's) and depth
        [B * V, 1, R, R] (camera z) at the stage's output resolution R, plus the low-resolution
        rendering (``render_rays``). ``n_planes`` is ignored (there are no planes)."""
        out = self.render_rays(ws, cam2world, intrinsics, noise_mode)
        image = self.decode(ws, out["features"])
        depth = F.interpolate(out["depth_raw"], size=image.shape[-2:], mode="bilinear", align_corners=False)
        return {"image": image, "depth": depth, **out}

    def forward(self, z: Tensor, cam2world: Tensor, intrinsics: Tensor | None = None, truncation_psi: float = 1.0,
                n_planes: int | None = None, noise_mode: str = "const") -> dict[str, Tensor]:
        ws = self.mapping(z, None, truncation_psi=truncation_psi)
        return self.render(ws, cam2world, intrinsics, n_planes, noise_mode)
