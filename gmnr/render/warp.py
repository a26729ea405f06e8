"""Depth-based view warping and the photometric view-consistency loss (GMNR, reused by MVCGAN).

Pure tensor functions: batched, differentiable, CPU/CUDA, float32/float64.

Conventions follow :mod:`gmnr.render.camera`: OpenCV camera frame (x right, y down, z forward),
``cam2world`` [B, 4, 4], pinhole intrinsics in pixel units of the image they describe with pixel
centres at ``i + 0.5``, depth = camera-space z (what :func:`gmnr.render.mpi.render_mpi` returns,
not the distance along the ray).

GMNR's view-consistency loss renders a second view of the same latent (the published code mirrors
the yaw: :func:`mirrored_view`), warps it into the main view with the main view's depth
(:func:`backward_warp`) and penalises the photometric difference where the warp is valid
(:func:`photometric_loss`). Unlike the published code, the warp uses both cameras' real
intrinsics and extrinsics and returns a validity mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gmnr.render import camera

Tensor = torch.Tensor

SSIM_C1 = 0.01 ** 2  # SSIM stabilisers for a dynamic range of 1 (images in [0, 1])
SSIM_C2 = 0.03 ** 2
MIN_SOURCE_DEPTH = 1e-6  # warped points with source-camera z <= this are "behind the source camera"


def _require(cond: bool, msg: str) -> None:
    """Shape/value check that survives ``python -O`` (unlike ``assert``)."""
    if not cond:
        raise ValueError(msg)


def _cams(cam2world: Tensor, name: str) -> Tensor:
    _require(isinstance(cam2world, Tensor) and cam2world.ndim in (2, 3) and cam2world.shape[-2:] == (4, 4),
             f"{name} must be a [B, 4, 4] or [4, 4] tensor, got {getattr(cam2world, 'shape', type(cam2world))}")
    return cam2world.reshape(-1, 4, 4)


def _intrinsics(k: Tensor, like: Tensor, name: str) -> Tensor:
    k = torch.as_tensor(k)
    _require(k.ndim in (2, 3) and k.shape[-2:] == (3, 3), f"{name} must be [3, 3] or [B, 3, 3], got {tuple(k.shape)}")
    return k.to(dtype=like.dtype, device=like.device).reshape(-1, 3, 3)


def _fold_intrinsics(cam2world: Tensor, k: Tensor, batch: int) -> Tensor:
    """``cam2world @ diag(K^-1, 1)`` [B, 4, 4]: a (non-rigid) camera matrix for *unit* intrinsics.

    :func:`camera.pixel_rays` and :func:`camera.project` take one intrinsics matrix shared by the
    batch. Folding each sample's K into its camera matrix lets them serve per-sample intrinsics
    exactly: with the identity as intrinsics, ``pixel_rays`` yields directions
    ``normalize(R K^-1 x)`` (the true pixel rays) and ``project`` computes
    ``p = K R^T (X - t)`` = K X_cam, whose third component is the camera-space z (K's third row
    is e3) and whose perspective division gives the true pixel coordinates.
    """
    cam2world = cam2world.expand(batch, 4, 4)
    rot = cam2world[:, :3, :3] @ torch.linalg.inv(k).expand(batch, 3, 3)
    top = torch.cat([rot, cam2world[:, :3, 3:]], dim=-1)
    return torch.cat([top, cam2world[:, 3:]], dim=-2)


def backward_warp(src_image: Tensor, tgt_depth: Tensor, tgt_cam2world: Tensor, tgt_K: Tensor,
                  src_cam2world: Tensor, src_K: Tensor) -> tuple[Tensor, Tensor]:
    """Warp a source view into a target view using the target's depth ("backward" warping).

    src_image [B, C, Hs, Ws]; tgt_depth [B, 1, H, W], camera-space z of the target view (e.g. the
    ``depth`` of :func:`gmnr.render.mpi.render_mpi`); cameras [B, 4, 4] (or [4, 4]); intrinsics
    [3, 3] or [B, 3, 3] in pixel units of their own image sizes (``tgt_K`` for H x W, ``src_K``
    for Hs x Ws). Batches of size 1 broadcast.

    Every target pixel centre ``(j + 0.5, i + 0.5)`` is unprojected to the 3D point at its depth,
    moved into the source camera, projected with ``src_K`` and the source image is sampled there
    bilinearly (``grid_sample``, ``align_corners=False``, which puts pixel centres at ``i + 0.5``;
    border padding, so points within half a pixel of the source's edge see the edge pixel rather
    than a blend with zeros).

    Returns ``warped`` [B, C, H, W] (zero where invalid) and ``valid`` [B, 1, H, W] (bool): True
    where the target depth is > 0 and finite, the point lies in front of the source camera
    (z > 1e-6) and projects inside the source image (0 <= u <= Ws, 0 <= v <= Hs). Occlusion is not
    modelled (a point hidden from the source camera still samples whatever the source sees there).
    Differentiable w.r.t. the source image, the depth and both cameras.
    """
    _require(src_image.ndim == 4, f"src_image must be [B, C, Hs, Ws], got {tuple(src_image.shape)}")
    _require(tgt_depth.ndim == 4 and tgt_depth.shape[1] == 1, f"tgt_depth must be [B, 1, H, W], got {tuple(tgt_depth.shape)}")
    tgt_c2w = _cams(tgt_cam2world, "tgt_cam2world").to(tgt_depth.dtype)
    src_c2w = _cams(src_cam2world, "src_cam2world").to(tgt_c2w)
    k_t = _intrinsics(tgt_K, tgt_c2w, "tgt_K")
    k_s = _intrinsics(src_K, tgt_c2w, "src_K")
    sizes = (src_image.shape[0], tgt_depth.shape[0], tgt_c2w.shape[0], src_c2w.shape[0], k_t.shape[0], k_s.shape[0])
    batch = max(sizes)
    _require(all(s in (1, batch) for s in sizes), f"batch sizes {sizes} (image, depth, cameras, K) do not broadcast")
    c, hs, ws = src_image.shape[1:]
    h, w = tgt_depth.shape[-2:]

    depth = tgt_depth.expand(batch, 1, h, w)[:, 0]
    depth_ok = (depth > 0) & torch.isfinite(depth)
    depth = torch.where(depth_ok, depth, torch.ones_like(depth))  # keep invalid pixels' arithmetic finite

    eye = torch.eye(3, dtype=tgt_c2w.dtype, device=tgt_c2w.device)
    origins, dirs = camera.pixel_rays(_fold_intrinsics(tgt_c2w, k_t, batch), eye, h, w)  # [B, H, W, 3]
    forward = tgt_c2w[:, None, None, :3, 2].expand(batch, 1, 1, 3)
    cos = (dirs * forward).sum(-1)  # z of the unit ray in the target frame (= 1 / |K^-1 x| > 0)
    points = origins + dirs * (depth / cos)[..., None]

    uv, z_src = camera.project(points.reshape(batch, -1, 3), _fold_intrinsics(src_c2w, k_s, batch), eye)
    uv, z_src = uv.reshape(batch, h, w, 2), z_src.reshape(batch, h, w)
    u, v = uv[..., 0], uv[..., 1]
    valid = depth_ok & (z_src > MIN_SOURCE_DEPTH) & (u >= 0) & (u <= ws) & (v >= 0) & (v <= hs)

    size = torch.tensor([ws, hs], dtype=uv.dtype, device=uv.device)
    grid = torch.where(valid[..., None], 2.0 * uv / size - 1.0, torch.zeros_like(uv))
    image = src_image.expand(batch, c, hs, ws)
    warped = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    valid = valid[:, None]
    return torch.where(valid, warped, torch.zeros_like(warped)), valid


def ssim_monodepth2(x: Tensor, y: Tensor, c1: float = SSIM_C1, c2: float = SSIM_C2) -> Tensor:
    """Per-pixel SSIM [B, C, H, W] of x, y [B, C, H, W] (monodepth2's form).

    Local statistics over 3x3 windows (average pooling, reflection padding of 1, so H, W >= 2);
    ``C1 = 0.01^2``, ``C2 = 0.03^2`` assume a dynamic range of 1, i.e. images in [0, 1]. Returns the
    SSIM itself (in [-1, 1] up to rounding; 1 for identical inputs), not monodepth2's
    ``clamp((1 - SSIM) / 2, 0, 1)``. Exactly symmetric in x and y.
    """
    _require(x.ndim == 4 and x.shape == y.shape, f"x, y must be equal [B, C, H, W], got {tuple(x.shape)}, {tuple(y.shape)}")
    _require(x.shape[-2] >= 2 and x.shape[-1] >= 2, f"SSIM needs H, W >= 2, got {tuple(x.shape)}")
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_xx
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_yy
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_xy
    num = (2 * mu_xy + c1) * (2 * sigma_xy + c2)
    den = (mu_xx + mu_yy + c1) * (sigma_x + sigma_y + c2)
    return num / den


def photometric_loss(a: Tensor, b: Tensor, valid: Tensor, alpha: float = 0.85) -> Tensor:
    """Masked monodepth2 photometric error: mean over valid pixels of
    ``alpha * clamp((1 - SSIM(a, b)) / 2, 0, 1) + (1 - alpha) * |a - b|`` (scalar).

    a, b [B, C, H, W] with values in [0, 1] (SSIM's constants assume that range; map [-1, 1]
    generator outputs with ``(x + 1) / 2`` first); ``a`` is the reference (GMNR: the main view),
    ``b`` the warped view. SSIM and L1 are averaged over channels, then over the pixels where
    ``valid`` ([B, 1, H, W] or [B, H, W], bool, or float weights in [0, 1]) is set. Invalid pixels
    of ``b`` are replaced by ``a`` before SSIM, so 3x3 windows at the mask's edge see identical
    filler instead of garbage (no spurious penalty); they carry no loss themselves. Returns 0, with
    a defined (zero) gradient, when no pixel is valid.
    """
    _require(a.ndim == 4 and a.shape == b.shape, f"a, b must be equal [B, C, H, W], got {tuple(a.shape)}, {tuple(b.shape)}")
    bsz, _, h, w = a.shape
    valid = valid.unsqueeze(1) if valid.ndim == 3 else valid
    _require(valid.ndim == 4 and valid.shape[0] in (1, bsz) and tuple(valid.shape[1:]) == (1, h, w),
             f"valid must be [B, 1, H, W] = [{bsz}, 1, {h}, {w}], got {tuple(valid.shape)}")
    weight = valid.to(a.dtype).expand(bsz, 1, h, w)
    b = torch.where(weight > 0, b, a)
    dssim = ((1.0 - ssim_monodepth2(a, b)) / 2.0).clamp(0.0, 1.0).mean(dim=1, keepdim=True)
    l1 = (a - b).abs().mean(dim=1, keepdim=True)
    per_pixel = alpha * dssim + (1.0 - alpha) * l1
    return (per_pixel * weight).sum() / weight.sum().clamp_min(torch.finfo(a.dtype).eps)


def mirrored_view(cam2world: Tensor, center=(0.0, 0.0, 0.0)) -> Tensor:
    """The published GMNR second view: same pitch, roll and distance to ``center``, yaw negated.

    Goes through :func:`camera.cam2world_to_pose` / :func:`camera.pose_to_cam2world`, so it
    assumes cameras that look at ``center`` (as all GMPI/GMNR training cameras do). With zero roll
    this is the exact mirror image of the camera in the plane x = center_x; with non-zero roll an
    exact mirror would also negate the roll, which the published policy does not do.
    Returns [B, 4, 4] in the input's dtype/device; differentiable.
    """
    pose = camera.cam2world_to_pose(cam2world, center)
    out = camera.pose_to_cam2world(-pose["yaw"], pose["pitch"], pose["roll"], radius=pose["distance"], center=center)
    return out.to(cam2world)
