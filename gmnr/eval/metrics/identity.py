"""Identity consistency: the same latent rendered from two views, face-embedding cosine similarity.

Pairs: GMPI's protocol (``prepare_fake_data.py --task consistency``): two views per latent, each
drawn independently from the dataset's pose prior. Embedding back ends:

* ``arcface``: ArcFace through DeepFace (the published protocol), used when ``deepface`` is
  importable *and* its ArcFace weights are already on disk (``$DEEPFACE_HOME`` or ``~``, under
  ``.deepface/weights/arcface_weights.h5``); never downloaded here.
* ``dlib`` (offline default): dlib's ResNet 128-d face descriptor on the face aligned by dlib's
  5-point shape predictor (models from the ``face-recognition-models`` package, located on disk
  without importing it, so no ``pkg_resources``/setuptools pin is needed).

Faces are found by mediapipe (the render upsampled to ``detect_size``), falling back to dlib's
HOG detector; pairs where either view has no face are counted, not scored.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from gmnr.eval.metrics import EvalContext, nan_if_empty, render

DLIB_BACKEND = "dlib ResNet face descriptor v1 (128-d, face-recognition-models) on 5-point aligned chips"
ARCFACE_BACKEND = "ArcFace via DeepFace"


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of embeddings [N, D] and [N, D] -> [N] (or two vectors -> scalar)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-12)


def face_recognition_models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    path = Path(spec.origin).parent / "models" if spec and spec.origin else None
    if path is None or not (path / "dlib_face_recognition_resnet_model_v1.dat").is_file():
        raise FileNotFoundError("dlib face models not found: pip install face-recognition-models==0.3.0")
    return path


def arcface_weights() -> Path | None:
    """ArcFace weights of an existing DeepFace installation, or None (never downloaded)."""
    if importlib.util.find_spec("deepface") is None:
        return None
    home = Path(os.environ.get("DEEPFACE_HOME") or Path.home())
    path = home / ".deepface" / "weights" / "arcface_weights.h5"
    return path if path.is_file() else None


def choose_backend(requested: str = "auto") -> str:
    if requested == "arcface" and arcface_weights() is None:
        raise FileNotFoundError("evaluate.identity_backend is 'arcface' but DeepFace or its ArcFace weights "
                                "(~/.deepface/weights/arcface_weights.h5) are not installed")
    if requested == "auto":
        return "arcface" if arcface_weights() is not None else "dlib"
    return requested


class FaceEmbedder:
    """Face embedding of an RGB image: dlib (default) or ArcFace (adapter)."""

    def __init__(self, backend: str = "auto"):
        try:
            import dlib
        except ImportError as exc:
            raise RuntimeError(f"dlib is not importable ({exc}): pip install dlib-bin==20.0.1.post1") from None
        self.backend_name = choose_backend(backend)
        models = face_recognition_models_dir()
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._hog = None
        if self.backend_name == "dlib":
            self._rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
            self.backend = DLIB_BACKEND
        else:
            from deepface import DeepFace  # only reached when DeepFace and its weights exist
            self._deepface = DeepFace
            self.backend = ARCFACE_BACKEND

    def _rectangle(self, image: np.ndarray, landmarks: np.ndarray | None):
        dlib = self._dlib
        if landmarks is not None:
            x0, y0 = landmarks[:, 0].min(), landmarks[:, 1].min()
            x1, y1 = landmarks[:, 0].max(), landmarks[:, 1].max()
            return dlib.rectangle(int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))
        if self._hog is None:
            self._hog = dlib.get_frontal_face_detector()
        found = self._hog(image, 1)
        return max(found, key=lambda r: r.area()) if len(found) else None

    def embed(self, image: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray | None:
        """Embedding of the face in uint8 RGB ``image``; ``landmarks`` [K, >=2] in its pixels (e.g.
        mediapipe's) give the face box, else dlib's HOG detector looks. None when no face."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        rect = self._rectangle(image, landmarks)
        if rect is None:
            return None
        shape = self._shape(image, rect)
        if self.backend_name == "dlib":
            return np.asarray(self._rec.compute_face_descriptor(image, shape, 0), dtype=np.float64)
        chip = self._dlib.get_face_chip(image, shape, size=112, padding=0.25)
        rep = self._deepface.represent(chip[..., ::-1].copy(), model_name="ArcFace", detector_backend="skip",
                                       enforce_detection=False, align=False)
        return np.asarray(rep[0]["embedding"], dtype=np.float64)


def embed_images(embedder: FaceEmbedder, images: np.ndarray, detect_size: int = 256,
                 min_confidence: float = 0.5) -> list[np.ndarray | None]:
    """Embeddings (None where no face) of uint8 images [N, H, W, 3], faces found by mediapipe."""
    from gmnr.eval.metrics.face_geometry import FaceGeometry, upsample
    out = []
    with FaceGeometry(detect_size, min_confidence) as fg:
        for im in images:
            face = fg.detect(im)
            if face is not None:
                out.append(embedder.embed(face.upsampled, face.landmarks[:, :2] * face.scale))
            else:
                out.append(embedder.embed(upsample(np.asarray(im, np.uint8), detect_size)[0]))
    return out


class IdentityConsistency:
    name = "identity"

    def __init__(self, n_pairs: int, backend: str = "auto", detect_size: int = 256, min_confidence: float = 0.5):
        self.n_pairs, self.detect_size, self.min_confidence = n_pairs, detect_size, min_confidence
        self.embedder = FaceEmbedder(backend)
        self.backend = self.embedder.backend

    def compute(self, G, ctx: EvalContext) -> dict:
        n = self.n_pairs
        z = ctx.sample_latents(n, G.z_dim, stream=2)
        yaw, pitch = ctx.sample_poses(2 * n, stream=2)  # two independent draws from the prior per latent
        z2 = z.repeat_interleave(2, 0)
        images = render(G, z2, ctx.cam2world(yaw, pitch), ctx)
        emb = embed_images(self.embedder, images, self.detect_size, self.min_confidence)
        sims = [float(cosine_similarity(emb[2 * i], emb[2 * i + 1])) for i in range(n)
                if emb[2 * i] is not None and emb[2 * i + 1] is not None]
        detected = sum(e is not None for e in emb)
        return {"identity_similarity": nan_if_empty(sims), "identity_n_pairs": n, "identity_n_scored": len(sims),
                "identity_detection_rate": detected / (2 * n) if n else float("nan"),
                "identity_pair_protocol": "GMPI: two views per latent, each drawn from the pose prior",
                "backend": self.backend}
