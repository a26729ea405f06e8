"""Sphere tracing of one head through a pinhole camera: image, depth and mask.

Rays are traced in the local head frame (:mod:`gmnr.data.synth.head`), in plain float32 torch on
the CPU. :func:`render_head` is the entry point; it makes three kinds of trace: a coarse
pre-pass that bounds where full-resolution rays can hit, the full-resolution pass, and
sub-pixel re-traces of edge pixels for anti-aliasing.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gmnr.data.synth.geometry import BOUND_CENTER, BOUND_RADIUS, HeadSDF, chunked
from gmnr.data.synth.head import HeadParams, unit_length
from gmnr.data.synth.shading import BACKGROUND, background, shade_surface
from gmnr.render.camera import pixel_rays

Tensor = torch.Tensor

_MARCH_STEPS = 64
_MAX_EPS = 5e-3  # local units (~0.3 mm): upper bound of the hit tolerance, keeps depth exact


def _bound_interval(o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Entry/exit distances [N] of rays o [3] + t d [3, N] through the bounding sphere.

    Missing rays get an empty interval (entry > exit).
    """
    oc = o - torch.tensor(BOUND_CENTER, dtype=o.dtype)
    b = oc @ d
    disc = b * b - (float(oc @ oc) - BOUND_RADIUS ** 2)
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
        dist = chunked(sdf, torch.addcmul(o, dd, t))
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
            rgb[i], material[i] = shade_surface(head, sdf, p, d[:, i])
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
    o = (origins[0, 0, 0] - torch.tensor(head.anchor, dtype=torch.float32)) / unit_length(head)
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
        t_max = float((o - torch.tensor(BOUND_CENTER)).norm()) + BOUND_RADIUS
        spacing = factor * t_max / float(k[0, 0])
        t_start, skip = _neighbourhood(coarse["t"].view(hc, wc), coarse["min_d"].view(hc, wc),
                                       factor, height, width, margin=0.08, clearance=1.3 * spacing)
    out = _trace(head, sdf, o, d, eps_per_t, t_start, skip)
    mask = out["hit"].view(height, width)
    bg = background(head, height, width)
    rgb = torch.where(mask[..., None], out["srgb"].view(height, width, 3), bg)
    t_map = out["t"].view(height, width)
    if antialias:
        edge = _edge_pixels(out["material"].view(height, width), t_map)
        rgb = _antialias(head, sdf, cam2world, k, rgb, edge, bg, t_map, eps_per_t)
    forward = cam2world[:3, 2]
    depth = t_map * (forward @ d).view(height, width) * unit_length(head)   # local t -> camera z
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

