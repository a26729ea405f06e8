"""MVCGAN's discriminator as published (``discriminators/sgdiscriminators.py:
CCSEncoderDiscriminator``): a progressive residual CoordConv encoder with a pose head.

* Every 3x3 convolution of a block sees two extra channels with the pixel's row and column
  coordinates in [-1, 1] (CoordConv, Liu et al. 2018; ``AddCoords``), which lets the network
  reason about where things are, and so about the camera pose.
* An image of resolution R enters through its ``from_rgb`` (1x1 conv + leaky ReLU) and goes down by
  residual blocks (CoordConv 3x3, leaky ReLU, CoordConv 3x3 with stride 2, leaky ReLU; a strided
  1x1 projection as the shortcut; the sum over sqrt(2)) to 2x2, where a 2x2 convolution gives the
  realism logit and the pose.
* A new resolution fades in after its first block over the previous resolution's ``from_rgb`` of
  the nearest-neighbour half-size image (``alpha`` in the published code; the published first stage
  fades in too).
* Widths: ``clamp(channel_base / r, channel_min, channel_max)`` at resolution r, which gives the
  published 32 (>= 256 px), 64, 128, 256 and 400 (<= 16 px) with base 8192, min 32, max 400.
* The published head also outputs 256 values that predict the latent (``z_lambda``); MVCGAN sets
  their weight to 0, so they enter no loss and are left out here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

LEAKY_SLOPE = 0.2
MIN_INPUT = 4  # smallest image the discriminator takes (its blocks go down to 2x2)
HEAD_RESOLUTION = 2  # the last block's output, read by the 2x2 head convolution
POSE_OUTPUTS = 2  # pi-GAN's (pitch, yaw) angles of the camera on its sphere


def add_coords(x: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, C + 2, H, W]: the row coordinate, then the column coordinate, each
    ``index / (size - 1) * 2 - 1`` (CoordConv's ``AddCoords`` without the radius channel)."""
    n, _, h, w = x.shape
    rows = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    cols = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=0)  # [2, H, W]
    return torch.cat([x, grid.expand(n, 2, h, w)], dim=1)


def _kaiming_leaky(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_normal_(conv.weight, a=LEAKY_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
    return conv


class CoordConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = _kaiming_leaky(nn.Conv2d(in_channels + 2, out_channels, 3, stride=stride, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(add_coords(x))


class ResidualCoordBlock(nn.Module):
    """``ResidualCCBlock``: [N, C_in, H, W] -> [N, C_out, H / 2, W / 2]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = CoordConv(in_channels, out_channels)
        self.conv1 = CoordConv(out_channels, out_channels, stride=2)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        y = F.leaky_relu(self.conv0(x), LEAKY_SLOPE)
        y = F.leaky_relu(self.conv1(y), LEAKY_SLOPE)
        return (y + self.skip(x)) / math.sqrt(2.0)


class PoseDiscriminator(nn.Module):
    """image [B, 3, R, R] (a power of two, 4 <= R <= resolution), fade in [0, 1]
    -> logits [B], pose [B, 2] (the camera's polar and azimuthal angle, as pi-GAN samples them)."""

    def __init__(self, resolution: int, channel_base: int, channel_min: int, channel_max: int):
        super().__init__()
        if resolution < MIN_INPUT or resolution & (resolution - 1):
            raise ValueError(f"discriminator resolution must be a power of two >= {MIN_INPUT}, got {resolution}")
        self.resolution = resolution
        sizes = [2 ** k for k in range(int(math.log2(HEAD_RESOLUTION)), int(math.log2(resolution)) + 1)]
        self.channels = {r: max(channel_min, min(channel_base // r, channel_max)) for r in sizes}
        self.from_rgb = nn.ModuleDict({str(r): nn.Conv2d(3, self.channels[r], 1) for r in sizes})
        self.blocks = nn.ModuleDict({str(r): ResidualCoordBlock(self.channels[r], self.channels[r // 2])
                                     for r in sizes if r >= MIN_INPUT})
        self.head = nn.Conv2d(self.channels[HEAD_RESOLUTION], 1 + POSE_OUTPUTS, HEAD_RESOLUTION)

    def _enter(self, image: Tensor) -> Tensor:
        return F.leaky_relu(self.from_rgb[str(image.shape[-1])](image), LEAKY_SLOPE)

    def forward(self, image: Tensor, fade: float = 1.0) -> tuple[Tensor, Tensor]:
        r = image.shape[-1]
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[-2] != r or str(r) not in self.blocks:
            raise ValueError(f"PoseDiscriminator takes [B, 3, R, R] with R a power of two in "
                             f"[{MIN_INPUT}, {self.resolution}], got {tuple(image.shape)}")
        # Contiguous (NCHW) whatever layout the caller's image has (the generator's render is a permuted, channels-last
        # view): oneDNN 3.12 (torch 2.14.1) corrupts the heap in the weight gradient of a 1x1 stride-2 convolution (the
        # residual skip) with fewer than 8 input channels in channels-last layout on AVX2-only CPUs ("double free or
        # corruption", the process aborts). Covered by tests/test_mvcgan.py::
        # test_discriminator_takes_a_channels_last_image_through_r1_without_crashing.
        image = image.contiguous()
        x = self.blocks[str(r)](self._enter(image))
        if fade < 1.0:  # the input resolution fades in over the previous one's entry
            half = F.interpolate(image, scale_factor=0.5, mode="nearest")
            x = torch.lerp(self._enter(half), x, fade)
        while x.shape[-1] > HEAD_RESOLUTION:
            x = self.blocks[str(x.shape[-1])](x)
        out = self.head(x).flatten(1)
        assert out.shape == (image.shape[0], 1 + POSE_OUTPUTS), out.shape
        return out[:, 0], out[:, 1:]
