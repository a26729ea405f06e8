"""Signed distance to a head in the local head frame (float32 points [3, N]).

The head is a few dozen rotated ellipsoids (cranium, face, jaw, nose, lips, eyeballs, hair)
blended with smooth minima and cut with smooth maxima (the lid openings, the hairline). All
distances are 1-Lipschitz bounds, which the sphere tracer (:mod:`gmnr.data.synth.tracer`) relies
on both to step safely and to prove that rays near a missing ray miss too.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from gmnr.data.synth.head import HeadParams

Tensor = torch.Tensor

# Local-frame bounding sphere that holds every visible part of a head (hair, ears, neck top).
BOUND_CENTER = (0.0, -0.35, -0.85)
BOUND_RADIUS = 2.95
_CHUNK = 16384  # points per SDF batch: keeps the [primitives, 3, points] temporaries cache-sized

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


def eye_uv(head: HeadParams, ax: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """2D coordinates centred on the (mirrored) eye, sheared so the outer corner is higher."""
    u = ax - head.eye_dx
    return u, y - head.eye_tilt * u


def eye_opening(head: HeadParams, u: Tensor, v: Tensor) -> Tensor:
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
        u, v = eye_uv(h, ax, y)
        cut = torch.maximum(eye_opening(h, u, v), (z - 0.1).abs() - 0.3)
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


def surface_z(head: HeadParams, x: float, y: float) -> float:
    """Depth of the front-most surface along the local -z ray through (x, y)."""
    sdf = HeadSDF(head)
    z = 1.5
    for _ in range(200):
        d = float(sdf(torch.tensor([[x], [y], [z]], dtype=torch.float32))[0])
        z -= d
        if abs(d) < 1e-5:
            break
    return z


def chunked(fn: Callable[[Tensor], Tensor], p: Tensor) -> Tensor:
    """Apply fn to points p [3, N] in cache-sized chunks, concatenating along the last dim."""
    if p.shape[1] <= _CHUNK:
        return fn(p)
    return torch.cat([fn(p[:, s:s + _CHUNK]) for s in range(0, p.shape[1], _CHUNK)], dim=-1)
