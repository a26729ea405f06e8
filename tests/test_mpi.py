"""MPI renderer against independent truth: ray casting with camera.pixel_rays, closed-form
compositing sums, and the identity view. Every analytic comparison is held to 1e-4 or tighter."""
import math

import pytest
import torch

from gmnr.render import camera, mpi

F64 = torch.float64
FOV = 12.6
SRC_HW = (32, 40)  # non-square on purpose: catches swapped H/W
TGT_HW = (36, 44)
TGT_FOV = 16.0  # wider than the canonical fov, so the plane's edges are in view
TOL = 1e-4


def canonical(dtype=F64):
    c2w = camera.pose_to_cam2world(torch.zeros(1, dtype=dtype), torch.zeros(1, dtype=dtype), 0.0, radius=1.0)
    return c2w, camera.intrinsics_from_fov(FOV, SRC_HW[1], SRC_HW[0], dtype=dtype)


def targets(yaw, pitch, roll, radius, dtype=F64):
    t = lambda v: torch.as_tensor(v, dtype=dtype)  # noqa: E731
    c2w = camera.pose_to_cam2world(t(yaw), t(pitch), t(roll), radius=t(radius))
    return c2w, camera.intrinsics_from_fov(TGT_FOV, TGT_HW[1], TGT_HW[0], dtype=dtype)


def ray_cast(src_c2w, src_k, tgt_c2w, tgt_k, d, hw):
    """Independent truth: intersect each target pixel ray with the plane z_src = d (world space)."""
    origins, dirs = camera.pixel_rays(tgt_c2w, tgt_k, *hw)  # [B, H, W, 3]
    b = origins.shape[0]
    src = src_c2w.expand(b, 4, 4)[:, None, None]
    normal, centre = src[..., :3, 2], src[..., :3, 3]
    cos = (dirs * normal).sum(-1)
    s = (d - ((origins - centre) * normal).sum(-1)) / cos  # distance along the unit ray
    hit = origins + s[..., None] * dirs
    plane_x = ((hit - centre) * src[..., :3, 0]).sum(-1)
    plane_y = ((hit - centre) * src[..., :3, 1]).sum(-1)
    z = s * (dirs * tgt_c2w[:, None, None, :3, 2]).sum(-1)
    uv, _ = camera.project(hit.reshape(b, -1, 3), src_c2w.expand(b, 4, 4), src_k)
    uv = uv.reshape(b, *hw, 2)
    return {"s": s, "cos": cos, "x": plane_x, "y": plane_y, "z": z, "u": uv[..., 0], "v": uv[..., 1]}


def texture_fn(x, y):
    """Smooth RGB on plane coordinates (metres): low curvature per texel keeps bilinear error < 5e-5."""
    return torch.stack([0.5 + 1.5 * x + 0.3 * torch.sin(4.0 * x + 0.3),
                        0.5 + 0.4 * torch.cos(4.0 * y - 0.2),
                        0.5 + 0.3 * torch.sin(3.0 * (x + y))], dim=-3)


def texel_texture(src_k, d, dtype=F64):
    """Texture [3, Hs, Ws] sampled at texel centres of the plane z = d of the canonical frustum."""
    hs, ws = SRC_HW
    v, u = torch.meshgrid(torch.arange(hs, dtype=dtype) + 0.5, torch.arange(ws, dtype=dtype) + 0.5, indexing="ij")
    x = (u - src_k[0, 2]) * d / src_k[0, 0]
    y = (v - src_k[1, 2]) * d / src_k[1, 1]
    return texture_fn(x, y)


def inside(truth, margin=1.0):
    hs, ws = SRC_HW
    return ((truth["s"] > 0) & (truth["u"] > margin) & (truth["u"] < ws - margin)
            & (truth["v"] > margin) & (truth["v"] < hs - margin))


# ------------------------------------------------------------------ planes and compositing

def test_plane_depths_uniform_in_disparity_near_to_far():
    d = mpi.plane_depths(0.95, 1.12, 7, dtype=F64)
    assert d.shape == (7,) and d.dtype == F64
    assert d[0] == 0.95 and d[-1] == 1.12
    assert bool((d[1:] > d[:-1]).all())
    step = (1.0 / d).diff()
    assert torch.allclose(step, step[0].expand_as(step), atol=1e-12) and step[0] < 0
    assert mpi.plane_depths(2.55, 2.8, 96).dtype == torch.get_default_dtype()
    for bad in [(0.95, 1.12, 1), (1.12, 0.95, 4), (0.0, 1.0, 4), (1.0, 1.0, 4), (0.9, 1.1, 2.5)]:
        with pytest.raises(ValueError):
            mpi.plane_depths(*bad)


def test_constant_alpha_composite_closed_form():
    p, h, w = 5, 3, 4
    alphas = [0.0, 0.3, 0.75, 1.0]
    colours = torch.rand(p, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    z = mpi.plane_depths(0.95, 1.12, p, dtype=F64)
    alpha = torch.tensor(alphas, dtype=F64).view(-1, 1, 1, 1, 1).expand(-1, p, 1, h, w)
    rgb = colours.view(1, p, 3, 1, 1).expand(len(alphas), p, 3, h, w)
    image, depth, weights = mpi.composite(rgb, alpha, z)
    assert image.shape == (4, 3, h, w) and depth.shape == (4, 1, h, w) and weights.shape == (4, p, 1, h, w)
    for b, a in enumerate(alphas):
        q = 1.0 - a + 1e-10
        expect_rgb = sum(a * q ** i * colours[i] for i in range(p))
        expect_depth = sum(a * q ** i * z[i] for i in range(p))
        assert (image[b] - expect_rgb.view(3, 1, 1)).abs().max() <= 1e-12
        assert (depth[b] - expect_depth).abs().max() <= 1e-12
        assert (weights[b].sum(0) - (1.0 - (1.0 - a) ** p)).abs().max() <= 1e-8


def test_constant_alpha_planes_from_rotated_camera_closed_form():
    """Constant-alpha, constant-colour planes seen obliquely still composite to the closed form
    wherever the pixel ray hits every plane inside its extent."""
    p, a = 4, 0.35
    depths = mpi.plane_depths(0.95, 1.12, p, dtype=F64)
    src, src_k = canonical()
    tgt, tgt_k = targets([0.2, -0.25], [0.1, -0.05], [0.05, 0.0], [1.0, 1.05])
    colours = torch.rand(p, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    rgb = colours.view(1, p, 3, 1, 1).expand(2, p, 3, *SRC_HW)
    alpha = torch.full((2, p, 1, *SRC_HW), a, dtype=F64)
    out = mpi.render_mpi(rgb, alpha, depths, src, src_k, tgt, tgt_k, TGT_HW)
    region = torch.stack([inside(ray_cast(src, src_k, tgt, tgt_k, d, TGT_HW)) for d in depths]).all(0)
    assert region.float().mean() > 0.2
    q = 1.0 - a + 1e-10
    expect = sum(a * q ** i * colours[i] for i in range(p))
    err = (out["rgb"].permute(0, 2, 3, 1)[region] - expect).abs().max()
    assert err <= 1e-10, err
    acc_err = (out["alpha_acc"][:, 0][region] - (1.0 - (1.0 - a) ** p)).abs().max()
    assert acc_err <= 1e-8, acc_err


def test_composite_per_pixel_and_batched_depths_agree():
    g = torch.Generator().manual_seed(3)
    rgb, alpha = torch.rand(2, 3, 3, 2, 2, generator=g, dtype=F64), torch.rand(2, 3, 1, 2, 2, generator=g, dtype=F64)
    z = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    ref = mpi.composite(rgb, alpha, z)[1]
    assert torch.equal(mpi.composite(rgb, alpha, z.expand(2, 3))[1], ref)
    assert torch.allclose(mpi.composite(rgb, alpha, z.view(1, 3, 1, 1, 1).expand(2, 3, 1, 2, 2))[1], ref, atol=1e-15)


# ------------------------------------------------------------------ geometry against ray casting

def test_homography_matches_ray_cast_and_its_scale_is_inverse_depth():
    depths = mpi.plane_depths(0.95, 1.12, 3, dtype=F64)
    src, src_k = canonical()
    tgt, tgt_k = targets([0.3, -0.2, math.pi / 2], [-0.1, 0.15, 0.0], [0.1, -0.2, 0.0], [1.1, 0.9, 1.0])
    hom = mpi.plane_homographies(src, src_k, tgt, tgt_k, depths)
    assert hom.shape == (3, 3, 3, 3)
    v, u = torch.meshgrid(torch.arange(TGT_HW[0], dtype=F64) + 0.5, torch.arange(TGT_HW[1], dtype=F64) + 0.5,
                          indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)
    for i, d in enumerate(depths):
        truth = ray_cast(src, src_k, tgt, tgt_k, d, TGT_HW)
        q = torch.einsum("bij,hwj->bhwi", hom[:, i], pix)
        ok = (truth["s"] > 0) & (truth["cos"].abs() > 1e-3)
        uv_err = (q[..., :2] / q[..., 2:] - torch.stack([truth["u"], truth["v"]], -1))[ok].abs().max()
        assert uv_err <= 1e-6, uv_err
        assert ((q[..., 2] - d / truth["z"])[truth["cos"].abs() > 1e-3]).abs().max() <= 1e-8
        z, mask = mpi.plane_depth_in_target(src, tgt, tgt_k, depths, TGT_HW)
        assert z.shape == mask.shape == (3, 3, 1, *TGT_HW)
        assert torch.equal(mask[:, i, 0][truth["cos"].abs() > 1e-3], ok[truth["cos"].abs() > 1e-3])
        assert (z[:, i, 0][ok] - truth["z"][ok]).abs().max() <= 1e-9
        assert (z[:, i, 0][~mask[:, i, 0]] == 0).all()
    # the sideways camera sits between the planes: some planes are partly behind it
    assert not mask[2].all() and mask[2].any()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_opaque_textured_plane_matches_analytic_warp(dtype):
    depths = mpi.plane_depths(0.95, 1.12, 3, dtype=F64)
    src, src_k = canonical()
    tgt, tgt_k = targets([0.22, -0.15], [-0.08, 0.12], [0.1, -0.05], [1.04, 0.97])
    g = torch.Generator().manual_seed(4)
    rgb = torch.rand(2, 3, 3, *SRC_HW, generator=g, dtype=F64)
    rgb[:, 1] = texel_texture(src_k, depths[1])
    alpha = torch.zeros(2, 3, 1, *SRC_HW, dtype=F64)
    alpha[:, 1] = 1.0  # only the middle plane is visible: ordering and masking both matter
    cast = lambda t: t.to(dtype)  # noqa: E731
    out = mpi.render_mpi(cast(rgb), cast(alpha), cast(depths), cast(src), cast(src_k), cast(tgt), cast(tgt_k), TGT_HW)
    assert out["rgb"].dtype == dtype and out["rgb"].shape == (2, 3, *TGT_HW)
    truth = ray_cast(src, src_k, tgt, tgt_k, depths[1], TGT_HW)
    region = inside(truth)
    assert 0.3 < region.float().mean() < 0.95  # the plane's edge is in view
    expect = texture_fn(truth["x"], truth["y"])  # [B, 3, H, W]
    rgb_err = (out["rgb"].double() - expect).permute(0, 2, 3, 1)[region].abs().max()
    depth_err = (out["depth"][:, 0].double() - truth["z"])[region].abs().max()
    assert rgb_err <= TOL, rgb_err
    assert depth_err <= TOL, depth_err
    hs, ws = SRC_HW
    outside = (truth["u"] < -1) | (truth["u"] > ws + 1) | (truth["v"] < -1) | (truth["v"] > hs + 1)
    assert outside.any()
    assert (out["rgb"].permute(0, 2, 3, 1)[outside] == 0).all() and (out["alpha_acc"][:, 0][outside] == 0).all()


def test_planes_behind_the_camera_are_not_rendered():
    """A camera moved forward between the planes: the near plane is behind it, and its mirrored
    (negative-depth) hit would land inside the texture if the renderer ignored the sign."""
    depths = torch.tensor([0.95, 1.12], dtype=F64)
    src, src_k = canonical()
    tgt = src.clone()
    tgt[:, :3, 3] += 1.0 * src[:, :3, 2]  # one unit along the canonical optical axis
    rgb = torch.zeros(1, 2, 3, *SRC_HW, dtype=F64)
    rgb[:, 0, 0], rgb[:, 1, 1] = 1.0, 1.0  # near plane red, far plane green
    alpha = torch.ones(1, 2, 1, *SRC_HW, dtype=F64)
    out = mpi.render_mpi(rgb, alpha, depths, src, src_k, tgt, src_k, SRC_HW)
    assert (out["rgb"] - torch.tensor([0.0, 1.0, 0.0], dtype=F64).view(1, 3, 1, 1)).abs().max() <= 1e-9
    assert (out["depth"] - 0.12).abs().max() <= 1e-9
    z, mask = mpi.plane_depth_in_target(src, tgt, src_k, depths, SRC_HW)
    assert not mask[:, 0].any() and mask[:, 1].all() and (z[:, 0] == 0).all()


def test_opaque_plane_depth_from_frontal_camera_is_exactly_d():
    depths = mpi.plane_depths(0.95, 1.12, 4, dtype=F64)
    src, src_k = canonical()
    alpha = torch.zeros(1, 4, 1, *SRC_HW, dtype=F64)
    alpha[:, 2] = 1.0
    rgb = torch.rand(1, 3, *SRC_HW, dtype=F64)
    out = mpi.render_mpi(rgb, alpha, depths, src, src_k, src, src_k, SRC_HW)
    err = (out["depth"] - depths[2]).abs().max()
    assert err <= 1e-9, err


def test_canonical_view_reproduces_textures_exactly():
    p = 5
    depths = mpi.plane_depths(0.95, 1.12, p, dtype=F64)
    src, src_k = canonical()
    g = torch.Generator().manual_seed(5)
    rgb = torch.rand(2, p, 3, *SRC_HW, generator=g, dtype=F64)
    alpha = torch.rand(2, p, 1, *SRC_HW, generator=g, dtype=F64)
    alpha[alpha < 0.2], alpha[alpha > 0.8] = 0.0, 1.0
    hom = mpi.plane_homographies(src, src_k, src.expand(2, 4, 4), src_k, depths)
    assert torch.allclose(hom, torch.eye(3, dtype=F64).expand(2, p, 3, 3), atol=1e-12)
    assert (mpi.warp_planes(torch.cat([rgb, alpha], 2), hom, SRC_HW) - torch.cat([rgb, alpha], 2)).abs().max() <= 1e-12
    out = mpi.render_mpi(rgb, alpha, depths, src, src_k, src.expand(2, 4, 4), src_k, SRC_HW)
    ref_rgb, ref_depth, ref_w = mpi.composite(rgb, alpha, depths)
    for key, ref in (("rgb", ref_rgb), ("depth", ref_depth), ("weights", ref_w)):
        assert (out[key] - ref).abs().max() <= 1e-12, key
    shared = mpi.render_mpi(rgb[:, 0], alpha, depths, src, src_k, src, src_k, SRC_HW)
    assert (shared["rgb"] - mpi.composite(rgb[:, :1].expand(-1, p, -1, -1, -1), alpha, depths)[0]).abs().max() <= 1e-12


def test_shared_rgb_and_batch_broadcasting_agree_with_explicit_forms():
    p = 4
    depths = mpi.plane_depths(0.95, 1.12, p, dtype=F64)
    src, src_k = canonical()
    tgt, tgt_k = targets([0.3, -0.1], [0.05, -0.15], [0.0, 0.1], [1.0, 1.1])
    g = torch.Generator().manual_seed(6)
    image = torch.rand(1, 3, *SRC_HW, generator=g, dtype=F64)
    alpha = torch.rand(1, p, 1, *SRC_HW, generator=g, dtype=F64)
    per_plane = image[:, None].expand(1, p, 3, *SRC_HW).contiguous()
    a = mpi.render_mpi(image.expand(2, -1, -1, -1), alpha.expand(2, -1, -1, -1, -1), depths, src, src_k, tgt, tgt_k, TGT_HW)
    b = mpi.render_mpi(per_plane, alpha, depths, src[0], src_k, tgt, tgt_k.expand(2, 3, 3), TGT_HW)
    for key in ("rgb", "depth", "weights", "alpha_acc"):
        assert a[key].shape[0] == 2 and (a[key] - b[key]).abs().max() <= 1e-12, key
    for i in range(2):
        single = mpi.render_mpi(image, alpha, depths, src, src_k, tgt[i:i + 1], tgt_k, TGT_HW)
        assert (single["rgb"][0] - a["rgb"][i]).abs().max() <= 1e-12


# ------------------------------------------------------------------ gradients and errors

def test_gradients_finite_with_saturated_alpha_and_awkward_cameras():
    p = 6
    dtype = torch.float32
    depths = mpi.plane_depths(0.95, 1.12, p, dtype=dtype)
    src, src_k = canonical(dtype)
    g = torch.Generator().manual_seed(7)
    alpha = torch.rand(3, p, 1, *SRC_HW, generator=g)
    alpha[alpha < 0.3], alpha[alpha > 0.6] = 0.0, 1.0
    alpha[:, -2:] = 1.0  # several fully opaque planes: transmittance underflows towards 1e-10^k
    alpha.requires_grad_(True)
    image = torch.rand(3, 3, *SRC_HW, generator=g).requires_grad_(True)
    # oblique view; a camera between the planes looking sideways; a camera behind all planes
    yaw = torch.tensor([0.25, math.pi / 2, 2.5], requires_grad=True)
    pitch = torch.tensor([-0.1, 0.0, 0.1], requires_grad=True)
    tgt = camera.pose_to_cam2world(yaw, pitch, torch.zeros(3), radius=1.0)
    tgt_k = camera.intrinsics_from_fov(TGT_FOV, TGT_HW[1], TGT_HW[0], dtype=dtype)
    out = mpi.render_mpi(image, alpha, depths, src, src_k, tgt, tgt_k, TGT_HW)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    (out["rgb"].sum() + out["depth"].sum() + out["alpha_acc"].sum()).backward()
    for name, grad in (("alpha", alpha.grad), ("rgb", image.grad), ("yaw", yaw.grad), ("pitch", pitch.grad)):
        assert grad is not None and torch.isfinite(grad).all(), name
    assert yaw.grad[0].abs() > 0 and image.grad.abs().sum() > 0 and alpha.grad.abs().sum() > 0


def test_composite_gradcheck_including_alpha_zero_and_one():
    g = torch.Generator().manual_seed(8)
    rgb = torch.rand(1, 3, 3, 2, 2, generator=g, dtype=F64, requires_grad=True)
    alpha = torch.rand(1, 3, 1, 2, 2, generator=g, dtype=F64)
    alpha[0, 0, 0, 0, 0], alpha[0, 1, 0, 0, 0], alpha[0, 0, 0, 1, 1] = 1.0, 1.0, 0.0
    alpha.requires_grad_(True)
    z = torch.tensor([1.0, 1.5, 2.0], dtype=F64)
    assert torch.autograd.gradcheck(lambda c, a: mpi.composite(c, a, z)[:2], (rgb, alpha))


def test_bad_shapes_raise_clear_errors():
    src, src_k = canonical()
    depths = mpi.plane_depths(0.95, 1.12, 3, dtype=F64)
    rgb, alpha = torch.rand(1, 3, 3, 4, 5, dtype=F64), torch.rand(1, 3, 1, 4, 5, dtype=F64)
    with pytest.raises(ValueError, match="alpha must be"):
        mpi.composite(rgb, alpha[:, :2], depths)
    with pytest.raises(ValueError, match="rgb must be"):
        mpi.composite(rgb[0], alpha, depths)
    with pytest.raises(ValueError, match="z"):
        mpi.composite(rgb, alpha, depths[:2])
    with pytest.raises(ValueError, match="rgb must be"):
        mpi.render_mpi(rgb[:, :2], alpha, depths, src, src_k, src, src_k, (4, 5))
    with pytest.raises(ValueError, match="depths must be"):
        mpi.render_mpi(rgb, alpha, depths[:2], src, src_k, src, src_k, (4, 5))
    with pytest.raises(ValueError, match="src_K"):
        mpi.plane_homographies(src, src_k[:2], src, src_k, depths)
    with pytest.raises(ValueError, match="tgt_cam2world"):
        mpi.plane_homographies(src, src_k, src[:, :3], src_k, depths)
    with pytest.raises(ValueError, match="homographies must be"):
        mpi.warp_planes(rgb, torch.eye(3, dtype=F64).expand(1, 2, 3, 3), (4, 5))
    with pytest.raises(ValueError, match="do not broadcast"):
        mpi.plane_homographies(src.expand(2, 4, 4), src_k, src.expand(3, 4, 4), src_k, depths)
    with pytest.raises(ValueError, match="out_hw"):
        mpi.warp_planes(rgb, torch.eye(3, dtype=F64).expand(1, 3, 3, 3), (0, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    depths = mpi.plane_depths(0.95, 1.12, 4)
    src, src_k = canonical(torch.float32)
    tgt, tgt_k = targets([0.2], [0.1], [0.0], [1.0], dtype=torch.float32)
    g = torch.Generator().manual_seed(9)
    image, alpha = torch.rand(1, 3, *SRC_HW, generator=g), torch.rand(1, 4, 1, *SRC_HW, generator=g)
    args = (image, alpha, depths, src, src_k, tgt, tgt_k)
    cpu = mpi.render_mpi(*args, TGT_HW)
    gpu = mpi.render_mpi(*(a.cuda() for a in args), TGT_HW)
    for key in cpu:
        assert gpu[key].is_cuda and (gpu[key].cpu() - cpu[key]).abs().max() <= 1e-4, key
