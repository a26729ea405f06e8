"""One synthetic identity: its parameters and its five ground-truth landmarks.

Lengths are in the *local head frame*: origin at the eye midpoint, axes parallel to the world
axes (x right in a frontal image, y up, z towards a frontal camera), unit = one inter-ocular
distance of the identity, so ``world = anchor + IOD * scale * local`` (:func:`unit_length`).
The landmarks are placed in that frame by construction (see :mod:`gmnr.data.synth`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gmnr.data.face_layout import IOD, LANDMARK_NAMES

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



def _local_landmarks(head: HeadParams) -> np.ndarray:
    """The five landmarks [5, 3] in the local head frame (order of LANDMARK_NAMES)."""
    return np.array([[-head.eye_dx, 0.0, 0.0], [head.eye_dx, 0.0, 0.0],
                     [0.0, -head.nose_y, head.nose_z],
                     [-head.mouth_dx, -head.mouth_y, head.mouth_z],
                     [head.mouth_dx, -head.mouth_y, head.mouth_z]], dtype=np.float64)


def unit_length(head: HeadParams) -> float:
    """World length of one local unit."""
    return IOD * head.scale


def head_landmarks_3d(head: HeadParams) -> np.ndarray:
    """Ground-truth world landmarks [5, 3] (left_eye, right_eye, nose, mouth_left, mouth_right)."""
    out = np.asarray(head.anchor)[None, :] + unit_length(head) * _local_landmarks(head)
    assert out.shape == (5, 3) and len(LANDMARK_NAMES) == 5
    return out
