"""Multiplane-image (MPI) rendering as pure tensor functions (GMPI's fast renderer).

Geometry (GMPI): P fronto-parallel planes live in the frame of a *canonical* camera, the
dataset's frontal camera ``camera.pose_to_cam2world(0, 0, 0, radius, center)``. Plane ``i`` is the
set ``z = d_i`` in that camera's (OpenCV) frame. Each plane has its own texture extent, given as
source intrinsics: ``src_K`` [3, 3] (every plane spans the canonical frustum; the texture is an
image of the canonical view) or per plane ``[B|1, P, 3, 3]`` (GMPI's *confined volume*, see
:func:`confined_plane_extents` and :func:`plane_texture_intrinsics`). Texel centre ``(j + 0.5,
i + 0.5)`` of plane i is the point that ``src_K[i]`` projects to that pixel. Rendering a target view
warps every plane with its plane-induced homography (bilinear, zeros outside the plane) and
composites front to back: ``w_i = a_i * prod_{j<i} (1 - a_j + 1e-10)``, ``rgb = sum_i w_i c_i``,
``depth = sum_i w_i z_i``. Everything is O(P * H * W); no tensor carries a 3x3 matrix per pixel.

Conventions follow :mod:`gmnr.render.camera`: ``cam2world`` [B, 4, 4] (OpenCV frame), intrinsics
in pixel units of the image they describe (``src_K`` for the texture size, ``tgt_K`` for the
output size), pixel centres at ``i + 0.5``. Camera/intrinsic batches of size 1 broadcast.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

TRANSMITTANCE_EPS = 1e-10  # GMPI's term in prod_{j<i}(1 - a_j + eps): keeps the product non-zero
MIN_INV_DEPTH_RATIO = 1e-6  # rays with d_i / z <= this (behind the camera, or ~infinitely far) are invalid


def _require(cond: bool, msg: str) -> None:
    """Shape/value check that survives ``python -O`` (unlike ``assert``)."""
    if not cond:
        raise ValueError(msg)


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


# --------------------------------------------------------------------------------------------
# Planes and compositing
# --------------------------------------------------------------------------------------------

def plane_depths(near: float, far: float, n_planes: int, dtype=None, device=None) -> Tensor:
    """Depths [P] uniform in disparity between ``near`` and ``far``, ordered near to far.

    Uniform disparity spaces planes by equal image-space parallax, so nearby planes (where a
    small depth change moves pixels most) are denser. Endpoints are exactly ``near`` and ``far``.
    """
    _require(int(n_planes) == n_planes and n_planes >= 2, f"n_planes must be an integer >= 2, got {n_planes}")
    _require(0.0 < near < far, f"need 0 < near < far, got near={near}, far={far}")
    disparity = torch.linspace(1.0 / near, 1.0 / far, int(n_planes), dtype=torch.float64)
    depths = 1.0 / disparity
    depths[0], depths[-1] = near, far
    return depths.to(dtype=dtype or torch.get_default_dtype(), device=device)


def _plane_values(z: Tensor, batch: int, n_planes: int, hw: tuple[int, int], like: Tensor) -> Tensor:
    """Per-plane depths as [B|1, P, 1, 1|H, 1|W] for broadcasting against [B, P, 1, H, W]."""
    z = torch.as_tensor(z).to(dtype=like.dtype, device=like.device)
    if z.ndim == 1:
        _require(z.shape[0] == n_planes, f"z [P] must have P={n_planes} entries, got {_shape(z)}")
        return z.view(1, n_planes, 1, 1, 1)
    if z.ndim == 2:
        _require(z.shape[0] in (1, batch) and z.shape[1] == n_planes,
                 f"z [B, P] must be [{batch}, {n_planes}] (or batch 1), got {_shape(z)}")
        return z.view(z.shape[0], n_planes, 1, 1, 1)
    _require(z.ndim == 5 and z.shape[0] in (1, batch) and tuple(z.shape[1:]) == (n_planes, 1, *hw),
             f"per-pixel z must be [{batch}, {n_planes}, 1, {hw[0]}, {hw[1]}], got {_shape(z)}")
    return z


def composite(rgb: Tensor, alpha: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back over-compositing of planes ordered near to far.

    rgb [B, P, C, H, W] (C = 3 for colour; any C works), alpha [B, P, 1, H, W], z [P], [B, P] or
    per-pixel [B, P, 1, H, W]. Returns rgb [B, C, H, W], depth [B, 1, H, W], weights [B, P, 1, H, W]
    with ``w_i = a_i * prod_{j<i}(1 - a_j + 1e-10)`` (exclusive cumulative product = the
    transmittance in front of plane i). The 1e-10 keeps transmittance strictly positive so the
    product and its gradient stay defined when a plane is fully opaque.
    """
    _require(rgb.ndim == 5, f"rgb must be [B, P, C, H, W], got {_shape(rgb)}")
    b, p, _, h, w = rgb.shape
    _require(_shape(alpha) == (b, p, 1, h, w), f"alpha must be [B, P, 1, H, W] = {(b, p, 1, h, w)}, got {_shape(alpha)}")
    z = _plane_values(z, b, p, (h, w), alpha)
    transmit = torch.cumprod(1.0 - alpha + TRANSMITTANCE_EPS, dim=1)
    transmit = torch.cat([torch.ones_like(alpha[:, :1]), transmit[:, :-1]], dim=1)
    weights = alpha * transmit
    return (weights * rgb).sum(dim=1), (weights * z).sum(dim=1), weights


# --------------------------------------------------------------------------------------------
# Plane geometry
# --------------------------------------------------------------------------------------------

def _as_cams(cam2world: Tensor, name: str) -> Tensor:
    cam2world = torch.as_tensor(cam2world)
    _require(cam2world.shape[-2:] == (4, 4) and cam2world.ndim in (2, 3),
             f"{name} must be [B, 4, 4] or [4, 4], got {_shape(cam2world)}")
    return cam2world.reshape(-1, 4, 4)


def _as_intrinsics(k: Tensor, like: Tensor, name: str) -> Tensor:
    k = torch.as_tensor(k)
    _require(k.shape[-2:] == (3, 3) and k.ndim in (2, 3), f"{name} must be [3, 3] or [B, 3, 3], got {_shape(k)}")
    return k.to(dtype=like.dtype, device=like.device).reshape(-1, 3, 3)


def _as_source_intrinsics(k: Tensor, like: Tensor, n_planes: int) -> Tensor:
    """Source (texture) intrinsics as [B|1, P|1, 3, 3]: one matrix for every plane ([3, 3] or
    [B, 3, 3]) or one per plane ([B|1, P, 3, 3], GMPI's per-plane extents)."""
    k = torch.as_tensor(k)
    if k.ndim == 4:
        _require(k.shape[-2:] == (3, 3) and k.shape[1] == n_planes,
                 f"per-plane src_K must be [B, P, 3, 3] with P={n_planes}, got {_shape(k)}")
        return k.to(dtype=like.dtype, device=like.device)
    return _as_intrinsics(k, like, "src_K")[:, None]


def _batch_size(*sizes: int) -> int:
    batch = max(sizes)
    _require(all(s in (1, batch) for s in sizes), f"batch sizes {sizes} do not broadcast")
    return batch


def _as_depths(depths: Tensor, like: Tensor) -> Tensor:
    """Plane depths as [B|1, P] in the dtype/device of ``like``."""
    depths = torch.as_tensor(depths).to(dtype=like.dtype, device=like.device)
    _require(depths.ndim in (1, 2) and depths.shape[-1] >= 1, f"depths must be [P] or [B, P], got {_shape(depths)}")
    return depths.reshape(-1, depths.shape[-1])


def relative_pose(src_cam2world: Tensor, tgt_cam2world: Tensor) -> Tensor:
    """[B, 4, 4] transform from target-camera coordinates to source-camera coordinates.

    ``src^-1 @ tgt`` solved as a linear system (no explicit inverse); batches of 1 broadcast.
    """
    src = _as_cams(src_cam2world, "src_cam2world")
    tgt = _as_cams(tgt_cam2world, "tgt_cam2world").to(src)
    _batch_size(src.shape[0], tgt.shape[0])
    return torch.linalg.solve(src, tgt)


def plane_homographies(src_cam2world: Tensor, src_K: Tensor, tgt_cam2world: Tensor, tgt_K: Tensor,
                       depths: Tensor) -> Tensor:
    """Homographies [B, P, 3, 3] taking target pixels (u, v, 1) to source/texture pixels per plane.

    ``src_K`` is [3, 3], [B, 3, 3] (the same texture extent on every plane) or [B|1, P, 3, 3] (one per
    plane); K_s below is plane i's.

    Derivation. Let ``[R | t] = src_cam2world^-1 tgt_cam2world`` map target camera coordinates
    X_t to source ones, X_s = R X_t + t, and let plane i be e3^T X_s = d_i. The ray of target pixel
    x is X_t = z K_t^-1 x. On the plane e3^T (R X_t + t) = d_i, i.e. r3^T X_t = d_i - t_z =: delta_i
    with r3 = R^T e3 (the plane normal in target coordinates, the third row of R) and delta_i the
    target camera's signed distance to the plane. On the plane r3^T X_t / delta_i = 1, so
    X_s = R X_t + t (r3^T X_t) / delta_i = (R + t r3^T / delta_i) X_t and
        x_s ~ K_s (R + t r3^T / delta_i) K_t^-1 x,
    the textbook plane-induced homography K_s (R - t n^T / d) K_t^-1 with the plane written in the
    target frame as n^T X_t + d = 0, n = -r3, d = delta_i.

    Scale: K_s and K_t^-1 have third row e3^T and e3^T X_s = d_i, so the third component of H x
    equals d_i / z, with z the target-camera depth of the intersection: it is positive exactly when
    the plane is hit in front of the target camera. :func:`warp_planes` relies on this scale.
    """
    rel = relative_pose(src_cam2world, tgt_cam2world)
    d = _as_depths(depths, rel)
    k_s = _as_source_intrinsics(src_K, rel, d.shape[1])  # [B|1, P|1, 3, 3]
    k_t = _as_intrinsics(tgt_K, rel, "tgt_K")
    _batch_size(rel.shape[0], k_s.shape[0], k_t.shape[0], d.shape[0])
    r, t = rel[:, :3, :3], rel[:, :3, 3]
    delta = d - t[:, 2:3]  # [B, P]
    eps = torch.finfo(delta.dtype).eps
    delta = torch.where(delta.abs() < eps, torch.full_like(delta, eps), delta)  # plane through the camera centre
    plane = r[:, None] + t[:, None, :, None] * r[:, None, 2:3, :] / delta[..., None, None]  # [B, P, 3, 3]
    return k_s @ plane @ torch.linalg.inv(k_t)[:, None]


def pixel_centres(out_hw: tuple[int, int], like: Tensor) -> Tensor:
    """Homogeneous pixel centres [H, W, 3] = (u, v, 1) with u = x + 0.5, v = y + 0.5."""
    h, w = out_hw
    ys = torch.arange(h, dtype=like.dtype, device=like.device) + 0.5
    xs = torch.arange(w, dtype=like.dtype, device=like.device) + 0.5
    v, u = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([u, v, torch.ones_like(u)], dim=-1)


def _check_hw(hw, name: str) -> tuple[int, int]:
    _require(len(tuple(hw)) == 2 and all(int(s) == s and s >= 1 for s in hw), f"{name} must be (H, W) >= 1, got {hw}")
    return int(hw[0]), int(hw[1])


def plane_depth_in_target(src_cam2world: Tensor, tgt_cam2world: Tensor, tgt_K: Tensor, depths: Tensor,
                          out_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Target-camera depth z [B, P, 1, H, W] of each pixel ray's hit on each plane, and its mask.

    From the derivation in :func:`plane_homographies`, z = delta_i / (r3^T K_t^-1 x): a scalar field
    per plane, so no per-pixel matrices are needed. The mask [B, P, 1, H, W] is True where the ray
    hits the (infinite) plane in front of the camera (d_i / z > 1e-6, the same test warp_planes
    applies); it ignores the plane's finite extent, where the warped alpha is zero anyway. Depth is
    0 where the mask is False, so ``weights * z`` stays finite (the weights are zero there).
    """
    out_hw = _check_hw(out_hw, "out_hw")
    rel = relative_pose(src_cam2world, tgt_cam2world)
    k_t = _as_intrinsics(tgt_K, rel, "tgt_K")
    d = _as_depths(depths, rel)
    batch = _batch_size(rel.shape[0], k_t.shape[0], d.shape[0])
    row = rel[:, 2, :3, None].mT @ torch.linalg.inv(k_t)  # [B, 1, 3]: r3^T K_t^-1
    cos_term = torch.einsum("bj,hwj->bhw", row[:, 0], pixel_centres(out_hw, rel))  # r3^T K_t^-1 x
    delta = d - rel[:, 2:3, 3]  # [B, P]
    eps = torch.finfo(delta.dtype).eps
    delta = torch.where(delta.abs() < eps, torch.full_like(delta, eps), delta)
    inv_z = cos_term[:, None] / delta[..., None, None]  # [B, P, H, W]
    mask = (inv_z * d[..., None, None]) > MIN_INV_DEPTH_RATIO
    z = torch.where(mask, 1.0 / torch.where(mask, inv_z, torch.ones_like(inv_z)), torch.zeros_like(inv_z))
    shape = (batch, d.shape[1], 1, *out_hw)
    return z.unsqueeze(2).expand(shape), mask.unsqueeze(2).expand(shape)


# --------------------------------------------------------------------------------------------
# Plane extents (GMPI's confined volume)
# --------------------------------------------------------------------------------------------

def confined_plane_extents(depths: Tensor, fov_deg: float, radius: float, center, yaw_max: float,
                           pitch_max: float, enlarge: float = 1.001, grid: int = 100) -> Tensor:
    """Half-extents [P, 2] (x, y, metres in the canonical frame) of the planes of an MPI that every
    camera of a pose box sees through, as GMPI sizes them
    (``gmpi/utils/mpi_utils.py:compute_plane_dhws_given_cam_pose_spatial_range_confined``).

    Cameras look at ``center`` from distance ``radius`` (:func:`camera.pose_to_cam2world`, roll 0)
    with yaw in [-yaw_max, yaw_max] and pitch in [-pitch_max, pitch_max] (GMPI: +-n_truncated_stds
    sigma), sampled on a ``grid`` x ``grid`` lattice that includes the corners (GMPI: 100 x 100).
    The four corner rays of each camera's frustum (image corners, not pixel centres) are
    intersected with the farthest plane; the background (last) plane spans the largest |x| and |y|
    of all of them, times ``enlarge`` (GMPI: 1.001), so no camera in the box sees past it. Every
    other plane spans the canonical camera's frustum at the farthest depth (GMPI's "confined"
    size; the same world size on every plane). The extents are of texel *centres* (GMPI samples
    with align_corners=True): :func:`plane_texture_intrinsics` turns them into per-plane src_K.
    Square images (the fov spans both axes).
    """
    d = torch.as_tensor(depths, dtype=torch.float64).reshape(-1)
    _require(d.numel() >= 2 and bool((d > 0).all()), f"depths must be [P] > 0 with P >= 2, got {_shape(d)}")
    _require(yaw_max >= 0 and pitch_max >= 0 and enlarge >= 1 and grid >= 2,
             f"need yaw_max, pitch_max >= 0, enlarge >= 1, grid >= 2; got {yaw_max}, {pitch_max}, {enlarge}, {grid}")
    from gmnr.render.camera import pose_to_cam2world
    far = float(d[-1])
    tan_half = math.tan(math.radians(fov_deg) / 2)
    yaw, pitch = torch.meshgrid(torch.linspace(-yaw_max, yaw_max, grid, dtype=torch.float64),
                                torch.linspace(-pitch_max, pitch_max, grid, dtype=torch.float64), indexing="ij")
    cams = pose_to_cam2world(yaw.reshape(-1), pitch.reshape(-1), 0.0, radius, center)
    canonical = pose_to_cam2world(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), 0.0,
                                  radius, center)
    rel = torch.linalg.solve(canonical, cams)  # camera -> canonical coordinates
    corners = torch.tensor([[sx * tan_half, sy * tan_half, 1.0] for sx in (-1, 1) for sy in (-1, 1)],
                           dtype=torch.float64)  # corner rays in camera coordinates
    dirs = torch.einsum("nij,kj->nki", rel[:, :3, :3], corners)  # [N, 4, 3]
    origin = rel[:, None, :3, 3]
    _require(bool((dirs[..., 2] > 0).all()), "a camera of the pose box looks away from the planes")
    hit = origin + (far - origin[..., 2:]) / dirs[..., 2:] * dirs
    background = hit[..., :2].abs().amax(dim=(0, 1)) * enlarge
    front = torch.tensor([far * tan_half, far * tan_half], dtype=torch.float64)
    out = front.expand(d.numel(), 2).clone()
    out[-1] = background
    return out.to(torch.get_default_dtype())


def plane_texture_intrinsics(depths: Tensor, half_extents: Tensor, tex_hw: tuple[int, int]) -> Tensor:
    """Per-plane source intrinsics [P, 3, 3] for textures of ``tex_hw`` whose texel centres span
    ``+-half_extents`` [P, 2] (x, y) on the planes z = ``depths`` [P] of the canonical frame.

    Texel j's centre (pixel j + 0.5) sits at x = -h + 2 h j / (W - 1), i.e. u = f x / d + W / 2
    with f = d (W - 1) / (2 h): the first and last texel centres are the plane's edges, as GMPI's
    grid_sample with align_corners=True has it, so a ray that hits the plane inside +-h reads
    texels only (never the zero padding)."""
    tex_hw = _check_hw(tex_hw, "tex_hw")
    h_tex, w_tex = tex_hw
    _require(min(tex_hw) >= 2, f"textures need >= 2 texels per side, got {tex_hw}")
    d = torch.as_tensor(depths).reshape(-1)
    ext = torch.as_tensor(half_extents).to(d)
    _require(ext.shape == (d.numel(), 2) and bool((ext > 0).all()),
             f"half_extents must be [P, 2] = [{d.numel()}, 2] > 0, got {_shape(ext)}")
    k = torch.zeros(d.numel(), 3, 3, dtype=d.dtype, device=d.device)
    k[:, 0, 0] = d * (w_tex - 1) / (2 * ext[:, 0])
    k[:, 1, 1] = d * (h_tex - 1) / (2 * ext[:, 1])
    k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = w_tex / 2, h_tex / 2, 1.0
    return k


# --------------------------------------------------------------------------------------------
# Warping
# --------------------------------------------------------------------------------------------

def _plane_grid(homographies: Tensor, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """Normalised grid_sample coordinates [B, P, H, W, 2] for sampling textures of size ``src_hw``.

    align_corners=False maps -1/+1 to the outer texture edges, so pixel coordinate u (centres at
    j + 0.5) becomes 2 u / Ws - 1. Rays that miss the plane in front of the camera (third
    homogeneous coordinate d_i / z <= 1e-6) are sent outside the texture, where zero padding
    yields 0; coordinates are clamped to a band just outside the texture so grazing rays never
    produce inf/nan values or gradients.
    """
    q = torch.einsum("bpij,hwj->bphwi", homographies, pixel_centres(out_hw, homographies))
    w = q[..., 2:]
    valid = w > MIN_INV_DEPTH_RATIO
    uv = q[..., :2] / torch.where(valid, w, torch.ones_like(w))
    size = torch.tensor([src_hw[1], src_hw[0]], dtype=uv.dtype, device=uv.device)
    uv = torch.where(valid, uv, torch.full_like(uv, -2.0))
    uv = torch.minimum(torch.maximum(uv, torch.full_like(size, -2.0)), size + 2.0)
    return 2.0 * uv / size - 1.0


def _sample_planes(planes: Tensor, grid: Tensor) -> Tensor:
    """Sample per-plane textures [B, P, C, Hs, Ws] at grid [B, P, H, W, 2] -> [B, P, C, H, W]."""
    b, p, c, hs, ws = planes.shape
    h, w = grid.shape[2:4]
    planes = planes.expand(grid.shape[0], p, c, hs, ws) if b == 1 else planes
    out = F.grid_sample(planes.reshape(-1, c, hs, ws), grid.reshape(-1, h, w, 2).to(planes.dtype),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(grid.shape[0], p, c, h, w)


def _sample_shared(image: Tensor, grid: Tensor) -> Tensor:
    """Sample one image [B, C, Hs, Ws] shared by all planes at grid [B, P, H, W, 2].

    The P plane grids are stacked along the output height, so grid_sample reads the single image
    P times without materialising P copies of it. Returns a [B, P, C, H, W] view.
    """
    b, c, hs, ws = image.shape
    bg, p, h, w, _ = grid.shape
    image = image.expand(bg, c, hs, ws) if b == 1 else image
    out = F.grid_sample(image, grid.reshape(bg, p * h, w, 2).to(image.dtype),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(bg, c, p, h, w).transpose(1, 2)


def warp_planes(rgba: Tensor, homographies: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Warp plane textures [B, P, C, Hs, Ws] into the target view -> [B, P, C, H, W].

    ``homographies`` [B, P, 3, 3] come from :func:`plane_homographies` (their scale marks rays that
    hit the plane behind the camera, which sample zeros). Bilinear, zero outside the plane.
    """
    out_hw = _check_hw(out_hw, "out_hw")
    _require(rgba.ndim == 5, f"rgba must be [B, P, C, Hs, Ws], got {_shape(rgba)}")
    b, p = rgba.shape[:2]
    _require(homographies.ndim == 4 and homographies.shape[1:] == (p, 3, 3),
             f"homographies must be [B, P, 3, 3] = [{b}, {p}, 3, 3], got {_shape(homographies)}")
    batch = _batch_size(b, homographies.shape[0])
    grid = _plane_grid(homographies, rgba.shape[-2:], out_hw).expand(batch, p, *out_hw, 2)
    return _sample_planes(rgba, grid)


# --------------------------------------------------------------------------------------------
# Full render
# --------------------------------------------------------------------------------------------

def render_mpi(rgb: Tensor, alpha: Tensor, depths: Tensor, src_cam2world: Tensor, src_K: Tensor,
               tgt_cam2world: Tensor, tgt_K: Tensor, out_hw: tuple[int, int],
               return_planes: bool = False, background: Tensor | None = None) -> dict[str, Tensor]:
    """Render an MPI from target cameras.

    rgb: per-plane colours [B, P, C, Hs, Ws] or GMPI's single image shared by all planes
    [B, C, Hs, Ws] (C = 3 for colour; feature maps work too); ``background`` [B, C, Hs, Ws], with a
    shared ``rgb`` only: the colour of the last (background) plane, which then does not share
    ``rgb`` (GMPI builds it from the image's border features). alpha [B, P, 1, Hs, Ws]; depths [P]
    (or [B, P]) near to far, in the canonical (source) camera frame, all > 0; cameras [B, 4, 4];
    ``tgt_K`` [3, 3] or [B, 3, 3] in pixel units of the output size; ``src_K`` in pixel units of the
    texture, [3, 3], [B, 3, 3] or per plane [B|1, P, 3, 3] (see :func:`plane_homographies`). MPI and
    camera batches of size 1 broadcast.

    Returns ``rgb`` [B, C, H, W], ``depth`` [B, 1, H, W] (target-camera z, not normalised by the
    accumulated alpha), ``weights`` [B, P, 1, H, W] and ``alpha_acc`` [B, 1, H, W] = sum of weights;
    with ``return_planes`` also ``grid`` [B, P, H, W, 2] (each target pixel's texture coordinate
    on each plane, in grid_sample's [-1, 1] units) and ``rgb_planes`` [B, P, C, H, W].
    """
    out_hw = _check_hw(out_hw, "out_hw")
    _require(alpha.ndim == 5 and alpha.shape[2] == 1, f"alpha must be [B, P, 1, Hs, Ws], got {_shape(alpha)}")
    b, p, _, hs, ws = alpha.shape
    shared = rgb.ndim == 4
    ok = rgb.ndim in (4, 5) and rgb.shape[0] == b and rgb.shape[-2:] == (hs, ws) and (shared or rgb.shape[1] == p)
    _require(ok, f"rgb must be [B, P, C, Hs, Ws] = [{b}, {p}, C, {hs}, {ws}] or shared [B, C, Hs, Ws] = "
                 f"[{b}, C, {hs}, {ws}] to match alpha {_shape(alpha)}, got {_shape(rgb)}")
    _require(background is None or (shared and background.shape == rgb.shape),
             f"background must be [B, C, Hs, Ws] = {_shape(rgb)} and needs a shared rgb [B, C, Hs, Ws], "
             f"got {None if background is None else _shape(background)} with rgb {_shape(rgb)}")
    d = torch.as_tensor(depths)
    _require(d.ndim in (1, 2) and d.shape[-1] == p, f"depths must be [P] or [B, P] with P={p}, got {_shape(d)}")
    homographies = plane_homographies(src_cam2world, src_K, tgt_cam2world, tgt_K, depths)
    batch = _batch_size(b, homographies.shape[0])
    grid = _plane_grid(homographies, (hs, ws), out_hw).expand(batch, p, *out_hw, 2)
    alpha_t = _sample_planes(alpha, grid)
    if background is not None:
        rgb_t = torch.cat([_sample_shared(rgb, grid[:, :-1]), _sample_planes(background[:, None], grid[:, -1:])], 1)
    else:
        rgb_t = _sample_shared(rgb, grid) if shared else _sample_planes(rgb, grid)
    z, _ = plane_depth_in_target(src_cam2world, tgt_cam2world, tgt_K, depths, out_hw)
    image, depth, weights = composite(rgb_t, alpha_t, z.to(alpha_t))
    out = {"rgb": image, "depth": depth, "weights": weights, "alpha_acc": weights.sum(dim=1)}
    if return_planes:  # what a per-plane colour model (GMNR's alpha-VdR) needs after compositing
        out.update(grid=grid, rgb_planes=rgb_t)
    return out
