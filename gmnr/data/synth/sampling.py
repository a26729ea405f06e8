"""Random identities: proportions around the mean landmark layout, colours and a key light.

``sample_head(rng)`` draws everything from ``rng`` in a fixed order, so an identity is a
function of the generator's seed (the dataset writer seeds it per image).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from gmnr.data.face_layout import MEAN_LANDMARKS_3D
from gmnr.data.synth.geometry import surface_z
from gmnr.data.synth.head import RGB, HeadParams

_MEAN_EYE_MID = 0.5 * (MEAN_LANDMARKS_3D[0] + MEAN_LANDMARKS_3D[1])

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
    return dataclasses.replace(head, mouth_z=surface_z(head, head.mouth_dx, -head.mouth_y))

