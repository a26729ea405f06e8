"""Depth consistency: the generator's depth against a face-geometry estimate of the render.

GMPI's protocol (``compute_geometry.py``): normalise both depths over the face pixels to zero
mean and unit standard deviation and take the MSE. Deep3DFaceRecon (GMPI's estimator) needs the
Basel Face Model, which cannot be downloaded here, so the offline estimate is mediapipe's 478
face landmarks: their relative depth z (on the scale of x; smaller = nearer the camera, like
camera depth) against the generator's depth at the same pixels. The face mask
is thereby the set of landmark positions. The metric is scale- and offset-invariant:
``normalized_depth_mse(d, a * d + b) = 0`` for any a > 0; it is ``2 (1 - correlation)``, so 0 is
perfect, 2 is unrelated, 4 is inverted.
"""
from __future__ import annotations

import numpy as np

from gmnr.eval.metrics import EvalContext, nan_if_empty
from gmnr.eval.metrics.pose_accuracy import GeometryRenders

BACKEND = "mediapipe FaceLandmarker 478-landmark relative depth (GMPI normalised MSE)"


def normalize(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, np.float64)
    return (v - v.mean()) / (v.std() + 1e-8)


def normalized_depth_mse(depth: np.ndarray, reference: np.ndarray) -> float:
    """MSE of the two depth samples [N] after each is normalised to mean 0, std 1 (GMPI)."""
    d, r = np.asarray(depth, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    if d.shape != r.shape:
        raise ValueError(f"shape mismatch {d.shape} vs {r.shape}")
    if d.size < 2:
        return float("nan")
    return float(np.mean((normalize(d) - normalize(r)) ** 2))


def sample_nearest(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Values of image [H, W] at the pixels containing positions xy [N, 2] (pixel i spans [i, i + 1)).

    Nearest, not bilinear: at the demo's 64 px a landmark on the face outline is often one pixel
    from the background, and interpolating across that edge invents depths that belong to neither.
    """
    h, w = image.shape
    x = np.clip(np.floor(np.asarray(xy[:, 0], np.float64)).astype(int), 0, w - 1)
    y = np.clip(np.floor(np.asarray(xy[:, 1], np.float64)).astype(int), 0, h - 1)
    return image[y, x]


def depth_error(depth_map: np.ndarray, landmarks: np.ndarray) -> float:
    """Normalised MSE between a depth map [H, W] and landmark depths (landmarks [K, 3]: x, y, z)
    at the landmarks that fall inside the image and on valid (> 0) depth."""
    h, w = depth_map.shape
    inside = (landmarks[:, 0] >= 0) & (landmarks[:, 0] < w) & (landmarks[:, 1] >= 0) & (landmarks[:, 1] < h)
    pts = landmarks[inside]
    d = sample_nearest(depth_map, pts[:, :2])
    valid = d > 1e-8
    return normalized_depth_mse(d[valid], pts[valid, 2])


class DepthConsistency:
    name = "depth"
    backend = BACKEND

    def __init__(self, renders: GeometryRenders):
        self.renders = renders

    def compute(self, G, ctx: EvalContext) -> dict:
        data = self.renders.get(G, ctx)
        errs = [depth_error(d, f.landmarks) for d, f in zip(data["depths"], data["faces"]) if f is not None]
        errs = [e for e in errs if np.isfinite(e)]
        return {"depth_mse": nan_if_empty(errs), "depth_n_images": len(errs), "backend": self.backend}
