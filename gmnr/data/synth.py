"""Offline demo dataset: procedural 3D heads rendered at known camera poses.

Why it exists: the pipeline (landmarks -> pose estimation -> cropping -> GAN training ->
evaluation) must run end to end without downloading FFHQ, and its pose estimator needs data
whose true camera is known. Each image here is a smooth signed-distance head built around
:data:`gmnr.data.face_layout.MEAN_LANDMARKS_3D` (perturbed per identity), sphere-traced in
torch through the FFHQ/GMPI camera of :mod:`gmnr.render.camera`.

Geometry lives in a *local head frame*: origin at the eye midpoint, axes parallel to the
world axes (x right in a frontal image, y up, z towards a frontal camera), unit = one
inter-ocular distance of the identity. ``world = anchor + IOD * scale * local``. In that frame
the five ground-truth landmarks are placed by construction: eye centres are the iris centres
(front points of the eyeballs), the nose tip is the front point of the nose-tip sphere (the
most forward point of the nose), and the mouth corners are where the lip colour and the dark
mouth line end, at the depth of the skin surface there (measured by tracing the SDF).

Determinism: image ``i`` of ``generate(seed=s)`` depends only on ``(s, i)`` through
``numpy.random.default_rng([s, i])``; all rendering is plain float32 torch on the CPU, so a
re-run with the same thread count writes byte-identical files.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from gmnr.data.face_layout import IOD, LANDMARK_NAMES, MEAN_LANDMARKS_3D
from gmnr.render.camera import (intrinsics_from_fov, pixel_rays, pose_to_cam2world, project,
                                sample_pose_prior)

Tensor = torch.Tensor

# Local-frame bounding sphere that holds every visible part of a head (hair, ears, neck top).
_BOUND_CENTER = (0.0, -0.35, -0.85)
_BOUND_RADIUS = 2.95
_MARCH_STEPS = 64
_MAX_EPS = 5e-3  # local units (~0.3 mm): upper bound of the hit tolerance, keeps depth exact
_CHUNK = 16384  # rays per SDF batch: keeps the [primitives, 3, rays] temporaries cache-sized
_MEAN_EYE_MID = 0.5 * (MEAN_LANDMARKS_3D[0] + MEAN_LANDMARKS_3D[1])

# Materials written into the per-pixel id map.
BACKGROUND, SKIN, HAIR, EYE = 0, 1, 2, 3


@dataclass(frozen=True)
class SynthCamera:
    """Camera model and pose prior of the synthetic data (GMPI's FFHQ values in FFHQ_CAMERA)."""

    fov_deg: float
    radius: float
    yaw_std: float
    pitch_std: float
    truncation: float


FFHQ_CAMERA = SynthCamera(fov_deg=12.6, radius=1.0, yaw_std=0.289, pitch_std=0.127, truncation=2.0)


RGB = tuple[float, float, float]


@dataclass(frozen=True)
class HeadParams:
    """Everything that makes one identity: shape, landmark layout, colours and lighting.

    Lengths are in the local head frame (unit = this identity's inter-ocular distance) unless
    noted; colours are linear RGB in [0, 1]. Frozen so an identity can be hashed and shared.
    """

    scale: float                 # IOD of this head / face_layout.IOD
    anchor: tuple[float, float, float]  # world position of the eye midpoint
    eye_dx: float                # half the eye distance (0.5 for the mean layout)
    nose_y: float                # nose tip below the eye line
    nose_z: float                # nose tip in front of the eye centres
    mouth_dx: float              # half the mouth width
    mouth_y: float               # mouth corners below the eye line
    mouth_z: float               # skin depth at the mouth corners (measured on the SDF)
    face_width: float
    face_length: float
    jaw_width: float
    chin: float
    cheek: float
    nose_width: float
    nose_tip_radius: float
    lip_thickness: float
    eye_open: float
    eye_tilt: float
    brow_y: float
    brow_arch: float
    brow_thickness: float
    brow_density: float
    mouth_curve: float
    hair_style: int              # 0 short cap, 1 cap with fringe, 2 long
    hair_volume: float
    hairline: float
    fringe_side: float
    skin_rgb: RGB
    hair_rgb: RGB
    brow_rgb: RGB
    iris_rgb: RGB
    lip_rgb: RGB
    blush: float
    background_top: RGB
    background_bottom: RGB
    light_dir: tuple[float, float, float]
    light_rgb: RGB
    ambient: float
    specular: float
    shininess: float


# --------------------------------------------------------------------------------------------
# Identity sampling
# --------------------------------------------------------------------------------------------

_SKIN_LIGHT = np.array([0.93, 0.74, 0.62])   # sRGB
_SKIN_DARK = np.array([0.36, 0.22, 0.15])
_HAIR_PALETTE = np.array([[0.05, 0.04, 0.035],   # black
                          [0.17, 0.10, 0.06],    # dark brown
                          [0.35, 0.22, 0.12],    # brown
                          [0.72, 0.56, 0.33],    # blonde
                          [0.50, 0.20, 0.09],    # auburn
                          [0.62, 0.60, 0.58]])   # grey
_HAIR_WEIGHTS = np.array([0.3, 0.28, 0.17, 0.1, 0.08, 0.07])
_IRIS_PALETTE = np.array([[0.28, 0.16, 0.08], [0.12, 0.07, 0.04], [0.36, 0.30, 0.14],
                          [0.25, 0.40, 0.55], [0.30, 0.42, 0.30], [0.42, 0.45, 0.48]])


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.clip(c, 0.0, 1.0) ** 2.2


def _rgb(c: np.ndarray) -> RGB:
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def _jitter(rng: np.random.Generator, c: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(c * (1.0 + rng.uniform(-amount, amount, 3)), 0.0, 1.0)


def _background_base(rng: np.random.Generator, skin: np.ndarray, min_distance: float = 0.3) -> np.ndarray:
    """A backdrop colour (sRGB) that is not skin-coloured.

    Why: a face on a backdrop of its own tone has no outline, and no photo set of faces is
    dominated by such shots; those renders were most of the detector's misses.
    """
    for _ in range(20):
        base = rng.uniform(0.15, 0.85, 3)
        if np.linalg.norm(base - skin) > min_distance:
            break
    return base


def _sample_colours(rng: np.random.Generator) -> dict:
    """Skin, hair, iris, lip and background colours; sRGB is sampled, linear is stored."""
    tone = rng.beta(1.3, 1.6)
    skin = _jitter(rng, (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK, 0.06)
    hair = _jitter(rng, _HAIR_PALETTE[rng.choice(len(_HAIR_PALETTE), p=_HAIR_WEIGHTS)], 0.15)
    # Brows are darker than light hair and never lighter than the skin would allow to see.
    brow = np.minimum(hair, skin) * rng.uniform(0.35, 0.6)
    iris = _jitter(rng, _IRIS_PALETTE[rng.integers(len(_IRIS_PALETTE))], 0.2)
    lip = skin * np.array([0.82, 0.48, 0.50]) * rng.uniform(0.75, 1.0)
    lip = np.clip(lip + np.array([0.06, 0.0, 0.01]) * rng.uniform(0, 1), 0, 1)
    bg_base = _background_base(rng, skin)
    bg_top = _jitter(rng, bg_base, 0.25)
    bg_bottom = _jitter(rng, bg_base * rng.uniform(0.5, 1.1), 0.25)
    return dict(skin_rgb=_rgb(_srgb_to_linear(skin)), hair_rgb=_rgb(_srgb_to_linear(hair)),
                brow_rgb=_rgb(_srgb_to_linear(brow)), iris_rgb=_rgb(_srgb_to_linear(iris)),
                lip_rgb=_rgb(_srgb_to_linear(lip)),
                background_top=_rgb(bg_top), background_bottom=_rgb(bg_bottom))


def _sample_light(rng: np.random.Generator) -> dict:
    """A key light from the front hemisphere (mostly from above) plus ambient sky light."""
    azimuth = rng.uniform(-1.1, 1.1)
    elevation = rng.uniform(-0.15, 0.9)
    d = np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                  math.cos(elevation) * math.cos(azimuth)])
    warm = rng.uniform(-0.08, 0.08)
    return dict(light_dir=(float(d[0]), float(d[1]), float(d[2])),
                light_rgb=_rgb(rng.uniform(0.85, 1.15) * np.array([1 + warm, 1.0, 1 - warm])),
                ambient=float(rng.uniform(0.3, 0.55)), specular=float(rng.uniform(0.03, 0.12)),
                shininess=float(rng.uniform(12.0, 40.0)))


def sample_head(rng: np.random.Generator) -> HeadParams:
    """One random identity; landmarks are the mean layout with modest proportion changes."""
    u = rng.uniform
    shape = dict(
        scale=float(u(0.95, 1.05)),
        anchor=tuple(float(v) for v in _MEAN_EYE_MID + rng.normal(0.0, 0.0008, 3)),
        eye_dx=float(0.5 * u(0.97, 1.03)), nose_y=float(0.52 * u(0.92, 1.08)),
        nose_z=float(0.41 * u(0.9, 1.1)), mouth_dx=float(0.455 * u(0.92, 1.08)),
        mouth_y=float(0.97 * u(0.94, 1.06)), mouth_z=0.0,
        face_width=float(u(0.9, 1.1)), face_length=float(u(0.93, 1.07)),
        jaw_width=float(u(0.8, 1.1)), chin=float(u(0.8, 1.2)), cheek=float(u(0.85, 1.15)),
        nose_width=float(u(0.8, 1.25)), nose_tip_radius=float(u(0.09, 0.13)),
        lip_thickness=float(u(0.8, 1.3)), eye_open=float(u(0.85, 1.15)),
        eye_tilt=float(u(-0.05, 0.12)), brow_y=float(u(0.3, 0.4)), brow_arch=float(u(0.02, 0.08)),
        brow_thickness=float(u(0.055, 0.085)), brow_density=float(u(0.7, 1.0)),
        mouth_curve=float(u(-0.02, 0.04)),
        hair_style=int(rng.choice(3, p=[0.4, 0.3, 0.3])), hair_volume=float(u(0.06, 0.2)),
        hairline=float(u(0.85, 1.05)), fringe_side=float(u(-0.35, 0.35)),
        blush=float(u(0.0, 0.35)),
    )
    head = HeadParams(**shape, **_sample_colours(rng), **_sample_light(rng))
    return dataclasses.replace(head, mouth_z=_surface_z(head, head.mouth_dx, -head.mouth_y))


def _local_landmarks(head: HeadParams) -> np.ndarray:
    """The five landmarks [5, 3] in the local head frame (order of LANDMARK_NAMES)."""
    return np.array([[-head.eye_dx, 0.0, 0.0], [head.eye_dx, 0.0, 0.0],
                     [0.0, -head.nose_y, head.nose_z],
                     [-head.mouth_dx, -head.mouth_y, head.mouth_z],
                     [head.mouth_dx, -head.mouth_y, head.mouth_z]], dtype=np.float64)


def _unit(head: HeadParams) -> float:
    """World length of one local unit."""
    return IOD * head.scale


def head_landmarks_3d(head: HeadParams) -> np.ndarray:
    """Ground-truth world landmarks [5, 3] (left_eye, right_eye, nose, mouth_left, mouth_right)."""
    out = np.asarray(head.anchor)[None, :] + _unit(head) * _local_landmarks(head)
    assert out.shape == (5, 3) and len(LANDMARK_NAMES) == 5
    return out


# --------------------------------------------------------------------------------------------
# Signed distance function (local head frame, float32 points [3, N])
# --------------------------------------------------------------------------------------------

# An ellipsoid primitive: centre, radii, rotation (rows = the ellipsoid's axes in the local frame).
_Item = tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]
_IDENTITY = np.eye(3)


class _EllipsoidBank:
    """Many rotated ellipsoids evaluated together with one matrix product.

    Why: in eager torch the per-op overhead, not arithmetic, dominates sphere tracing once
    only a few hundred rays are still marching, so the SDF is written as a handful of large
    tensor ops over all primitives instead of ~20 ops per primitive.
    Distances use Inigo Quilez's ellipsoid bound: exact on the surface, close to Euclidean
    nearby, and exact for spheres.
    """

    def __init__(self, items: list[_Item]):
        a, b, ir2 = [], [], []
        for centre, radii, rot in items:
            m = np.diag(1.0 / np.asarray(radii)) @ rot
            a.append(m)
            b.append(-m @ np.asarray(centre))
            ir2.append(1.0 / np.asarray(radii) ** 2)
        self.n = len(items)
        self.a = torch.tensor(np.concatenate(a), dtype=torch.float32)              # [3E, 3]
        self.b = torch.tensor(np.concatenate(b), dtype=torch.float32)[:, None]     # [3E, 1]
        self.ir2 = torch.tensor(np.stack(ir2), dtype=torch.float32)[:, :, None]    # [E, 3, 1]

    def __call__(self, p: Tensor) -> Tensor:
        """Distances [E, N] of points p [3, N] (in-place ops: the [E, 3, N] temporary is big)."""
        q = torch.addmm(self.b, self.a, p)
        q.mul_(q)
        q = q.view(self.n, 3, -1)
        k0 = (q[:, 0] + q[:, 1]).add_(q[:, 2]).sqrt_()
        q.mul_(self.ir2)
        k1 = (q[:, 0] + q[:, 1]).add_(q[:, 2]).sqrt_().clamp_min_(1e-6)
        return (k0 - 1.0).mul_(k0).div_(k1)


def _soft_min_rows(d: Tensor, k: float) -> Tensor:
    """Smooth minimum over rows of d [E, N] (log-sum-exp): blends neighbouring primitives."""
    m = d.amin(0)
    return m - k * (m - d).mul_(1.0 / k).exp_().sum(0).log_()


def _smin(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Polynomial smooth minimum: blends two surfaces over a band of width k only."""
    h = (k - (a - b).abs()).clamp_min_(0.0)
    return torch.addcmul(torch.minimum(a, b), h, h, value=-0.25 / k)


def _smax(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Polynomial smooth maximum (rounded intersection / subtraction edges)."""
    h = (k - (a - b).abs()).clamp_min_(0.0)
    return torch.addcmul(torch.maximum(a, b), h, h, value=0.25 / k)


def _axis_rotation(start, end) -> tuple[np.ndarray, float]:
    """Rows of a rotation whose second axis runs from start to end (in the y-z plane), and the length."""
    axis = np.asarray(end, dtype=np.float64) - np.asarray(start, dtype=np.float64)
    length = float(np.linalg.norm(axis))
    e1 = axis / length
    e0 = np.array([1.0, 0.0, 0.0])
    assert abs(e0 @ e1) < 1e-9, "axis must be perpendicular to x"
    return np.stack([e0, e1, np.cross(e0, e1)]), length


def _mirror(centre, radii, rot=_IDENTITY) -> list[_Item]:
    """A primitive and its mirror image across x = 0 (the head is left/right symmetric)."""
    flip = np.diag([-1.0, 1.0, 1.0])
    left = ((-centre[0], centre[1], centre[2]), radii, rot @ flip)
    return [left, (tuple(centre), radii, rot)]


def _eye_uv(head: HeadParams, ax: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """2D coordinates centred on the (mirrored) eye, sheared so the outer corner is higher."""
    u = ax - head.eye_dx
    return u, y - head.eye_tilt * u


def _eye_opening(head: HeadParams, u: Tensor, v: Tensor) -> Tensor:
    """2D SDF of the almond-shaped lid opening: the lens between two circular arcs."""
    a = 0.25
    top, bottom = 0.075 * head.eye_open, 0.1 * head.eye_open
    r1 = (a * a + top * top) / (2 * top)
    r2 = (a * a + bottom * bottom) / (2 * bottom)
    d1 = torch.hypot(u, v + (r1 - top)) - r1        # upper lid arc
    d2 = torch.hypot(u, v - (r2 - bottom)) - r2     # lower lid arc
    return torch.maximum(d1, d2)


class HeadSDF:
    """Signed distance to one head in the local frame, split into skin, hair and eyeballs.

    Points are [3, N] float32 tensors. The per-identity primitive list is built once; a call is
    one ellipsoid-bank product plus a few blends and cuts.
    """

    def __init__(self, head: HeadParams):
        self.h = head
        groups: dict[str, list[_Item]] = {}
        fw, fl, jw, ck = head.face_width, head.face_length, head.jaw_width, head.cheek
        groups["head"] = [
            ((0.0, 0.45, -1.35), (1.15 * fw, 1.5, 1.55), _IDENTITY),              # cranium
            ((0.0, -0.5, -1.0), (1.06 * fw, 1.5 * fl, 1.2), _IDENTITY),           # face
            ((0.0, -1.05 * fl, -0.8), (0.88 * jw * fw, 0.78 * fl, 0.85), _IDENTITY),  # jaw
            ((0.0, -1.6 * fl, -0.2), tuple(v * head.chin for v in (0.38, 0.3, 0.3)), _IDENTITY),
            ((0.0, -2.1, -1.15), (0.6 * jw ** 0.5, 1.4, 0.6), _IDENTITY),         # neck
            *_mirror((head.eye_dx, 0.02, -0.25), (0.4, 0.3, 0.3)),                 # lids/orbit
            *_mirror((0.6 * fw, -0.42, -0.25), (0.36 * ck, 0.3 * ck, 0.32 * ck)),  # cheeks
            *_mirror((0.45, 0.34, -0.2), (0.42, 0.16, 0.3)),                       # brow ridge
            *_mirror((1.0 * fw, -0.25, -1.3), (0.12, 0.34, 0.2)),                  # ears
        ]
        # Nose: the tip sphere's front point is the landmark; bridge and wings stay behind it.
        ny, nz, nw, rt = head.nose_y, head.nose_z, head.nose_width, head.nose_tip_radius
        bridge_a, bridge_b = (0.0, 0.0, 0.14), (0.0, -ny + 0.17, nz - 0.15)
        rot, length = _axis_rotation(bridge_a, bridge_b)
        groups["nose"] = [
            ((0.0, -ny, nz - rt), (rt, rt, rt), _IDENTITY),
            (tuple(0.5 * (a + b) for a, b in zip(bridge_a, bridge_b)),
             (0.07 * nw, 0.5 * length + 0.04, 0.06), rot),
            *_mirror((0.13 * nw, -ny + 0.04, nz - 0.24), (0.08 * nw,) * 3),
        ]
        mx, my, lt = head.mouth_dx, head.mouth_y, head.lip_thickness
        groups["lips"] = [((0.0, -my + 0.04 * lt, 0.06), (0.92 * mx, 0.075 * lt, 0.13), _IDENTITY),
                          ((0.0, -my - 0.07 * lt, 0.04), (0.8 * mx, 0.095 * lt, 0.13), _IDENTITY)]
        groups["eyes"] = _mirror((head.eye_dx, 0.0, -0.19), (0.27, 0.2, 0.19))
        hv = head.hair_volume
        groups["hair"] = [((0.0, 0.5, -1.38), (1.15 * fw + hv + 0.05, 1.55 + hv, 1.6 + hv), _IDENTITY)]
        if head.hair_style == 1:
            groups["fringe"] = [((0.0, 0.95, -0.45), (1.0 * fw + hv, 0.5, 0.58 + hv), _IDENTITY)]
        if head.hair_style == 2:
            groups["long"] = [*_mirror((1.07 * fw + hv, -1.0, -1.18), (0.3 + hv, 1.9, 0.35 + hv)),
                              ((0.0, -0.6, -1.75), (1.2 * fw + hv, 1.9, 0.85), _IDENTITY)]
        items, self.rows, row = [], {}, 0
        for name, group in groups.items():
            items += group
            self.rows[name] = slice(row, row + len(group))
            row += len(group)
        self.bank = _EllipsoidBank(items)
        self.hair_slope = 1.85
        self.hair_norm = 1.0 / math.sqrt(1.0 + self.hair_slope ** 2)

    def components(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Distances [N] to skin, hair and eyeballs of points p [3, N]."""
        h, d = self.h, self.bank(p)
        x, y, z = p[0], p[1], p[2]
        ax = x.abs()
        skin = _smin(_soft_min_rows(d[self.rows["head"]], 0.07),
                     _soft_min_rows(d[self.rows["nose"]], 0.025), 0.12)
        # Carve the lid openings (a slab-limited almond prism) so the eyeballs show through.
        u, v = _eye_uv(h, ax, y)
        cut = torch.maximum(_eye_opening(h, u, v), (z - 0.1).abs() - 0.3)
        skin = _smax(skin, -cut, 0.03)
        skin = _smin(skin, _soft_min_rows(d[self.rows["lips"]], 0.01), 0.06)
        eyes = d[self.rows["eyes"]].amin(0)
        # Hairline: a plane rising from the sideburns (y ~ 0 at the temples) to the forehead.
        hair = _smax(d[self.rows["hair"]][0], (h.hairline + self.hair_slope * z - y) * self.hair_norm, 0.06)
        if "fringe" in self.rows:
            fringe = _smax(d[self.rows["fringe"]][0], 0.55 + h.fringe_side * x - y, 0.04)
            hair = _smin(hair, fringe, 0.1)
        if "long" in self.rows:
            hair = _smin(hair, _soft_min_rows(d[self.rows["long"]], 0.1), 0.25)
        else:
            hair = _smax(hair, -1.0 - y, 0.1)  # short hair ends at the nape
        return skin, hair, eyes

    def __call__(self, p: Tensor) -> Tensor:
        """Distance [N] to the whole head of points p [3, N]."""
        skin, hair, eyes = self.components(p)
        return torch.minimum(torch.minimum(skin, hair), eyes)


def _surface_z(head: HeadParams, x: float, y: float) -> float:
    """Depth of the front-most surface along the local -z ray through (x, y)."""
    sdf = HeadSDF(head)
    z = 1.5
    for _ in range(200):
        d = float(sdf(torch.tensor([[x], [y], [z]], dtype=torch.float32))[0])
        z -= d
        if abs(d) < 1e-5:
            break
    return z


# --------------------------------------------------------------------------------------------
# Sphere tracing and shading
# --------------------------------------------------------------------------------------------

def _chunked(fn: Callable[[Tensor], Tensor], p: Tensor) -> Tensor:
    """Apply fn to points p [3, N] in cache-sized chunks, concatenating along the last dim."""
    if p.shape[1] <= _CHUNK:
        return fn(p)
    return torch.cat([fn(p[:, s:s + _CHUNK]) for s in range(0, p.shape[1], _CHUNK)], dim=-1)


def _bound_interval(o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Entry/exit distances [N] of rays o [3] + t d [3, N] through the bounding sphere.

    Missing rays get an empty interval (entry > exit).
    """
    oc = o - torch.tensor(_BOUND_CENTER, dtype=o.dtype)
    b = oc @ d
    disc = b * b - (float(oc @ oc) - _BOUND_RADIUS ** 2)
    root = disc.clamp_min(0).sqrt()
    miss = disc <= 0
    return (-b - root).clamp_min(0.0).masked_fill(miss, 1.0), (-b + root).masked_fill(miss, 0.0)


def _march(sdf: HeadSDF, o: Tensor, d: Tensor, t_start: Tensor, t_end: Tensor,
           eps_per_t: float, steps: int = _MARCH_STEPS,
           track_min: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sphere-trace rays o [3] + t d [3, N] from t_start to t_end [N].

    Returns hit [N], t [N] (where each ray stopped) and, with ``track_min``, the smallest
    sampled distance [N] (used to prove that rays near a missing ray miss too). Only
    unfinished rays are evaluated, compacted as rays finish, and all rays share one loop so
    the long tail of grazing rays costs one SDF call per step. A ray stops when its distance
    is below half its pixel footprint (capped so depth stays accurate); grazing rays that
    run out of steps count as hits when within about a pixel of the surface.
    """
    n = d.shape[1]
    t_stop = torch.zeros(n)
    hit = torch.zeros(n, dtype=torch.bool)
    min_d = torch.full((n,), math.inf) if track_min else None
    idx = torch.nonzero(t_start < t_end).squeeze(1)
    t, te, dd = t_start[idx], t_end[idx], d[:, idx]
    md = torch.full_like(t, math.inf)
    o = o[:, None]
    for step in range(steps):
        if idx.numel() == 0:
            break
        dist = _chunked(sdf, torch.addcmul(o, dd, t))
        if track_min:
            md = torch.minimum(md, dist)
        done = dist < (t * eps_per_t).clamp_(max=_MAX_EPS)
        # Full steps near the surface, slightly under-relaxed far away where the ellipsoid
        # distance bound may overestimate.
        t = t + torch.where(dist < 0.1, dist, 0.9 * dist)
        if step == steps - 1:
            done |= dist < 0.02
            leave = torch.ones_like(done)
        else:
            leave = done | (t >= te)
        if bool(leave.any()):
            gone = idx[leave]
            t_stop[gone] = t[leave]
            hit[gone] = done[leave]
            stay = ~leave
            if track_min:
                min_d[gone] = md[leave]
                md = md[stay]
            idx, t, te, dd = idx[stay], t[stay], te[stay], dd[:, stay]
    return hit, t_stop, min_d


def _surface_frame(sdf: HeadSDF, p: Tensor, e: float = 0.004) -> tuple[Tensor, Tensor]:
    """Unit normal [3, N] (tetrahedron-stencil SDF gradient) and material [N] at points p [3, N].

    The material comes from the same four taps (their mean is the component distance at p up
    to O(e^2)), so it costs no extra SDF evaluation.
    """
    taps = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=p.dtype)
    n = p.shape[1]
    probe = (p[None] + e * taps[:, :, None]).permute(1, 0, 2).reshape(3, 4 * n)
    parts = _chunked(lambda q: torch.stack(sdf.components(q)), probe).view(3, 4, n)
    v = parts.amin(0)
    grad = taps.T @ v
    normal = grad / (grad * grad).sum(0).sqrt_().clamp_min_(1e-12)
    material = torch.tensor([SKIN, HAIR, EYE], dtype=torch.uint8)[parts.mean(1).argmin(0)]
    return normal, material


def _occlusion(sdf: HeadSDF, p: Tensor, normal: Tensor) -> Tensor:
    """Ambient occlusion [N] from SDF probes along the normal (darkens sockets and creases)."""
    hs = torch.tensor([0.04, 0.12, 0.28])
    weights = torch.tensor([1.0, 0.7, 0.49])
    n = p.shape[1]
    probe = (p[None] + hs[:, None, None] * normal[None]).permute(1, 0, 2).reshape(3, 3 * n)
    gap = (hs[:, None] - _chunked(sdf, probe).view(3, n)).clamp_min(0.0)
    return (1.0 - 2.2 * (weights @ gap)).clamp(0.0, 1.0)


def _smoothstep(e0: float, e1: float, x: Tensor) -> Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mix(a: Tensor, b, w: Tensor) -> Tensor:
    """Blend colours a [N, 3] towards b ([3] or [N, 3]) by weights w [N]."""
    b = torch.as_tensor(b, dtype=a.dtype)
    return a + (b - a) * w[:, None]


def _skin_albedo(head: HeadParams, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """Skin colour [N, 3] with blush, lips, mouth line, brows, lash line and nostrils painted on.

    The painted features are 2D patterns in the local (x, y) plane (projected along z, where
    the face is nearly frontal); their positions are tied to the landmark parameters so the
    mouth corners and eye centres a detector sees are the ground-truth ones.
    """
    ax = x.abs()
    skin = torch.tensor(head.skin_rgb)
    col = skin.expand(x.shape[0], 3).clone()
    front = _smoothstep(-0.45, -0.15, z)
    # Blush on the cheeks, redness on the nose tip.
    r2 = ((ax - 0.6) / 0.24) ** 2 + ((y + 0.5) / 0.2) ** 2
    blush_rgb = skin * torch.tensor([1.0, 0.62, 0.66])
    col = _mix(col, blush_rgb, head.blush * torch.exp(-r2) * front)
    nose_r2 = (x / 0.12) ** 2 + ((y + head.nose_y) / 0.12) ** 2
    col = _mix(col, blush_rgb, 0.25 * torch.exp(-nose_r2) * front)
    # Lips: between an upper arc (with a cupid's bow) and a lower arc meeting at the corners.
    mx, my, lt = head.mouth_dx, head.mouth_y, head.lip_thickness
    s = (1.0 - (x / mx) ** 2).clamp_min(0.0)
    line = -my + head.mouth_curve * s
    upper = line + 0.075 * lt * s.sqrt() * (1.0 - 0.25 * torch.exp(-(x / 0.05) ** 2))
    lower = line - 0.105 * lt * s.sqrt()
    w = 0.012
    lip = _smoothstep(-w, w, upper - y) * _smoothstep(-w, w, y - lower) * _smoothstep(0.0, 0.05, s) * front
    col = _mix(col, head.lip_rgb, lip)
    # Mouth line: a dark slit that ends exactly at the corners.
    slit_w = 0.006 + 0.02 * s
    slit = (1.0 - _smoothstep(0.0, 1.0, (y - line).abs() / slit_w)) * _smoothstep(0.0, 0.03, s)
    col = _mix(col, torch.tensor(head.lip_rgb) * 0.15, slit * front)
    # Eyebrows: a tapered arc above each eye.
    bu = (ax - (head.eye_dx - 0.22)) / 0.52           # 0 at the inner end, 1 at the outer end
    brow_mid = head.brow_y + head.brow_arch * torch.sin(math.pi * bu.clamp(0, 1) ** 0.8) - 0.04 * bu
    half = head.brow_thickness * (1.1 - 0.6 * bu.clamp(0, 1))
    brow = 1.0 - _smoothstep(0.6, 1.0, (y - brow_mid).abs() / half)
    brow = brow * _smoothstep(-0.05, 0.03, bu) * (1.0 - _smoothstep(0.92, 1.05, bu))
    col = _mix(col, head.brow_rgb, head.brow_density * brow * front)
    # Lash line and lid crease around the eye opening.
    u, v = _eye_uv(head, ax, y)
    d_eye = _eye_opening(head, u, v)
    corner = 1.0 - _smoothstep(0.18, 0.27, u.abs())
    lash = (1.0 - _smoothstep(0.012, 0.035, d_eye)) * _smoothstep(-0.04, 0.02, v) * (0.5 + 0.5 * corner)
    col = _mix(col, torch.tensor(head.brow_rgb) * 0.5, 0.9 * lash * front)
    lower_lash = (1.0 - _smoothstep(0.006, 0.02, d_eye)) * _smoothstep(0.0, 0.04, -v) * corner
    col = _mix(col, skin * 0.45, 0.5 * lower_lash * front)
    crease = torch.exp(-((d_eye - 0.07) / 0.03) ** 2) * _smoothstep(0.0, 0.05, v)
    col = col * (1.0 - 0.1 * crease * front)[:, None]
    # Nostrils: dark ellipsoids on the underside of the nose.
    nr2 = ((ax - 0.075 * head.nose_width) / 0.045) ** 2 + ((y + head.nose_y + 0.075) / 0.03) ** 2 \
        + ((z - head.nose_z + 0.13) / 0.07) ** 2
    return _mix(col, skin * 0.12, 0.9 * torch.exp(-nr2 * nr2))


def _hair_albedo(head: HeadParams, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """Hair colour [N, 3] with strand-like streaks running from the crown."""
    angle = torch.atan2(x, z + 1.3)
    streak = 0.8 + 0.2 * torch.sin(37.0 * angle + 9.0 * y) * torch.sin(13.0 * angle - 3.0 * y + 1.7)
    return torch.tensor(head.hair_rgb)[None, :] * streak[:, None]


def _eye_albedo(head: HeadParams, x: Tensor, y: Tensor) -> Tensor:
    """Sclera (greyer towards the corners), iris with a darker limbal ring, and pupil [N, 3],
    centred on the eye landmark. The iris is a little taller than the lid opening, as in real
    eyes, so the lids clip it and the visible dark blob centres on the landmark."""
    u = x.abs() - head.eye_dx
    r = torch.sqrt(u * u + y * y)
    sclera = 0.5 * (1.0 - 0.35 * _smoothstep(0.1, 0.26, u.abs()))
    col = sclera[:, None] * torch.tensor([1.0, 0.96, 0.93])
    iris_rgb = torch.tensor(head.iris_rgb)
    col = _mix(col, iris_rgb * 0.45, 1.0 - _smoothstep(0.098, 0.11, r))
    col = _mix(col, iris_rgb, 1.0 - _smoothstep(0.065, 0.095, r))
    return _mix(col, [0.01, 0.01, 0.01], 1.0 - _smoothstep(0.037, 0.047, r))


def _albedo(head: HeadParams, p: Tensor, material: Tensor) -> tuple[Tensor, Tensor]:
    """Albedo [N, 3] and specular strength [N] per material."""
    albedo = torch.empty(p.shape[1], 3)
    spec = torch.empty(p.shape[1])
    for mat, k in ((SKIN, head.specular), (HAIR, 0.6 * head.specular), (EYE, 0.6)):
        m = material == mat
        if not bool(m.any()):
            continue
        x, y, z = p[0, m], p[1, m], p[2, m]
        albedo[m] = (_skin_albedo(head, x, y, z) if mat == SKIN else
                     _hair_albedo(head, x, y, z) if mat == HAIR else _eye_albedo(head, x, y))
        spec[m] = k
    return albedo, spec


def _shade(head: HeadParams, sdf: HeadSDF, p: Tensor, view: Tensor) -> tuple[Tensor, Tensor]:
    """Linear RGB [N, 3] and material [N] of surface points p [3, N] seen along view [3, N].

    Wrapped Lambert key light (soft terminator, like skin) with ambient occlusion, a sky-like
    ambient term brighter on upward normals, and a Blinn-Phong highlight.
    """
    n, material = _surface_frame(sdf, p)
    ao = _occlusion(sdf, p, n)
    albedo, spec_k = _albedo(head, p, material)
    light = torch.tensor(head.light_dir)
    ndl = light @ n
    diffuse = ((ndl + 0.25) / 1.25).clamp_min(0.0)
    sky = (0.65 + 0.35 * n[1]) * ao
    half = light[:, None] - view
    half = half / (half * half).sum(0).sqrt_().clamp_min_(1e-12)
    spec = (n * half).sum(0).clamp_min(0.0) ** head.shininess * (ndl > 0) * spec_k
    light_rgb = torch.tensor(head.light_rgb)
    lit = (0.8 * diffuse * (0.6 + 0.4 * ao))[:, None] * light_rgb + (head.ambient * sky)[:, None]
    return albedo * lit + spec[:, None] * light_rgb, material


def _background(head: HeadParams, height: int, width: int) -> Tensor:
    """sRGB [H, W, 3] vertical gradient with a soft vignette."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    top, bottom = torch.tensor(head.background_top), torch.tensor(head.background_bottom)
    col = top + (bottom - top) * ys[:, None, None]
    vignette = 1.0 - 0.25 * ((xs[None, :] - 0.5) ** 2 + (ys[:, None] - 0.5) ** 2)
    return (col * vignette[..., None]).expand(height, width, 3)


def _trace(head: HeadParams, sdf: HeadSDF, o_local: Tensor, d: Tensor, eps_per_t: float,
           t_start: Tensor | None = None, skip: Tensor | None = None,
           shade: bool = True, steps: int = _MARCH_STEPS) -> dict[str, Tensor]:
    """Trace local-frame rays (origin [3], unit dirs [3, N]).

    Returns hit [N], t [N] (local units, 0 on misses) and, when shading, srgb [N, 3] and
    material [N] (BACKGROUND on misses), otherwise min_d [N] (closest sampled approach).
    ``t_start`` [N] skips space known to be empty; ``skip`` [N] marks rays known to miss.
    """
    assert o_local.shape == (3,) and d.ndim == 2 and d.shape[0] == 3, "rays must be [3] + [3, N]"
    n = d.shape[1]
    t_in, t_out = _bound_interval(o_local, d)
    if t_start is not None:
        t_in = torch.maximum(t_in, t_start)
    if skip is not None:
        t_out = t_out.masked_fill(skip, 0.0)
    hit, t, min_d = _march(sdf, o_local, d, t_in, t_out, eps_per_t, steps, track_min=not shade)
    t = torch.where(hit, t, 0.0)
    out = dict(hit=hit, t=t, min_d=min_d)
    if shade:
        rgb = torch.zeros(n, 3)
        material = torch.full((n,), BACKGROUND, dtype=torch.uint8)
        i = torch.nonzero(hit).squeeze(1)
        if i.numel():
            p = torch.addcmul(o_local[:, None], d[:, i], t[i])
            rgb[i], material[i] = _shade(head, sdf, p, d[:, i])
        out.update(srgb=rgb.clamp(0.0, 1.0) ** (1.0 / 2.2), material=material)
    return out


def _local_rays(head: HeadParams, cam2world: Tensor, k: Tensor, height: int, width: int,
                shift: tuple[float, float] = (0.0, 0.0)) -> tuple[Tensor, Tensor]:
    """Ray origin [3] and unit directions [3, H*W] in the local head frame.

    ``shift`` moves the samples by a fraction of a pixel (through the principal point), which
    is how the anti-aliasing sub-samples reuse camera.pixel_rays.
    """
    if shift != (0.0, 0.0):
        k = k.clone()
        k[0, 2] -= shift[0]
        k[1, 2] -= shift[1]
    origins, dirs = pixel_rays(cam2world, k, height, width)
    o = (origins[0, 0, 0] - torch.tensor(head.anchor, dtype=torch.float32)) / _unit(head)
    return o, dirs.reshape(-1, 3).T.contiguous()


def _neighbourhood(t_hit: Tensor, min_d: Tensor | None, factor: int, height: int, width: int,
                   margin: float, clearance: float) -> tuple[Tensor, Tensor]:
    """March start [H*W] and skip mask [H*W] for fine rays from a coarser trace [h, w].

    A fine ray starts ``margin`` before the nearest hit among the 3x3 coarse neighbours of its
    coarse pixel: the surfaces are smooth at that scale, so nothing nearer hides between them.
    A fine ray is skipped when all those neighbours missed and passed the head by more than
    ``clearance``; then (SDFs being 1-Lipschitz) a ray within a coarse pixel of them misses too.
    """
    def pool_min(x: Tensor) -> Tensor:
        x = -torch.nn.functional.max_pool2d(-x[None, None], 3, stride=1, padding=1)[0, 0]
        return x.repeat_interleave(factor, 0).repeat_interleave(factor, 1)[:height, :width].reshape(-1)

    near = pool_min(torch.where(t_hit > 0, t_hit, torch.full_like(t_hit, math.inf)))
    found = torch.isfinite(near)
    start = torch.where(found, near - margin, 0.0)
    if min_d is None:
        return start, torch.zeros_like(found)
    return start, ~found & (pool_min(min_d) > clearance)


def render_head(head: HeadParams, cam2world: Tensor, intrinsics: Tensor, height: int, width: int,
                antialias: bool = True) -> dict[str, np.ndarray]:
    """Render one head: rgb uint8 [H, W, 3], camera-space depth float32 [H, W] (0 = background),
    mask bool [H, W].

    Speed: above 128 px a coarse pre-pass (64 px across) tells each full-resolution ray where
    to start and which rays cannot hit; anti-aliasing re-traces only silhouette, material and
    depth-edge pixels with four sub-pixel rays each.
    """
    _tune_malloc()
    cam2world = torch.as_tensor(cam2world, dtype=torch.float32)
    assert cam2world.numel() == 16, f"cam2world must be [4, 4], got {tuple(cam2world.shape)}"
    cam2world = cam2world.reshape(4, 4)
    k = torch.as_tensor(intrinsics, dtype=torch.float32)
    assert k.shape == (3, 3), f"intrinsics must be [3, 3], got {tuple(k.shape)}"
    assert height > 0 and width > 0, "image size must be positive"
    sdf = HeadSDF(head)
    eps_per_t = 0.5 / float(k[0, 0])
    o, d = _local_rays(head, cam2world, k, height, width)
    t_start = skip = None
    factor = min(height, width) // 64
    if factor >= 2:
        hc, wc = -(-height // factor), -(-width // factor)
        kc = k.clone()
        kc[:2] /= factor
        oc, dc = _local_rays(head, cam2world, kc, hc, wc)
        coarse = _trace(head, sdf, oc, dc, eps_per_t * factor, shade=False)
        t_max = float((o - torch.tensor(_BOUND_CENTER)).norm()) + _BOUND_RADIUS
        spacing = factor * t_max / float(k[0, 0])
        t_start, skip = _neighbourhood(coarse["t"].view(hc, wc), coarse["min_d"].view(hc, wc),
                                       factor, height, width, margin=0.08, clearance=1.3 * spacing)
    out = _trace(head, sdf, o, d, eps_per_t, t_start, skip)
    mask = out["hit"].view(height, width)
    bg = _background(head, height, width)
    rgb = torch.where(mask[..., None], out["srgb"].view(height, width, 3), bg)
    t_map = out["t"].view(height, width)
    if antialias:
        edge = _edge_pixels(out["material"].view(height, width), t_map)
        rgb = _antialias(head, sdf, cam2world, k, rgb, edge, bg, t_map, eps_per_t)
    forward = cam2world[:3, 2]
    depth = t_map * (forward @ d).view(height, width) * _unit(head)   # local t -> camera z
    return dict(rgb=(rgb * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy(),
                depth=depth.masked_fill(~mask, 0.0).numpy().astype(np.float32), mask=mask.numpy())


def _edge_pixels(material: Tensor, t: Tensor, depth_jump: float = 0.1) -> Tensor:
    """Pixels [H, W] whose material (incl. background) or depth differs from a 4-neighbour."""
    edge = torch.zeros(material.shape, dtype=torch.bool)
    dx = (material[:, 1:] != material[:, :-1]) | ((t[:, 1:] - t[:, :-1]).abs() > depth_jump)
    dy = (material[1:] != material[:-1]) | ((t[1:] - t[:-1]).abs() > depth_jump)
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    return edge


_SUBPIXELS = ((-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25))


def _antialias(head: HeadParams, sdf: HeadSDF, cam2world: Tensor, k: Tensor, rgb: Tensor,
               edge: Tensor, bg: Tensor, t_map: Tensor, eps_per_t: float) -> Tensor:
    """Average the centre sample with four sub-pixel samples (one batched trace) on edge pixels."""
    height, width = edge.shape
    sel = torch.nonzero(edge.reshape(-1)).squeeze(1)
    if sel.numel() == 0:
        return rgb
    start, _ = _neighbourhood(t_map, None, 1, height, width, margin=0.08, clearance=math.inf)
    dirs = []
    for shift in _SUBPIXELS:
        o, d = _local_rays(head, cam2world, k, height, width, shift)
        dirs.append(d[:, sel])
    out = _trace(head, sdf, o, torch.cat(dirs, dim=1), eps_per_t, start[sel].repeat(len(_SUBPIXELS)),
                 steps=_MARCH_STEPS // 2)
    bg_sel = bg.reshape(-1, 3)[sel].repeat(len(_SUBPIXELS), 1)
    samples = torch.where(out["hit"][:, None], out["srgb"], bg_sel).view(len(_SUBPIXELS), -1, 3)
    flat = rgb.reshape(-1, 3).clone()
    flat[sel] = (flat[sel] + samples.sum(0)) / (1 + len(_SUBPIXELS))
    return flat.view(height, width, 3)


_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """Keep freed tensor memory in the process instead of returning it to the OS (glibc).

    Why: sphere tracing allocates and frees multi-megabyte temporaries thousands of times per
    image; with glibc's defaults each one is a fresh mmap whose pages fault in on first touch,
    which made rendering 2-4x slower on the 2-core CPU machines this runs on. Raising the
    mmap and trim thresholds makes those allocations reuse warm heap memory. No-op elsewhere.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 512 << 20)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------------------------

def sample_view(seed: int, index: int, camera: SynthCamera, roll_std: float) -> dict:
    """Identity seed and camera pose of image ``index``: a function of (seed, index) only."""
    rng = np.random.default_rng([seed, index])
    identity_seed = int(rng.integers(0, 2 ** 31))
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 62)))
    pose = sample_pose_prior(1, camera.yaw_std, camera.pitch_std, camera.truncation,
                             generator=gen, dtype=torch.float64)
    roll = float(rng.normal(0.0, roll_std)) if roll_std > 0 else 0.0
    return dict(identity_seed=identity_seed, yaw=float(pose["yaw"][0]),
                pitch=float(pose["pitch"][0]), roll=roll)


def render_view(seed: int, index: int, resolution: int, camera: SynthCamera,
                roll_std: float) -> dict:
    """Render image ``index``; returns the render dict plus pose, head and 2D landmarks [5, 2]."""
    view = sample_view(seed, index, camera, roll_std)
    head = sample_head(np.random.default_rng(view["identity_seed"]))
    cam2world = pose_to_cam2world(torch.tensor([view["yaw"]], dtype=torch.float64),
                                  view["pitch"], view["roll"], radius=camera.radius)
    k = intrinsics_from_fov(camera.fov_deg, resolution, dtype=torch.float64)
    uv, _ = project(torch.from_numpy(head_landmarks_3d(head))[None], cam2world, k)
    out = render_head(head, cam2world[0].float(), k.float(), resolution, resolution)
    return dict(out, **view, head=head, landmarks_2d=uv[0].numpy(), radius=camera.radius)


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import imageio.v3 as iio

    _atomic_write(path, lambda f: f.write(iio.imwrite("<bytes>", rgb, extension=".png")))


def csv_columns() -> list[str]:
    """Columns of ground_truth.csv."""
    cols = ["file", "yaw", "pitch", "roll", "radius", "identity_seed"]
    return cols + [f"{name}_{axis}" for name in LANDMARK_NAMES for axis in ("x", "y")]


def _meta(count: int, resolution: int, seed: int, camera: SynthCamera, roll_std: float) -> dict:
    return dict(
        generator="gmnr.data.synth", count=count, resolution=resolution, seed=seed,
        roll_std=roll_std, camera=dataclasses.asdict(camera), landmark_names=list(LANDMARK_NAMES),
        conventions=dict(
            pose="camera yaw/pitch/roll in radians as in gmnr.render.camera: yaw > 0 moves the "
                 "camera towards world +x, pitch > 0 above the face, roll about the optical axis",
            camera_frame="OpenCV (x right, y down, z forward); look-at the world origin",
            intrinsics="fov_deg is the full horizontal field of view; square pixels",
            landmarks="pixel coordinates with pixel centres at i + 0.5; 'left' = smaller image x",
            depth="float32 camera-space z in world units, 0 where background",
            determinism="image i depends only on (seed, i) via numpy.random.default_rng([seed, i])",
        ))


def generate(out_dir: Path, count: int, resolution: int, seed: int, camera: SynthCamera,
             roll_std: float, progress: bool = True, num_threads: int | None = None) -> dict:
    """Write ``count`` images, depth maps, ground_truth.csv and meta.json under ``out_dir``.

    ``num_threads`` (optional) is passed to torch.set_num_threads for the duration of the
    call; by default the caller's setting is used. The four outputs are built in a staging folder
    and swapped in together (:mod:`gmnr.staging`): an interrupted run leaves the previous set
    whole, a rerun with a smaller count leaves no older image behind, and an ``out_dir`` that
    holds files synth did not write (someone's photos in ``images/``) is refused before any
    rendering. Returns count, seconds, seconds_per_image.
    """
    from gmnr.staging import StagedOutput
    if count < 0 or resolution <= 0:
        raise ValueError(f"need count >= 0 and resolution > 0, got {count}, {resolution}")
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with StagedOutput(out_dir, "synth", OUTPUTS, legacy=_legacy_claims) as staged:
            return _generate(staged.staging / "new", count, resolution, seed, camera, roll_std, progress)
    finally:
        torch.set_num_threads(previous_threads)


OUTPUTS = ("images", "depth", "ground_truth.csv", "meta.json")


def _legacy_claims(out_dir: Path) -> set[str] | None:
    """What a synth run from before output records can be shown to have written (its meta.json)."""
    meta = json.loads((Path(out_dir) / "meta.json").read_text())
    if meta.get("generator") != "gmnr.data.synth":
        return None
    n = int(meta["count"])
    return {"ground_truth.csv", "meta.json", *(f"images/{i:06d}.png" for i in range(n)),
            *(f"depth/{i:06d}.npy" for i in range(n))}


def _generate(out_dir: Path, count: int, resolution: int, seed: int, camera: SynthCamera,
              roll_std: float, progress: bool) -> dict:
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "depth").mkdir(parents=True, exist_ok=True)
    rows = []
    start = time.perf_counter()
    for i in tqdm(range(count), desc="synth", disable=not progress):
        r = render_view(seed, i, resolution, camera, roll_std)
        name = f"{i:06d}.png"
        _write_png(out_dir / "images" / name, r["rgb"])
        _atomic_write(out_dir / "depth" / f"{i:06d}.npy", lambda f: np.save(f, r["depth"]))
        lm = r["landmarks_2d"]
        rows.append([name, repr(r["yaw"]), repr(r["pitch"]), repr(r["roll"]), repr(r["radius"]),
                     r["identity_seed"]] + [repr(float(v)) for v in lm.reshape(-1)])
    seconds = time.perf_counter() - start

    def write_csv(f):
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(csv_columns())
        writer.writerows(rows)
        f.write(text.getvalue().encode())

    _atomic_write(out_dir / "ground_truth.csv", write_csv)
    meta = _meta(count, resolution, seed, camera, roll_std)
    _atomic_write(out_dir / "meta.json",
                  lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True).encode()))
    return dict(count=count, seconds=seconds, seconds_per_image=seconds / max(count, 1))


def contact_sheet(images: list[np.ndarray], ncols: int, pad: int = 2) -> np.ndarray:
    """Grid [rows*(H+pad)+pad, ncols*(W+pad)+pad, 3] uint8 of equally sized images."""
    assert images, "contact_sheet needs at least one image"
    h, w = images[0].shape[:2]
    for im in images:
        assert im.shape == (h, w, 3) and im.dtype == np.uint8, "images must be HxWx3 uint8, same size"
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    sheet = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y0:y0 + h, x0:x0 + w] = im
    return sheet
