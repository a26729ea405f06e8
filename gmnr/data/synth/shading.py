"""Materials, painted albedo and lighting of the synthetic heads, and their backdrop.

Shape and colour are separate on purpose: the SDF (:mod:`gmnr.data.synth.geometry`) carries no
facial detail finer than the lid openings; lips, mouth line, brows, lashes and nostrils are
painted here as 2D patterns tied to the landmark parameters, so what a detector sees at the
mouth corners and eye centres is where the ground truth puts them.
"""
from __future__ import annotations

import math

import torch

from gmnr.data.synth.geometry import HeadSDF, chunked, eye_opening, eye_uv
from gmnr.data.synth.head import HeadParams

Tensor = torch.Tensor

# Materials written into the per-pixel id map.
BACKGROUND, SKIN, HAIR, EYE = 0, 1, 2, 3


def _surface_frame(sdf: HeadSDF, p: Tensor, e: float = 0.004) -> tuple[Tensor, Tensor]:
    """Unit normal [3, N] (tetrahedron-stencil SDF gradient) and material [N] at points p [3, N].

    The material comes from the same four taps (their mean is the component distance at p up
    to O(e^2)), so it costs no extra SDF evaluation.
    """
    taps = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=p.dtype)
    n = p.shape[1]
    probe = (p[None] + e * taps[:, :, None]).permute(1, 0, 2).reshape(3, 4 * n)
    parts = chunked(lambda q: torch.stack(sdf.components(q)), probe).view(3, 4, n)
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
    gap = (hs[:, None] - chunked(sdf, probe).view(3, n)).clamp_min(0.0)
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
    u, v = eye_uv(head, ax, y)
    d_eye = eye_opening(head, u, v)
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


def shade_surface(head: HeadParams, sdf: HeadSDF, p: Tensor, view: Tensor) -> tuple[Tensor, Tensor]:
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


def background(head: HeadParams, height: int, width: int) -> Tensor:
    """sRGB [H, W, 3] vertical gradient with a soft vignette."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    top, bottom = torch.tensor(head.background_top), torch.tensor(head.background_bottom)
    col = top + (bottom - top) * ys[:, None, None]
    vignette = 1.0 - 0.25 * ((xs[None, :] - 0.5) ** 2 + (ys[:, None] - 0.5) ** 2)
    return (col * vignette[..., None]).expand(height, width, 3)

