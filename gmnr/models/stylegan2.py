"""StyleGAN2 generator and conditional discriminator in plain PyTorch.

Why this module exists: GMPI and GMNR start from the NVlabs stylegan2-ada-pytorch checkpoints, but
that code base needs compiled CUDA extensions and pickles its own source code into the
checkpoints. This is a from-scratch re-implementation that runs on CPU and CUDA without
extensions. Its parameter and buffer names and shapes are those of the NVlabs
`training/networks.py` (e.g. ``mapping.fc0.weight``, ``synthesis.b8.conv0.noise_const``,
``b4.out.bias``), and the arithmetic follows the StyleGAN2 paper and the NVlabs conventions
(equalised learning rate, [1,3,3,1] FIR resampling with the same padding and gain, true
convolution in the up-sampling layers), so a pretrained state dict maps one-to-one
(see :mod:`gmnr.models.pretrained`).

This module holds the networks (mapping, synthesis, discriminator); the ops they are built from
(bias_act, upfirdn2d, conv2d_resample, modulated_conv2d, the equalised-lr layers) are in
:mod:`gmnr.models.stylegan2_ops` and re-exported here.

Every size comes from constructor arguments; nothing assumes 256 pixels or 512 channels.
Tensors are checked at module boundaries so that a wrong shape fails with a message naming the
module and the expected layout instead of deep inside a convolution.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

# The ops are re-exported: callers import them from here as well as from stylegan2_ops.
from gmnr.models.stylegan2_ops import (ACTIVATION_GAINS, DEFAULT_FILTER, Conv2dLayer, FullyConnectedLayer,
                                       assert_shape, bias_act, conv2d_resample, downsample2d, is_power_of_two,
                                       modulated_conv2d, normalize_2nd_moment, setup_filter, upfirdn2d, upsample2d)

__all__ = [
    "normalize_2nd_moment", "bias_act", "setup_filter", "upfirdn2d", "upsample2d", "downsample2d",
    "conv2d_resample", "modulated_conv2d", "FullyConnectedLayer", "Conv2dLayer", "MappingNetwork",
    "SynthesisLayer", "ToRGBLayer", "SynthesisBlock", "SynthesisNetwork", "Generator",
    "DiscriminatorBlock", "MinibatchStdLayer", "DiscriminatorEpilogue", "Discriminator",
]


# ---------------------------------------------------------------------------------------------
# Mapping network.

class MappingNetwork(nn.Module):
    """z (and optional label c) -> w, broadcast to `num_ws` style vectors.

    Tracks the running mean `w_avg` during training so that sampling can apply the truncation
    trick (w' = w_avg + psi (w - w_avg)) on the first `truncation_cutoff` styles.
    With z_dim=0 and num_ws=None it is the discriminator's label embedding.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None, activation: str = "lrelu",
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        if z_dim == 0 and c_dim == 0:
            raise ValueError("MappingNetwork needs z_dim > 0 or c_dim > 0")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = True) -> torch.Tensor:
        """Returns [B, num_ws, w_dim] (or [B, w_dim] when num_ws is None)."""
        parts = []
        if self.z_dim > 0:
            assert_shape(z, [None, self.z_dim], "MappingNetwork z [B, z_dim]")
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            assert_shape(c, [None, self.c_dim], "MappingNetwork c [B, c_dim]")
            if parts and c.shape[0] != parts[0].shape[0]:
                raise ValueError(f"MappingNetwork: z has batch {parts[0].shape[0]} but c has batch {c.shape[0]}")
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if self.w_avg_beta is not None and hasattr(self, "w_avg") and self.training and update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise RuntimeError("truncation needs w_avg tracking (num_ws and w_avg_beta not None)")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                cut = min(int(truncation_cutoff), self.num_ws)
                x = torch.cat([self.w_avg.lerp(x[:, :cut], truncation_psi), x[:, cut:]], dim=1)
        return x


# ---------------------------------------------------------------------------------------------
# Synthesis network.

NOISE_MODES = ("random", "const", "none")


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally upsampling x2) + per-pixel noise + bias + lrelu.

    Noise gives the generator a source of stochastic detail (hair, pores); `noise_const` is a
    fixed noise image so that evaluation and tests can be deterministic ('const').
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[float] = DEFAULT_FILTER, conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATION_GAINS[activation]

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0) -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        in_res = self.resolution // self.up
        assert_shape(x, [None, self.in_channels, in_res, in_res], f"SynthesisLayer@{self.resolution} input")
        assert_shape(w, [x.shape[0], self.w_dim], f"SynthesisLayer@{self.resolution} w [B, w_dim]")
        styles = self.affine(w)

        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device,
                                dtype=x.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, resolution={self.resolution}, up={self.up}"


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation (the output scale is
    meaningful: it is a colour contribution added to the skip image)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        assert_shape(x, [None, self.in_channels, None, None], "ToRGBLayer input")
        assert_shape(w, [x.shape[0], self.w_dim], "ToRGBLayer w [B, w_dim]")
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv,
                             padding=self.weight.shape[-1] // 2)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' generator: (const | conv0 with x2 upsampling), conv1, torgb.

    The RGB image is accumulated across resolutions: the previous image is FIR-upsampled and
    this block's ToRGB output added, so every resolution contributes directly to the output.
    Consumes `num_conv + num_torgb` consecutive styles.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[float] = DEFAULT_FILTER,
                 conv_clamp: float | None = None, use_fp16: bool = False, **layer_kwargs):
        super().__init__()
        if architecture != "skip":
            raise ValueError(f"only the 'skip' generator architecture is implemented, got {architecture!r}")
        del use_fp16  # Accepted for config compatibility with NVlabs; this implementation runs in fp32.
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str = "const",
                fused_modconv: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], f"SynthesisBlock@{self.resolution} ws")
        batch = ws.shape[0]
        if fused_modconv is None:
            fused_modconv = not self.training
        w_iter = iter(ws.unbind(dim=1))

        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([batch, 1, 1, 1])
        else:
            half = self.resolution // 2
            assert_shape(x, [batch, self.in_channels, half, half], f"SynthesisBlock@{self.resolution} x")
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)

        if img is not None:
            half = self.resolution // 2
            assert_shape(img, [batch, self.img_channels, half, half], f"SynthesisBlock@{self.resolution} img")
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)
        img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """Stack of SynthesisBlocks from 4x4 to `img_resolution`, channels min(channel_base/res, channel_max).

    `ws_slices[res] = (start, count)` says which styles each block reads; consecutive blocks
    share one style (block r's ToRGB style is block 2r's conv0 style), hence
    num_ws = 2 log2(R) - 2. `forward(..., return_features=True)` also returns every block's
    feature map, which GMPI's alpha branch builds on.
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int = 3, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, **block_kwargs):
        super().__init__()
        if img_resolution < 4 or not is_power_of_two(img_resolution):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        del num_fp16_res  # Accepted for NVlabs config compatibility; everything runs in fp32 here.
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        self.channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        if min(self.channels_dict.values()) < 1:
            raise ValueError(f"channel_base={channel_base} gives zero channels at {img_resolution}px")

        self.ws_slices: dict[int, tuple[int, int]] = {}
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = self.channels_dict[res // 2] if res > 4 else 0
            is_last = res == img_resolution
            block = SynthesisBlock(in_channels, self.channels_dict[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, **block_kwargs)
            self.ws_slices[res] = (self.num_ws, block.num_conv + block.num_torgb)
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def split_ws(self, ws: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per-block views of ws: {res: [B, num_conv + num_torgb, w_dim]}."""
        assert_shape(ws, [None, self.num_ws, self.w_dim], "SynthesisNetwork ws [B, num_ws, w_dim]")
        return {res: ws.narrow(1, start, count) for res, (start, count) in self.ws_slices.items()}

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", return_features: bool = False,
                fused_modconv: bool | None = None):
        """ws [B, num_ws, w_dim] -> img [B, img_channels, R, R] (and {res: [B, C_res, res, res]})."""
        block_ws = self.split_ws(ws.to(torch.float32))
        x = img = None
        features: dict[int, torch.Tensor] = {}
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, block_ws[res], noise_mode=noise_mode,
                                               fused_modconv=fused_modconv)
            features[res] = x
        return (img, features) if return_features else img


class Generator(nn.Module):
    """Mapping network + synthesis network, named as in NVlabs (`mapping.*`, `synthesis.*`)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int = 3,
                 mapping_kwargs: dict | None = None, synthesis_kwargs: dict | None = None):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **(synthesis_kwargs or {}))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const", return_features: bool = False,
                fused_modconv: bool | None = None):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, return_features=return_features,
                              fused_modconv=fused_modconv)


# ---------------------------------------------------------------------------------------------
# Discriminator.

class DiscriminatorBlock(nn.Module):
    """Residual discriminator block: (fromrgb at the first block), conv0 3x3, conv1 3x3 with x2
    FIR downsampling, plus a 1x1 downsampling skip; both branches are scaled by sqrt(1/2) so the
    sum keeps unit variance."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", activation: str = "lrelu",
                 resample_filter: Sequence[float] = DEFAULT_FILTER, conv_clamp: float | None = None,
                 use_fp16: bool = False):
        super().__init__()
        if architecture != "resnet":
            raise ValueError(f"only the 'resnet' discriminator architecture is implemented, got {architecture!r}")
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"in_channels must be 0 (first block) or tmp_channels={tmp_channels}, got {in_channels}")
        del use_fp16  # NVlabs config compatibility; fp32 only.
        self.in_channels = in_channels
        self.tmp_channels = tmp_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 resample_filter=resample_filter, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        res = self.resolution
        if self.in_channels == 0:
            assert_shape(img, [None, self.img_channels, res, res], f"DiscriminatorBlock@{res} img")
            x = self.fromrgb(img.to(torch.float32))
        else:
            assert_shape(x, [None, self.in_channels, res, res], f"DiscriminatorBlock@{res} x")
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class MinibatchStdLayer(nn.Module):
    """Appends the mean standard deviation over groups of samples as extra feature maps, letting
    the discriminator see batch-level diversity and penalise mode collapse."""

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, None, None, None], "MinibatchStdLayer input [B, C, H, W]")
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        f = self.num_channels
        if n % g != 0:
            raise ValueError(f"MinibatchStdLayer: batch {n} is not divisible by group size {g}")
        if c % f != 0:
            raise ValueError(f"MinibatchStdLayer: {c} channels not divisible into {f} groups")
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n/g, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch-std, conv, fc, out; with conditioning, `out` produces a cmap_dim
    vector whose projection onto the embedded label is the logit (Miyato & Koyama 2018)."""

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", mbstd_group_size: int | None = 4, mbstd_num_channels: int = 1,
                 activation: str = "lrelu", conv_clamp: float | None = None):
        super().__init__()
        if architecture != "resnet":
            raise ValueError(f"only the 'resnet' discriminator architecture is implemented, got {architecture!r}")
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        res = self.resolution
        assert_shape(x, [None, self.in_channels, res, res], "DiscriminatorEpilogue x")
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            assert_shape(cmap, [x.shape[0], self.cmap_dim], "DiscriminatorEpilogue cmap [B, cmap_dim]")
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class LabelProjection(nn.Module):
    """GMPI's label embedding of a conditioned discriminator: one plain ``nn.Linear(c_dim, cmap_dim)``
    followed by normalize_2nd_moment (apple/ml-gmpi ``networks_cond_on_pos_enc.py:Discriminator``,
    ``D_stylegan2_ori_mapping: False``), not NVlabs' 8-layer label mapping network.

    Initialised so that the conditioned discriminator starts *exactly* as the unconditional one it
    is copied from, for every label: weight 0 and a bias whose normalised vector n has
    sum(n) / sqrt(cmap_dim) = 1, so with the output rows all equal to the pretrained logit row,
    (out * n).sum() / sqrt(cmap_dim) is the pretrained logit. (The published code keeps
    PyTorch's random init here, so its D starts as the pretrained D times a random factor of the
    camera that can be negative; gradients still reach the weight, so the camera dependence is
    learned from the first step.)"""

    def __init__(self, c_dim: int, cmap_dim: int):
        super().__init__()
        self.c_dim, self.cmap_dim = c_dim, cmap_dim
        self.linear = nn.Linear(c_dim, cmap_dim)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(self.neutral_embedding(cmap_dim))

    @staticmethod
    def neutral_embedding(k: int) -> torch.Tensor:
        """A vector with mean square 1 (a fixed point of normalize_2nd_moment) and sum sqrt(k):
        1 / sqrt(k) along the all-ones direction plus sqrt(k - 1) along a unit vector orthogonal to it."""
        n = torch.full((k,), 1 / math.sqrt(k))
        if k > 1:
            e = torch.zeros(k)
            e[0], e[1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
            n = n + math.sqrt(k - 1) * e
        return n

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        assert_shape(c, [None, self.c_dim], "LabelProjection c [B, c_dim]")
        return normalize_2nd_moment(self.linear(c.to(self.linear.weight.dtype)))


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator, conditioned by projection on a label `c`.

    For the 3D-aware GANs c is the camera (flattened 4x4 world-to-camera matrix, c_dim=16), so
    the discriminator judges whether the image is real *for that viewpoint*; the label goes
    through :class:`LabelProjection` to cmap_dim. Returns logits [B, 1].
    """

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int = 3, architecture: str = "resnet",
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 0,
                 conv_clamp: float | None = None, cmap_dim: int | None = None, block_kwargs: dict | None = None,
                 epilogue_kwargs: dict | None = None):
        super().__init__()
        if img_resolution < 8 or not is_power_of_two(img_resolution):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        del num_fp16_res  # NVlabs config compatibility; fp32 only.
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        self.channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        if min(self.channels_dict.values()) < 1:
            raise ValueError(f"channel_base={channel_base} gives zero channels at {img_resolution}px")
        cmap_dim = (self.channels_dict[4] if cmap_dim is None else cmap_dim) if c_dim > 0 else 0
        self.cmap_dim = cmap_dim

        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        for res in self.block_resolutions:
            in_channels = self.channels_dict[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_channels, self.channels_dict[res], self.channels_dict[res // 2],
                                       resolution=res, **(block_kwargs or {}), **common)
            setattr(self, f"b{res}", block)
        if c_dim > 0:
            self.mapping = LabelProjection(c_dim, cmap_dim)
        self.b4 = DiscriminatorEpilogue(self.channels_dict[4], cmap_dim=cmap_dim, resolution=4,
                                        **(epilogue_kwargs or {}), **common)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        res = self.img_resolution
        assert_shape(img, [None, self.img_channels, res, res], "Discriminator img [B, C, R, R]")
        x = None
        for r in self.block_resolutions:
            x = getattr(self, f"b{r}")(x, img)
        cmap = None
        if self.c_dim > 0:
            assert_shape(c, [img.shape[0], self.c_dim], "Discriminator c [B, c_dim]")
            cmap = self.mapping(c)
        return self.b4(x, cmap)
