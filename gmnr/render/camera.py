"""Cameras: pure tensor functions shared by the data chain, the renderers and the trainer.

Conventions (used everywhere in gmnr and written into every labels file):

* World frame: right-handed, +y up. The head is centred near the origin and faces +z.
  The camera looks at ``center`` (the origin for FFHQ-like data) from a sphere of ``radius``.
* Pose angles are the *camera's* angles, in radians:
  ``yaw`` rotates the camera about the world +y axis (yaw > 0 moves the camera towards +x),
  ``pitch`` raises it (pitch > 0 puts the camera above the face, looking down),
  ``roll`` turns the camera about its own optical axis (roll > 0 turns the image clockwise
  on screen, i.e. the camera's x axis towards its y axis).
* Camera frame: OpenCV (x right, y down, z forward into the scene).
  ``cam2world`` is a 4x4 matrix mapping camera coordinates to world coordinates; its columns
  are the camera axes and position expressed in the world frame.
* Intrinsics: pixel units for an image of ``width`` x ``height`` with pixel centres at
  ``i + 0.5``; ``normalized=True`` divides the first two rows by width/height (EG3D's label
  form, independent of resolution). ``fov_deg`` is the full field of view.
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def _as_tensor(x, like: Tensor | None = None, dtype=None) -> Tensor:
    if isinstance(x, Tensor):
        return x if dtype is None else x.to(dtype)
    dtype = dtype or (like.dtype if like is not None else torch.get_default_dtype())
    device = like.device if like is not None else None
    return torch.as_tensor(x, dtype=dtype, device=device)


def camera_position(yaw: Tensor, pitch: Tensor, radius: float | Tensor = 1.0,
                    center=(0.0, 0.0, 0.0)) -> Tensor:
    """World position [B, 3] of a camera on a sphere around ``center``."""
    yaw = _as_tensor(yaw).reshape(-1)
    pitch = _as_tensor(pitch, yaw).reshape(-1)
    radius = _as_tensor(radius, yaw)
    offset = torch.stack([torch.cos(pitch) * torch.sin(yaw),
                          torch.sin(pitch),
                          torch.cos(pitch) * torch.cos(yaw)], dim=-1)
    return _as_tensor(center, yaw) + radius.reshape(-1, 1) * offset


def look_at(eye: Tensor, target, up=(0.0, 1.0, 0.0)) -> Tensor:
    """OpenCV cam2world [B, 4, 4] for cameras at ``eye`` [B, 3] looking at ``target``."""
    eye = _as_tensor(eye)
    assert eye.ndim == 2 and eye.shape[-1] == 3, f"eye must be [B, 3], got {tuple(eye.shape)}"
    target = _as_tensor(target, eye).expand_as(eye)
    up = _as_tensor(up, eye).expand_as(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.nn.functional.normalize(torch.cross(z, up, dim=-1), dim=-1)
    y = torch.cross(z, x, dim=-1)
    m = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    m[:, :3, 0], m[:, :3, 1], m[:, :3, 2], m[:, :3, 3] = x, y, z, eye
    return m


def roll_matrix(roll: Tensor) -> Tensor:
    """Rotation [B, 3, 3] about the camera's z axis, applied in camera coordinates."""
    roll = _as_tensor(roll).reshape(-1)
    c, s = torch.cos(roll), torch.sin(roll)
    zero, one = torch.zeros_like(roll), torch.ones_like(roll)
    return torch.stack([torch.stack([c, -s, zero], -1),
                        torch.stack([s, c, zero], -1),
                        torch.stack([zero, zero, one], -1)], dim=-2)


def pose_to_cam2world(yaw, pitch, roll=0.0, radius: float = 1.0, center=(0.0, 0.0, 0.0)) -> Tensor:
    """cam2world [B, 4, 4] from camera yaw/pitch/roll (radians) on a sphere around ``center``."""
    yaw = _as_tensor(yaw).reshape(-1)
    pitch = _as_tensor(pitch, yaw).reshape(-1)
    roll = _as_tensor(roll, yaw).reshape(-1).expand_as(yaw)
    m = look_at(camera_position(yaw, pitch, radius, center), center)
    m[:, :3, :3] = m[:, :3, :3] @ roll_matrix(roll)
    return m


def cam2world_to_pose(cam2world: Tensor, center=(0.0, 0.0, 0.0)) -> dict[str, Tensor]:
    """Inverse of :func:`pose_to_cam2world` for a camera that looks at ``center``.

    Yaw and pitch come from the direction of the camera's optical axis (so they are defined
    even when the camera is not exactly on the sphere), roll from the angle between the
    camera's x axis and the roll-free x axis of a look-at camera with the same optical axis.
    Returns yaw, pitch, roll [B] and the distance to ``center`` [B].
    """
    assert cam2world.shape[-2:] == (4, 4), f"cam2world must be [B, 4, 4], got {tuple(cam2world.shape)}"
    cam2world = cam2world.reshape(-1, 4, 4)
    forward = cam2world[:, :3, 2]
    back = -forward  # direction from the target towards the camera
    yaw = torch.atan2(back[:, 0], back[:, 2])
    pitch = torch.asin(back[:, 1].clamp(-1.0, 1.0))
    up = _as_tensor((0.0, 1.0, 0.0), cam2world).expand_as(forward)
    x0 = torch.nn.functional.normalize(torch.cross(forward, up, dim=-1), dim=-1)
    y0 = torch.cross(forward, x0, dim=-1)
    x = cam2world[:, :3, 0]
    roll = torch.atan2((x * y0).sum(-1), (x * x0).sum(-1))
    distance = (cam2world[:, :3, 3] - _as_tensor(center, cam2world)).norm(dim=-1)
    return {"yaw": yaw, "pitch": pitch, "roll": roll, "distance": distance}


def intrinsics_from_fov(fov_deg: float, width: int, height: int | None = None,
                        normalized: bool = False, dtype=None) -> Tensor:
    """Pinhole intrinsics [3, 3] for a full field of view ``fov_deg`` across the image width."""
    height = width if height is None else height
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    k = torch.tensor([[focal, 0.0, width / 2.0],
                      [0.0, focal, height / 2.0],
                      [0.0, 0.0, 1.0]], dtype=dtype or torch.get_default_dtype())
    if normalized:
        k[0] /= width
        k[1] /= height
    return k


def sample_pose_prior(n: int, yaw_std: float, pitch_std: float, truncation: float | None,
                      generator: torch.Generator | None = None, dtype=None) -> dict[str, Tensor]:
    """Yaw and pitch [n] from zero-mean normals truncated at ``truncation`` standard deviations
    (``None``: not truncated, as pi-GAN's and MVCGAN's Gaussian prior)."""
    dtype = dtype or torch.get_default_dtype()
    out = {}
    for name, std in (("yaw", yaw_std), ("pitch", pitch_std)):
        if truncation is None:
            x = torch.randn(n, generator=generator, dtype=dtype)
        else:
            x = torch.empty(n, dtype=dtype)
            torch.nn.init.trunc_normal_(x, 0.0, 1.0, -truncation, truncation, generator=generator)
        out[name] = x * std
    return out


def pixel_rays(cam2world: Tensor, intrinsics: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """World-space ray origins and unit directions [B, H, W, 3] through pixel centres."""
    cam2world = cam2world.reshape(-1, 4, 4)
    k = intrinsics.to(cam2world)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=cam2world.dtype, device=cam2world.device) + 0.5,
                            torch.arange(width, dtype=cam2world.dtype, device=cam2world.device) + 0.5,
                            indexing="ij")
    d_cam = torch.stack([(xs - k[0, 2]) / k[0, 0], (ys - k[1, 2]) / k[1, 1], torch.ones_like(xs)], -1)
    d_world = torch.einsum("bij,hwj->bhwi", cam2world[:, :3, :3], d_cam)
    d_world = torch.nn.functional.normalize(d_world, dim=-1)
    origins = cam2world[:, None, None, :3, 3].expand_as(d_world)
    return origins, d_world


def project(points_world: Tensor, cam2world: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points [B, N, 3] to pixels [B, N, 2]; also returns camera-space depth [B, N]."""
    world2cam = torch.linalg.inv(cam2world.reshape(-1, 4, 4))
    p = torch.einsum("bij,bnj->bni", world2cam[:, :3, :3], points_world) + world2cam[:, None, :3, 3]
    uv = torch.einsum("ij,bnj->bni", intrinsics.to(p), p)
    return uv[..., :2] / uv[..., 2:3], p[..., 2]
