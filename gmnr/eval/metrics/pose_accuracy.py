"""Pose accuracy: MSE (rad^2) between the head pose estimated from a render and the commanded pose.

Estimator (offline): mediapipe's 5 landmarks (iris centres, nose tip, mouth corners) fitted by the
project's own pose estimator (:func:`gmnr.preprocess.pose.fit_pose`, the look-at camera of the
dataset with its intrinsics), i.e. the estimator that labelled the training set, as GMPI uses
Deep3DFaceRecon for both. ``pose_mse`` is the mean over images and over (yaw, pitch) of the
squared angle error; GMPI also adds roll against 0 (our commanded roll is 0; roll is reported
separately as ``pose_roll_mse``).
"""
from __future__ import annotations

import numpy as np

from gmnr.eval.metrics import EvalContext, nan_if_empty, render

BACKEND = "mediapipe FaceLandmarker 5 points + gmnr builtin look-at pose fit"


def pose_mse(estimated: np.ndarray, commanded: np.ndarray) -> float:
    """Mean squared error (rad^2) of angles [N, K] (e.g. K = 2: yaw, pitch); NaN when N = 0."""
    e, c = np.asarray(estimated, np.float64), np.asarray(commanded, np.float64)
    if e.shape != c.shape:
        raise ValueError(f"shape mismatch {e.shape} vs {c.shape}")
    return float(np.mean((e - c) ** 2)) if e.size else float("nan")


def estimate_pose(five: np.ndarray, resolution: int, ctx: EvalContext) -> dict:
    """Camera yaw/pitch/roll (radians, gmnr convention) from 5 landmarks [5, 2] in a square image."""
    from gmnr.preprocess.pose import CameraModel, _camera, fit_pose, pose_from_cam2world
    from gmnr.render.camera import intrinsics_from_fov
    camera = CameraModel(ctx.fov_deg, ctx.radius, tuple(ctx.center))
    k = intrinsics_from_fov(ctx.fov_deg, resolution).double().numpy()
    x, rms = fit_pose(np.asarray(five, np.float64), k, camera, 0.05, 0.04)
    out = pose_from_cam2world(_camera(x, camera), camera)
    iod = max(float(np.linalg.norm(five[1] - five[0])), 1e-6)
    return {"yaw": out["yaw"], "pitch": out["pitch"], "roll": out["roll"], "reprojection_iod": rms / iod}


class GeometryRenders:
    """One shared set of single-view renders (latent, commanded pose, image, depth, face) that the
    pose and depth metrics both read, so the landmarker runs once per image."""

    def __init__(self, n_images: int, detect_size: int = 256, min_confidence: float = 0.5):
        self.n_images, self.detect_size, self.min_confidence = n_images, detect_size, min_confidence
        self._key = None
        self.data: dict | None = None

    def get(self, G, ctx: EvalContext) -> dict:
        if self._key == id(G) and self.data is not None:
            return self.data
        from gmnr.eval.metrics.face_geometry import FaceGeometry
        z = ctx.sample_latents(self.n_images, G.z_dim, stream=3)
        yaw, pitch = ctx.sample_poses(self.n_images, stream=3)
        images, depths = render(G, z, ctx.cam2world(yaw, pitch), ctx, with_depth=True)
        with FaceGeometry(self.detect_size, self.min_confidence) as fg:
            faces = [fg.detect(im) for im in images]
        self._key, self.data = id(G), dict(yaw=yaw.numpy(), pitch=pitch.numpy(), images=images, depths=depths,
                                           faces=faces)
        return self.data


class PoseAccuracy:
    name = "pose"
    backend = BACKEND

    def __init__(self, renders: GeometryRenders):
        self.renders = renders

    def compute(self, G, ctx: EvalContext) -> dict:
        data = self.renders.get(G, ctx)
        est, cmd, roll = [], [], []
        for face, y, p, im in zip(data["faces"], data["yaw"], data["pitch"], data["images"]):
            if face is None:
                continue
            pose = estimate_pose(face.five, im.shape[0], ctx)
            est.append([pose["yaw"], pose["pitch"]])
            cmd.append([y, p])
            roll.append(pose["roll"] ** 2)
        n = len(data["faces"])
        return {"pose_mse": pose_mse(np.array(est).reshape(-1, 2), np.array(cmd).reshape(-1, 2)),
                "pose_roll_mse": nan_if_empty(roll), "pose_n_images": n, "pose_n_detected": len(est),
                "face_detection_rate": len(est) / n if n else float("nan"), "backend": self.backend}
