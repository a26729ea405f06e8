"""The mean 3D layout of the five MTCNN landmarks, in gmnr world units.

One layout serves two jobs: the built-in pose estimator solves PnP against it, and the
procedural demo heads are built around it (each identity perturbs it), so the demo has the
proportions of a human face and the estimator is not tuned to the demo.

Proportions: a generic human 5-point model (eye centres, nose tip, mouth corners) with an
inter-ocular distance (IOD) of about 63 mm, eye line to nose tip 0.52 IOD, nose tip to mouth
corners 0.45 IOD, nose tip 0.41 IOD in front of the eyes.
Scale and placement follow the FFHQ alignment seen through the GMPI camera (fov 12.6 deg,
radius 1, look-at point at the origin): FFHQ crops a square of side 4 IOD centred 0.1 of the
eye-to-mouth vector below the eye midpoint, and at distance 1 the image spans
2 tan(6.3 deg) = 0.2208 units, so IOD = 0.0552 units; the nose tip sits 0.05 in front of the
origin (GMPI's nearest MPI plane is at depth 0.95).
Order and naming follow MTCNN: "left" is the landmark with the smaller image x in a frontal
view, which for our camera convention (image x = world +x) is the one at world -x.
"""
import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

IOD = 0.0552
_EYE_Y = 0.006
_NOSE_Z = 0.05

MEAN_LANDMARKS_3D = np.array([
    [-0.5 * IOD, _EYE_Y, _NOSE_Z - 0.41 * IOD],                        # left eye centre
    [+0.5 * IOD, _EYE_Y, _NOSE_Z - 0.41 * IOD],                        # right eye centre
    [0.0, _EYE_Y - 0.52 * IOD, _NOSE_Z],                               # nose tip
    [-0.455 * IOD, _EYE_Y - 0.97 * IOD, _NOSE_Z - 0.38 * IOD],         # mouth, left corner
    [+0.455 * IOD, _EYE_Y - 0.97 * IOD, _NOSE_Z - 0.38 * IOD],         # mouth, right corner
], dtype=np.float64)
