"""Depth warping and the photometric loss against independent truth: the identity view, a textured
plane rendered from two cameras with the MPI renderer (the warp of one view must reproduce the
other), ray-plane intersection plus camera.project for the validity mask, closed-form SSIM."""
import math

import pytest
import torch

from gmnr.render import camera, mpi, warp

F64 = torch.float64
RADIUS = 2.0
PLANE_Z = 1.8  # plane depth in the canonical camera frame (world z = 0.2)
TEX_HW = (128, 128)
TEX_FOV = 40.0  # canonical frustum wider than the views below, so they see only the plane
RENDER_TOL = 1e-3  # three bilinear resamplings of a smooth texture (measured 3.1e-4)
EDGE_TOL = 2.5e-2  # half a source pixel of edge extension: <= 0.5 px * max colour slope (~0.025/px)


def t64(*v):
    return torch.tensor(v, dtype=F64)


def cams(yaw, pitch, roll=0.0, radius=RADIUS, dtype=F64):
    t = lambda x: torch.as_tensor(x, dtype=dtype).reshape(-1)  # noqa: E731
    return camera.pose_to_cam2world(t(yaw), t(pitch), t(roll), radius=radius)


def canonical():
    return cams(0.0, 0.0), camera.intrinsics_from_fov(TEX_FOV, TEX_HW[1], TEX_HW[0], dtype=F64)


def plane_texture(k_c):
    """Smooth RGB texture [1, 3, Hs, Ws] on the plane z = PLANE_Z, a function of metric plane coordinates."""
    hs, ws = TEX_HW
    v, u = torch.meshgrid(torch.arange(hs, dtype=F64) + 0.5, torch.arange(ws, dtype=F64) + 0.5, indexing="ij")
    x = (u - k_c[0, 2]) * PLANE_Z / k_c[0, 0]
    y = (v - k_c[1, 2]) * PLANE_Z / k_c[1, 1]
    rgb = torch.stack([0.5 + 0.3 * torch.sin(5.0 * x + 0.3),
                       0.5 + 0.3 * torch.cos(4.0 * y - 0.2),
                       0.5 + 0.25 * torch.sin(3.0 * (x + y))], dim=0)
    return rgb[None]


def render_plane(tgt_c2w, tgt_k, hw):
    """Render the single opaque textured plane from ``tgt_c2w`` with the MPI renderer."""
    c_c2w, k_c = canonical()
    rgb = plane_texture(k_c)
    b = tgt_c2w.shape[0]
    alpha = torch.ones(1, 1, 1, *TEX_HW, dtype=F64)
    return mpi.render_mpi(rgb.expand(b, -1, -1, -1), alpha.expand(b, -1, -1, -1, -1), t64(PLANE_Z),
                          c_c2w, k_c, tgt_c2w, tgt_k, hw)


def infinite_plane_depth(tgt_c2w, tgt_k, hw):
    """Target-camera z of the (unbounded) plane, from the renderer's geometry: [B, 1, H, W]."""
    z, hit = mpi.plane_depth_in_target(canonical()[0], tgt_c2w, tgt_k, t64(PLANE_Z), hw)
    assert hit.all()
    return z[:, 0]


def ray_plane_points(tgt_c2w, tgt_k, hw):
    """Independent truth: world points [B, H, W, 3] where target pixel rays hit the plane."""
    if tgt_k.ndim == 3:  # camera.pixel_rays takes one K: one call per camera
        return torch.cat([ray_plane_points(c[None], k, hw) for c, k in zip(tgt_c2w, tgt_k)])
    origins, dirs = camera.pixel_rays(tgt_c2w, tgt_k, *hw)
    c = canonical()[0][:, None, None]
    normal, centre = c[..., :3, 2], c[..., :3, 3]
    s = (PLANE_Z - ((origins - centre) * normal).sum(-1)) / (dirs * normal).sum(-1)
    return origins + s[..., None] * dirs


def warp_and_compare(a_c2w, a_k, a_hw, b_c2w, b_k, b_hw):
    """Render A and B, warp A into B with B's rendered depth.

    Returns the max error over valid pixels where both views see the opaque plane and B's point lies
    inside the hull of A's pixel centres (>= 0.5 px from A's edge, where bilinear sampling
    interpolates), and the max error over the outer half-pixel band, where the warp can only
    extend A's edge pixels (first-order error, about half a pixel's colour change).
    """
    ra = render_plane(a_c2w, a_k, a_hw)
    rb = render_plane(b_c2w, b_k, b_hw)
    warped, valid = warp.backward_warp(ra["rgb"], rb["depth"], b_c2w, b_k, a_c2w, a_k)
    alpha_a_in_b, _ = warp.backward_warp(ra["alpha_acc"], rb["depth"], b_c2w, b_k, a_c2w, a_k)
    seen = valid & (rb["alpha_acc"] > 1 - 1e-9) & (alpha_a_in_b > 1 - 1e-9)
    points = ray_plane_points(b_c2w, b_k, b_hw).flatten(1, 2)
    uv, _ = camera.project(points, a_c2w.expand(len(points), 4, 4), a_k)
    u, v = uv[..., 0].reshape(-1, 1, *b_hw), uv[..., 1].reshape(-1, 1, *b_hw)
    interior = (u >= 0.5) & (u <= a_hw[1] - 0.5) & (v >= 0.5) & (v <= a_hw[0] - 0.5)
    keep = seen & interior
    assert keep.float().mean() > 0.5, "test geometry must leave most pixels comparable"
    err = (warped - rb["rgb"]).abs().amax(dim=1, keepdim=True)
    edge = seen & ~interior
    return err[keep].max().item(), (err[edge].max().item() if edge.any() else 0.0)


# ------------------------------------------------------------------------------------------------
# backward_warp
# ------------------------------------------------------------------------------------------------

def test_identity_warp_is_exact_and_fully_valid():
    gen = torch.Generator().manual_seed(0)
    c2w = cams([0.3, -0.1], [0.1, -0.2], [0.05, 0.0])
    k = camera.intrinsics_from_fov(25.0, 36, 28, dtype=F64)
    image = torch.rand(2, 3, 28, 36, generator=gen, dtype=F64)
    depth = 0.3 + 5.0 * torch.rand(2, 1, 28, 36, generator=gen, dtype=F64)  # any positive depth
    warped, valid = warp.backward_warp(image, depth, c2w, k, c2w, k)
    assert valid.dtype == torch.bool and valid.shape == (2, 1, 28, 36) and valid.all()
    assert (warped - image).abs().max().item() < 1e-10


def test_rendered_plane_warps_into_second_view():
    k = camera.intrinsics_from_fov(30.0, 64, 64, dtype=F64)
    a, b = cams(0.15, 0.05), cams(-0.2, -0.05, 0.1)
    err, edge_err = warp_and_compare(a, k, (64, 64), b, k, (64, 64))
    print(f"same-K warp max abs error: {err:.2e} (edge half-pixel band {edge_err:.2e})")
    assert err < RENDER_TOL and edge_err < EDGE_TOL


def test_different_intrinsics_and_sizes_still_match():
    """A: 64x64, fov 30. B: 56x80, a batch of two cameras with their own focal and shifted principal point."""
    k_a = camera.intrinsics_from_fov(30.0, 64, 64, dtype=F64)
    k_b = torch.stack([camera.intrinsics_from_fov(24.0, 80, 56, dtype=F64),
                       camera.intrinsics_from_fov(34.0, 80, 56, dtype=F64)])
    k_b[0, :2, 2] += t64(4.0, -3.0)
    k_b[1, :2, 2] += t64(-5.0, 2.5)
    a = cams([0.1, -0.05], [0.0, 0.08])
    b = cams([-0.25, 0.2], [0.05, -0.05], [0.0, -0.1])
    err, edge_err = warp_and_compare(a, k_a, (64, 64), b, k_b, (56, 80))
    print(f"different-K warp max abs error: {err:.2e} (edge half-pixel band {edge_err:.2e})")
    assert err < RENDER_TOL and edge_err < EDGE_TOL
    # The same warp with intrinsics ignored (the published code's defect) is far off.
    ra, rb = render_plane(a, k_a, (64, 64)), render_plane(b, k_b, (56, 80))
    wrong, valid = warp.backward_warp(ra["rgb"], rb["depth"], b, k_a, a, k_a)
    assert (wrong - rb["rgb"]).abs()[valid.expand_as(wrong)].max() > 20 * RENDER_TOL


def test_mask_matches_independent_projection():
    """A narrow source view, a wide target view: the mask is False exactly where B's points leave A."""
    a_hw, b_hw = (40, 48), (50, 60)
    k_a = camera.intrinsics_from_fov(18.0, a_hw[1], a_hw[0], dtype=F64)
    k_b = camera.intrinsics_from_fov(36.0, b_hw[1], b_hw[0], dtype=F64)
    a, b = cams([0.2, 0.0], [0.1, -0.15]), cams([-0.1, 0.3], [0.0, 0.05], [0.1, 0.0])
    image = torch.rand(2, 3, *a_hw, generator=torch.Generator().manual_seed(1), dtype=F64)
    _, valid = warp.backward_warp(image, infinite_plane_depth(b, k_b, b_hw), b, k_b, a, k_a)

    points = ray_plane_points(b, k_b, b_hw).reshape(2, -1, 3)
    uv, z = camera.project(points, a, k_a)
    u, v = uv[..., 0].reshape(2, *b_hw), uv[..., 1].reshape(2, *b_hw)
    inside = (z.reshape(2, *b_hw) > 0) & (u >= 0) & (u <= a_hw[1]) & (v >= 0) & (v <= a_hw[0])
    margin = torch.stack([u, a_hw[1] - u, v, a_hw[0] - v]).abs().amin(0)
    disagree = valid[:, 0] != inside
    assert not (disagree & (margin > 1e-9)).any()
    frac = inside.double().mean().item()
    assert 0.15 < frac < 0.85, f"geometry must exercise both mask values, inside fraction {frac:.2f}"


def test_mask_rejects_nonpositive_depth_and_points_behind_source():
    c2w = cams(0.2, 0.1)
    k = camera.intrinsics_from_fov(30.0, 16, 12, dtype=F64)
    image = torch.rand(1, 3, 12, 16, dtype=F64)
    depth = torch.full((1, 1, 12, 16), 2.0, dtype=F64)
    depth[..., :3, :] = 0.0
    depth[..., 5, :4] = -1.0
    depth[..., 7, 7] = float("nan")
    warped, valid = warp.backward_warp(image, depth, c2w, k, c2w, k)
    assert torch.equal(valid, (depth > 0) & torch.isfinite(depth))
    assert torch.isfinite(warped).all() and (warped[~valid.expand_as(warped)] == 0).all()
    # Source camera at the same place turned by 180 degrees about its y axis: everything is behind it.
    behind = c2w @ torch.diag(t64(-1.0, 1.0, -1.0, 1.0))
    _, valid = warp.backward_warp(image, depth.clamp_min(0.5), c2w, k, behind, k)
    assert not valid.any()


# ------------------------------------------------------------------------------------------------
# SSIM and the photometric loss
# ------------------------------------------------------------------------------------------------

def ssim_reference(x, y, i, j, c1=0.01 ** 2, c2=0.03 ** 2):
    """SSIM at pixel (i, j) of [C, H, W] images from its explicit 3x3 window (reflected indices)."""
    def idx(k, n):
        return -k if k < 0 else (2 * (n - 1) - k if k >= n else k)
    h, w = x.shape[-2:]
    rows = [idx(r, h) for r in (i - 1, i, i + 1)]
    cols = [idx(c, w) for c in (j - 1, j, j + 1)]
    px = x[:, rows][:, :, cols].reshape(x.shape[0], 9)
    py = y[:, rows][:, :, cols].reshape(y.shape[0], 9)
    mx, my = px.mean(1), py.mean(1)
    vx, vy = px.var(1, unbiased=False), py.var(1, unbiased=False)
    cxy = ((px - mx[:, None]) * (py - my[:, None])).mean(1)
    return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def test_ssim_self_symmetry_and_reference():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 7, 9, generator=gen, dtype=F64)
    y = torch.rand(2, 3, 7, 9, generator=gen, dtype=F64)
    assert torch.equal(warp.ssim_monodepth2(x, x), torch.ones_like(x))
    s = warp.ssim_monodepth2(x, y)
    assert torch.equal(s, warp.ssim_monodepth2(y, x))
    assert s.shape == x.shape and (s.abs() <= 1 + 1e-12).all()
    for i, j in [(0, 0), (3, 4), (6, 8), (0, 5), (4, 8)]:  # corners, edges (reflection) and interior
        ref = ssim_reference(x[1], y[1], i, j)
        assert (s[1, :, i, j] - ref).abs().max() < 1e-12
    # Constant images p, q: SSIM = (2 p q + C1) / (p^2 + q^2 + C1).
    p, q = 0.3, 0.7
    s = warp.ssim_monodepth2(torch.full((1, 1, 4, 4), p, dtype=F64), torch.full((1, 1, 4, 4), q, dtype=F64))
    assert (s - (2 * p * q + 1e-4) / (p * p + q * q + 1e-4)).abs().max() < 1e-12


def smooth_image(shift, hw=(40, 48)):
    """Low-frequency RGB image in [0, 1], shifted right by ``shift`` pixels (evaluated analytically)."""
    v, u = torch.meshgrid(torch.arange(hw[0], dtype=F64), torch.arange(hw[1], dtype=F64) - shift, indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(2 * math.pi * u / 40 + 0.4 * torch.cos(2 * math.pi * v / 50)),
                       0.5 + 0.3 * torch.cos(2 * math.pi * (u + v) / 60),
                       0.5 + 0.35 * torch.sin(2 * math.pi * u / 36 + 1.0)], dim=0)
    return img[None]


def test_photometric_loss_zero_for_identical_and_monotone_in_shift():
    a = smooth_image(0)
    valid = torch.ones(1, 1, *a.shape[-2:], dtype=torch.bool)
    assert warp.photometric_loss(a, a.clone(), valid).item() == 0.0
    losses = [warp.photometric_loss(a, smooth_image(s), valid).item() for s in (1, 2, 4)]
    print("photometric loss for shifts 1, 2, 4:", losses)
    assert 0 < losses[0] < losses[1] < losses[2]
    # Bool mask, float mask and [B, H, W] mask agree; pixels outside the mask do not count.
    b = smooth_image(2)
    half = torch.zeros_like(valid)
    half[..., :20] = True
    lb = warp.photometric_loss(a, b, half)
    assert torch.allclose(lb, warp.photometric_loss(a, b, half.double()), rtol=0, atol=1e-15)
    assert torch.allclose(lb, warp.photometric_loss(a, b, half[:, 0]), rtol=0, atol=1e-15)
    b_garbage = torch.where(half, b, torch.full_like(b, 1e3))
    assert torch.allclose(lb, warp.photometric_loss(a, b_garbage, half), rtol=0, atol=1e-15)


def test_photometric_loss_empty_mask_is_zero_with_gradient():
    a = smooth_image(0).requires_grad_(True)
    b = smooth_image(3).requires_grad_(True)
    loss = warp.photometric_loss(a, b, torch.zeros(1, 1, *a.shape[-2:], dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_loss_gradients_wrt_source_image_and_depth_are_finite(dtype):
    gen = torch.Generator().manual_seed(3)
    hw = (24, 32)
    k = camera.intrinsics_from_fov(30.0, hw[1], hw[0], dtype=dtype)
    tgt = cams([0.2, -0.1], [0.05, 0.0], dtype=dtype)
    src = warp.mirrored_view(tgt)
    src_image = torch.rand(2, 3, *hw, generator=gen, dtype=dtype).requires_grad_(True)
    depth = (1.8 + 0.2 * torch.rand(2, 1, *hw, generator=gen, dtype=dtype)).requires_grad_(True)
    tgt_image = torch.rand(2, 3, *hw, generator=gen, dtype=dtype)
    warped, valid = warp.backward_warp(src_image, depth, tgt, k, src, k)
    assert warped.dtype == dtype and valid.any()
    loss = warp.photometric_loss(tgt_image, warped, valid)
    loss.backward()
    assert torch.isfinite(loss)
    for g in (src_image.grad, depth.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# mirrored_view
# ------------------------------------------------------------------------------------------------

def test_mirrored_view_negates_yaw_only():
    yaw, pitch, roll, radius = t64(0.3, -0.5, 0.0), t64(0.1, -0.2, 0.25), t64(0.0, 0.1, -0.2), t64(2.7, 1.0, 3.0)
    c2w = camera.pose_to_cam2world(yaw, pitch, roll, radius=radius)
    m = warp.mirrored_view(c2w)
    assert (m - camera.pose_to_cam2world(-yaw, pitch, roll, radius=radius)).abs().max() < 1e-12
    assert (warp.mirrored_view(m) - c2w).abs().max() < 1e-12
    # Zero roll: the exact reflection in the plane x = 0 (camera x axis flipped to stay right-handed).
    flip = torch.diag(t64(-1.0, 1.0, 1.0, 1.0))
    assert (m[0] - flip @ c2w[0] @ flip).abs().max() < 1e-12
