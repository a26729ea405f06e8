"""GMPI's shading-guided training: Lambertian shading of a generated MPI's colours.

Followed: apple/ml-gmpi ``gmpi/core/light_renderer.py:LightRenderer`` (itself from LiftedGAN).
The MPI's expected depth along the canonical camera's texel rays (alpha-composited plane depths,
in texture space, before any warp) is blurred, lifted to a point cloud, turned into normals by
the cross products of the four neighbour differences, and lights the colours of every plane with
``ambient + diffuse * max(0, -n . l)`` for a directional light l from a point on the camera
sphere. The generator then has to produce geometry whose shading looks right to D.

Frames: the canonical camera's OpenCV frame (x right, y down, z forward), which is GMPI's world
frame, so normals face -z towards the camera and l points from the light to the sphere centre.
Pure tensor functions.
"""
from __future__ import annotations

import torch
import torchvision.transforms.functional as TF

from gmnr.render.mpi import composite

Tensor = torch.Tensor

BLUR_KSIZE = 9                                         # GMPI's blur_ksize
BLUR_SIGMA = 0.3 * ((BLUR_KSIZE - 1) * 0.5 - 1) + 0.8  # OpenCV's default sigma for that size (GMPI)
NORMAL_EPS = 1e-8


def texture_depth(alpha: Tensor, depths: Tensor) -> Tensor:
    """Expected plane depth [B, 1, H, W] of an MPI's alpha [B, P, 1, H, W] composited front to
    back in texture space (GMPI's ``LightRenderer.compute_depth``)."""
    b, p = alpha.shape[:2]
    assert depths.shape == (p,), f"depths must be [P] = [{p}], got {tuple(depths.shape)}"
    _, depth, _ = composite(torch.zeros_like(alpha), alpha, depths)
    return depth


def texel_points(depth: Tensor, background_half_extents: Tensor, far: float) -> Tensor:
    """Point cloud [B, H, W, 3]: the background plane's texel centres (x, y, far), scaled along
    their ray from the canonical camera to the blurred expected depth (``compute_pcl``; GMPI
    uses the last plane's texel grid whatever the other planes' extents)."""
    b, _, h, w = depth.shape
    blurred = TF.gaussian_blur(depth, [BLUR_KSIZE, BLUR_KSIZE], [BLUR_SIGMA, BLUR_SIGMA])[:, 0]
    hx, hy = float(background_half_extents[0]), float(background_half_extents[1])
    ys = torch.linspace(-1, 1, h, dtype=depth.dtype, device=depth.device) * hy
    xs = torch.linspace(-1, 1, w, dtype=depth.dtype, device=depth.device) * hx
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    last = torch.stack([x, y, torch.full_like(x, far)], dim=-1)          # [H, W, 3]
    return last * (blurred / (far + NORMAL_EPS))[..., None]


def normals(points: Tensor) -> Tensor:
    """Unit normals [B, H, W, 3] of a point grid [B, H, W, 3] (GMPI's ``get_normal``): the sum of
    the cross products of the differences to the up, left, down and right neighbours, replicated
    at the border."""
    centre = points[:, 1:-1, 1:-1]
    up, down = points[:, :-2, 1:-1] - centre, points[:, 2:, 1:-1] - centre
    left, right = points[:, 1:-1, :-2] - centre, points[:, 1:-1, 2:] - centre
    n = (torch.cross(up, left, dim=3) + torch.cross(left, down, dim=3)
         + torch.cross(down, right, dim=3) + torch.cross(right, up, dim=3))
    n = torch.nn.functional.pad(n.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
    return n / (n.square().sum(3, keepdim=True).sqrt() + NORMAL_EPS)


def shading_map(alpha: Tensor, depths: Tensor, background_half_extents: Tensor, light_dir: Tensor,
                ambient: float, diffuse: float) -> Tensor:
    """The multiplier [B, 1, 1, H, W] of an MPI's colours: ``ambient + diffuse * max(0, -n . l)``
    with l [B, 3] the unit light direction in the canonical frame (light towards the scene)."""
    assert light_dir.shape == (alpha.shape[0], 3), f"light_dir must be [B, 3], got {tuple(light_dir.shape)}"
    points = texel_points(texture_depth(alpha, depths), background_half_extents, float(depths[-1]))
    lambert = (-(normals(points) * light_dir[:, None, None, :]).sum(3)).clamp(min=0)   # [B, H, W]
    return (ambient + diffuse * lambert)[:, None, None]


def shade_colours(colours: Tensor, shading: Tensor) -> Tensor:
    """Colours in [-1, 1] (any [B, ..., H, W] that broadcasts with shading [B, 1, 1, H, W] squeezed
    to the colours' rank) lit in [0, 1] units and clipped there, as GMPI does."""
    shading = shading.reshape(shading.shape[0], *([1] * (colours.ndim - 3)), *shading.shape[-2:])
    return ((colours + 1) / 2 * shading).clamp(0, 1) * 2 - 1
