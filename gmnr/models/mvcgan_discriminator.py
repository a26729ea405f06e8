"""MVCGAN's discriminator (pi-GAN's): a progressive CoordConv residual encoder with a pose head.

Every convolution sees two extra channels with the pixel's normalised (x, y) coordinates
(CoordConv, Liu et al. 2018), which lets the network reason about where things are, and so about
the camera pose. Input resolution R enters through its own ``from_rgb`` and goes down by residual
blocks to 4x4; a new resolution fades in over the average-pooled image seen by the previous
resolution's ``from_rgb`` (progressive growing). The head predicts one realism logit and the
camera (yaw, pitch) the image was rendered from.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

LEAKY_SLOPE = 0.2
MIN_RESOLUTION = 4
POSE_OUTPUTS = 2  # yaw, pitch


def _coords(x: Tensor) -> Tensor:
    n, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=0)  # [2, H, W]: x, y
    return torch.cat([x, grid.expand(n, 2, h, w)], dim=1)


class CoordConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(_coords(x))


class ResidualDown(nn.Module):
    """Two CoordConv 3x3 + leaky ReLU, then 2x average pooling; a 1x1 skip; sum / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = CoordConv(in_channels, out_channels, 3)
        self.conv1 = CoordConv(out_channels, out_channels, 3)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = F.leaky_relu(self.conv0(x), LEAKY_SLOPE)
        y = F.avg_pool2d(F.leaky_relu(self.conv1(y), LEAKY_SLOPE), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2.0)


class PoseDiscriminator(nn.Module):
    """image [B, 3, R, R] (any power of two 4 <= R <= resolution), fade in [0, 1]
    -> logits [B], pose [B, 2] (yaw, pitch in radians)."""

    def __init__(self, resolution: int, channel_base: int, channel_max: int):
        super().__init__()
        if resolution < MIN_RESOLUTION or resolution & (resolution - 1):
            raise ValueError(f"discriminator resolution must be a power of two >= {MIN_RESOLUTION}, got {resolution}")
        self.resolution = resolution
        self.resolutions = [2 ** k for k in range(int(math.log2(MIN_RESOLUTION)), int(math.log2(resolution)) + 1)]
        self.channels = {r: max(1, min(channel_base // r, channel_max)) for r in self.resolutions}
        self.from_rgb = nn.ModuleDict({str(r): CoordConv(3, self.channels[r], 1) for r in self.resolutions})
        self.blocks = nn.ModuleDict({str(r): ResidualDown(self.channels[r], self.channels[r // 2])
                                     for r in self.resolutions if r > MIN_RESOLUTION})
        c4 = self.channels[MIN_RESOLUTION]
        self.final_conv = CoordConv(c4, c4, 3)
        self.head = nn.Linear(c4 * MIN_RESOLUTION ** 2, 1 + POSE_OUTPUTS)

    def _enter(self, image: Tensor, r: int) -> Tensor:
        return F.leaky_relu(self.from_rgb[str(r)](image), LEAKY_SLOPE)

    def forward(self, image: Tensor, fade: float = 1.0) -> tuple[Tensor, Tensor]:
        r = image.shape[-1]
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[-2] != r or str(r) not in self.from_rgb:
            raise ValueError(f"PoseDiscriminator takes [B, 3, R, R] with R a power of two in "
                             f"[{MIN_RESOLUTION}, {self.resolution}], got {tuple(image.shape)}")
        x = self._enter(image, r)
        while x.shape[-1] > MIN_RESOLUTION:
            res = x.shape[-1]
            x = self.blocks[str(res)](x)
            if res == r and fade < 1.0:  # the new resolution fades in over the previous one's input
                x = torch.lerp(self._enter(F.avg_pool2d(image, 2), r // 2), x, fade)
        x = F.leaky_relu(self.final_conv(x), LEAKY_SLOPE)
        out = self.head(x.flatten(1))
        return out[:, 0], out[:, 1:]
