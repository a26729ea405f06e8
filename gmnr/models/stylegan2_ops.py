"""StyleGAN2's low-level operations: bias + activation, FIR resampling (upfirdn2d), fused
convolution with resampling, weight modulation/demodulation, and the equalised-learning-rate
layers built on them.

Why a module of its own: these are the arithmetic that a pretrained NVlabs checkpoint was
trained with, and each must match NVlabs' CUDA ops (``bias_act``, ``upfirdn2d``,
``conv2d_resample``, ``modulated_conv2d`` of stylegan2-ada-pytorch) to the padding, gain and
kernel flip, or pretrained weights load but generate garbage. They are pure torch (CPU and CUDA,
no extensions) and hold no network structure; :mod:`gmnr.models.stylegan2` assembles the
mapping, synthesis and discriminator networks from them. Shapes are checked at every entry point
(:func:`assert_shape`) so a wrong layout fails with a message naming the op.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LRELU_SLOPE", "ACTIVATION_GAINS", "DEFAULT_FILTER", "assert_shape", "is_power_of_two", "normalize_2nd_moment",
    "bias_act", "setup_filter", "upfirdn2d", "upsample2d", "downsample2d", "conv2d_resample", "modulated_conv2d",
    "FullyConnectedLayer", "Conv2dLayer",
]

LRELU_SLOPE = 0.2
# Gains that keep the activation variance at 1 for unit-variance inputs (He et al. for lrelu,
# as StyleGAN2 uses sqrt(2) regardless of the 0.2 slope).
ACTIVATION_GAINS = {"linear": 1.0, "lrelu": math.sqrt(2.0)}
DEFAULT_FILTER = (1, 3, 3, 1)


# ---------------------------------------------------------------------------------------------
# Small helpers.

def assert_shape(tensor: torch.Tensor, shape: Sequence[int | None], what: str) -> None:
    """Raise a readable error when `tensor` does not have `shape` (None = any size)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what}: expected a tensor of shape {list(shape)}, got {type(tensor).__name__}")
    ok = tensor.ndim == len(shape) and all(s is None or int(t) == s for t, s in zip(tensor.shape, shape))
    if not ok:
        expected = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{what}: expected shape {expected}, got {list(tensor.shape)}")


def is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """Padding as (x0, x1, y0, y1); a single int pads all four sides."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1); got {padding}")
    return padding  # type: ignore[return-value]


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square, so the mapping network sees inputs of a fixed
    scale whatever the latent's dimension or the label embedding's magnitude."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None, dim: int = 1) -> torch.Tensor:
    """Bias, activation, gain, clamp -- in that order, as the NVlabs fused op does.

    The gain defaults to the activation's variance-preserving gain; the clamp (applied last)
    keeps activations bounded, which the NVlabs FFHQ configs use (conv_clamp=256).
    """
    if act not in ACTIVATION_GAINS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATION_GAINS)}")
    if b is not None:
        assert_shape(b, [x.shape[dim]], "bias_act bias")
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    gain = ACTIVATION_GAINS[act] if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------------------------
# FIR resampling (pure torch version of NVlabs upfirdn2d).

def setup_filter(f: Iterable[float] = DEFAULT_FILTER, normalize: bool = True) -> torch.Tensor:
    """2-D low-pass filter from 1-D taps (outer product), normalised to sum 1.

    Kept as a 2-D [k, k] tensor because that is what NVlabs stores in its ``resample_filter``
    buffers for a 4-tap filter, so the buffers load without reshaping.
    """
    f = torch.as_tensor(list(f), dtype=torch.float32)
    if f.ndim != 1 or f.numel() == 0:
        raise ValueError(f"filter taps must be a non-empty 1-D sequence, got shape {list(f.shape)}")
    f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    return f


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of a 1-D (separable) or 2-D filter; (1, 1) for no filter."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    if f.ndim == 2:
        return f.shape[1], f.shape[0]
    raise ValueError(f"FIR filter must be 1-D or 2-D, got shape {list(f.shape)}")


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
              padding: int | Sequence[int] = 0, gain: float = 1.0, flip_filter: bool = False) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR filter, downsample (keep every `down`-th pixel).

    This is the resampling primitive of StyleGAN2: zero insertion followed by a low-pass filter
    avoids the aliasing of nearest/bilinear upsampling. `gain` multiplies the filter (for
    upsampling by `up` it must be up**2 to keep the mean brightness). Negative padding crops.
    A 2-D filter is applied as a depthwise 2-D convolution, a 1-D filter separably.
    The filter is flipped unless `flip_filter` (i.e. true convolution), as in NVlabs.
    """
    assert_shape(x, [None, None, None, None], "upfirdn2d input [B, C, H, W]")
    if up < 1 or down < 1:
        raise ValueError(f"up and down must be >= 1, got up={up} down={down}")
    x0, x1, y0, y1 = _parse_padding(padding)
    batch, channels, height, width = x.shape

    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)

    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]

    if f is not None:
        f = f.to(device=x.device, dtype=x.dtype) * (gain ** (f.ndim / 2))
        if not flip_filter:
            f = f.flip(list(range(f.ndim)))
        if f.ndim == 2:
            x = F.conv2d(x, f[None, None].expand(channels, 1, *f.shape), groups=channels)
        else:
            x = F.conv2d(x, f[None, None, None, :].expand(channels, 1, 1, f.shape[0]), groups=channels)
            x = F.conv2d(x, f[None, None, :, None].expand(channels, 1, f.shape[0], 1), groups=channels)
    elif gain != 1:
        x = x * gain

    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, padding: int = 0, gain: float = 1.0) -> torch.Tensor:
    """Upsample by `up` with FIR filter `f`; output is exactly `up` times the input size."""
    fw, fh = _filter_size(f)
    p = [padding + (fw + up - 1) // 2, padding + (fw - up) // 2,
         padding + (fh + up - 1) // 2, padding + (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, gain=gain * up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2, padding: int = 0, gain: float = 1.0) -> torch.Tensor:
    """Low-pass with FIR filter `f` then keep every `down`-th pixel; output is input / `down`."""
    fw, fh = _filter_size(f)
    p = [padding + (fw - down + 1) // 2, padding + (fw - down) // 2,
         padding + (fh - down + 1) // 2, padding + (fh - down) // 2]
    return upfirdn2d(x, f, down=down, padding=p, gain=gain)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding: int = 0, groups: int = 1, flip_weight: bool = True) -> torch.Tensor:
    """Convolution fused with FIR up- or down-sampling.

    Semantics (what the pretrained weights were trained with):
      * up > 1: zero-insert by `up`, pad, FIR low-pass with gain up**2, then convolve; the output
        is `up` times the input size. Computed as a strided transposed convolution followed by
        the FIR, which is the same linear operator at a quarter of the cost.
      * down > 1: FIR low-pass, convolve, keep every `down`-th pixel (a strided convolution).
    `flip_weight=True` means correlation (what F.conv2d does); False means true convolution,
    which NVlabs uses for its up-sampling layers -- getting this wrong silently mirrors every
    3x3 kernel of a pretrained generator.
    """
    out_channels, in_per_group, kh, kw = w.shape
    assert_shape(x, [None, in_per_group * groups, None, None], "conv2d_resample input")
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample supports up- or down-sampling, not both")
    if (up > 1 or down > 1) and f is None:
        raise ValueError("resampling needs a FIR filter")
    fw, fh = _filter_size(f)

    if up > 1:
        # Padding of the generic formulation, re-expressed around the transposed convolution,
        # which already pads k-1 on each side of the zero-inserted input.
        px0 = padding + (fw + up - 1) // 2 - (kw - 1)
        px1 = padding + (fw - up) // 2 + up - kw
        py0 = padding + (fh + up - 1) // 2 - (kh - 1)
        py1 = padding + (fh - up) // 2 + up - kh
        wt = w if not flip_weight else w.flip([2, 3])
        wt = wt.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        x = F.conv_transpose2d(x, wt, stride=up, groups=groups)
        return upfirdn2d(x, f, padding=[px0, px1, py0, py1], gain=up * up)

    wc = w if flip_weight else w.flip([2, 3])
    if down > 1:
        px0 = padding + (fw - down + 1) // 2
        px1 = padding + (fw - down) // 2
        py0 = padding + (fh - down + 1) // 2
        py1 = padding + (fh - down) // 2
        if kw == 1 and kh == 1:
            x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
            return F.conv2d(x, wc, groups=groups)
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return F.conv2d(x, wc, stride=down, groups=groups)

    return F.conv2d(x, wc, padding=padding, groups=groups)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, down: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """StyleGAN2 weight modulation/demodulation (Karras et al. 2020, Sec. 2.2).

    Each sample scales the input channels of the shared kernel by its style; demodulation then
    rescales each output channel to unit expected norm, which replaces AdaIN's instance
    normalisation without its droplet artefacts. Fused mode folds the batch into the channel
    axis and runs one grouped convolution with per-sample kernels; the non-fused mode scales
    activations instead (same result, cheaper backward on large batches).
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    assert_shape(x, [batch, in_channels, None, None], "modulated_conv2d input [B, I, H, W]")
    assert_shape(styles, [batch, in_channels], "modulated_conv2d styles [B, I]")

    w = weight.unsqueeze(0) * styles.reshape(batch, 1, in_channels, 1, 1)  # [B, O, I, k, k]
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # [B, O]

    if not fused_modconv:
        x = x * styles.reshape(batch, in_channels, 1, 1)
        x = conv2d_resample(x, weight, f=resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight)
        if dcoefs is not None:
            x = x * dcoefs.reshape(batch, out_channels, 1, 1)
    else:
        if dcoefs is not None:
            w = w * dcoefs.reshape(batch, out_channels, 1, 1, 1)
        x = x.reshape(1, batch * in_channels, *x.shape[2:])
        x = conv2d_resample(x, w.reshape(batch * out_channels, in_channels, kh, kw), f=resample_filter, up=up,
                            down=down, padding=padding, groups=batch, flip_weight=flip_weight)
        x = x.reshape(batch, out_channels, *x.shape[2:])
    if noise is not None:
        x = x + noise
    return x


# ---------------------------------------------------------------------------------------------
# Equalised-learning-rate layers.

class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate (weights stored as N(0, 1/lr_multiplier) and
    scaled at runtime), so Adam's per-parameter step is the same for every layer width and the
    mapping network can learn 100x slower than the rest (lr_multiplier=0.01)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        if activation not in ACTIVATION_GAINS:
            raise ValueError(f"unknown activation {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.in_features], f"{type(self).__name__} input [B, in_features]")
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain if self.bias is not None else None
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalised-lr convolution with optional FIR up/down-sampling, bias, activation and clamp
    (the discriminator's building block)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: Sequence[float] = DEFAULT_FILTER, conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = ACTIVATION_GAINS[activation]
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        assert_shape(x, [None, self.in_channels, None, None], f"{type(self).__name__} input [B, C, H, W]")
        w = self.weight.to(x.dtype) * self.weight_gain
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, k={self.weight.shape[-1]}, up={self.up}, "
                f"down={self.down}, activation={self.activation}")
