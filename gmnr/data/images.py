"""The one way every stage lists and reads images (no torch, no TensorFlow).

Every stage that decodes a user's image goes through :func:`read_image`, so landmarks, pose and
pack see the same pixels:

* only regular files are opened (a FIFO or device named ``x.png`` would hang or never end), and
  without following them into hidden or symlinked folders when listing;
* the pixel count in the header is checked against ``images.max_pixels`` *before* anything is
  decoded (a 300 KB PNG can declare 10000 x 10000 pixels: 300 MB decoded, gigabytes in a face
  detector), and refused with the reason;
* modes are converted explicitly: 16-bit grey is scaled (Pillow's own ``convert("RGB")`` clips
  it to white), CMYK goes through Pillow's colour conversion (Adobe's inverted JPEGs included),
  palette, grey+alpha and RGBA images are composited over white rather than having their alpha
  dropped (so what is transparent does not decide the colour), EXIF orientation is applied;
* non-square images are centre-cropped to a square or refused (``images.non_square``), and
  the caller learns which happened so it can count it.
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from gmnr.io import atomic_write

# The one list of image file types. ``gmnr download`` collects the formats face datasets ship in;
# the stages also read BMP, which a user's own photos may be (download keeps its narrower list so
# a dataset prepares the same files it always did).
DATASET_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
IMAGE_SUFFIXES = (*DATASET_IMAGE_SUFFIXES, ".bmp")
DEFAULT_MAX_PIXELS = 25_000_000  # params images.max_pixels; 5000 x 5000, far above any face dataset


class ImageRefused(ValueError):
    """A file the pipeline will not decode, by policy; ``status`` is the table status it gets."""

    def __init__(self, path: Path, reason: str, status: str = "refused"):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.status = Path(path), reason, status


@dataclass(frozen=True)
class ImagePolicy:
    """How images are read: the pixel cap and what happens to non-square images
    (``crop``: centre crop; ``refuse``; ``keep``: as they are, for callers that do not need squares)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    non_square: str = "keep"

    @classmethod
    def from_params(cls, params) -> "ImagePolicy":
        return cls(params.images.max_pixels, params.images.non_square)


@dataclass(frozen=True)
class LoadedImage:
    rgb: np.ndarray               # H x W x 3 uint8, after the policy (cropped when it says so)
    source_size: tuple[int, int]  # (width, height) in the file, after EXIF orientation
    cropped: bool


def image_root(folder: Path) -> Path:
    """``folder/images`` when it exists (the layout every stage writes), else ``folder``."""
    folder = Path(folder)
    return folder / "images" if (folder / "images").is_dir() else folder


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive), sorted by their relative path. Hidden files and
    folders (``.x``: editor and OS clutter, the stages' own staging folders) and symlinked folders
    (loops, trees outside the dataset) are not entered; a symlink to a file is listed and later
    read only if it points at a regular file."""
    root = image_root(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def open_regular(path: Path):
    """A binary file object for ``path`` if it is a regular file (symlinks followed), else
    :class:`ImageRefused`. Opened non-blocking, so a FIFO cannot hang the open itself."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ImageRefused(path, f"cannot be opened ({exc.strerror})", "unreadable") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageRefused(path, "is not a regular file (a device, FIFO or socket); not read")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _to_rgb(img) -> np.ndarray:
    """Any Pillow mode -> H x W x 3 uint8, with the conversions described in the module doc."""
    from PIL import Image
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grey: scale to 8 bits; Pillow's convert() would clip to 255.
        a = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max(initial=0) <= 65535 else float(a.max())
        grey = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.round((a if a.max(initial=0) > 1.0 else a * 255.0)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "P" and "transparency" in img.info or mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK (Adobe-inverted handled by the JPEG plugin), YCbCr, LAB, HSV
    return np.asarray(img, dtype=np.uint8)


def _centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def read_image(path: Path, policy: ImagePolicy | None = None) -> LoadedImage:
    """Decode one image under ``policy``. Raises :class:`ImageRefused` (policy: too many pixels,
    not a regular file, non-square when refused) or another exception for a corrupt file."""
    from PIL import Image, ImageOps
    policy = policy or ImagePolicy()
    path = Path(path)
    with open_regular(path) as f, warnings.catch_warnings():
        # We check the pixel count ourselves, against our cap, before decoding; Pillow's own
        # warning (above its default) is noise here, its error (twice that) a refusal like ours.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(f)
        except Image.DecompressionBombError as exc:
            raise ImageRefused(path, f"refused before decoding: {exc}", "too_large") from None
        with img:
            width, height = img.size
            if width * height > policy.max_pixels:
                raise ImageRefused(path, f"{width} x {height} = {width * height} pixels exceeds images.max_pixels "
                                         f"= {policy.max_pixels}; not decoded (a decompression bomb, or raise the "
                                         f"cap)", "too_large")
            img.load()
            img = ImageOps.exif_transpose(img) or img
            size = img.size
            cropped = False
            if size[0] != size[1] and policy.non_square != "keep":
                if policy.non_square == "refuse":
                    raise ImageRefused(path, f"is {size[0]} x {size[1]}, not square, and images.non_square is "
                                             f"'refuse'", "non_square")
                img = img.crop(_centre_square(*size))
                cropped = True
            rgb = _to_rgb(img)
    return LoadedImage(np.ascontiguousarray(rgb), size, cropped)


def read_rgb(path: Path, policy: ImagePolicy | None = None) -> np.ndarray:
    """H x W x 3 uint8 (see :func:`read_image`); raises on unreadable or refused files."""
    return read_image(path, policy).rgb


def unique_names(ids: list[str], suffix: str, flat: bool = True) -> tuple[dict[str, str], list[str]]:
    """File names derived from image ids (relative paths) that never collide.

    ``sub/x.png`` becomes ``sub_x<suffix>`` (``flat``) or ``sub/x<suffix>``; ``x.jpg`` and ``x.png``,
    or ``sub/x.png`` and ``sub_x.png``, would share one name, so in sorted id order the first keeps
    it and the others get ``-1``, ``-2``, ... (compared case-insensitively: the set must survive a
    case-insensitive file system). Returns the mapping and the ids that were renamed.
    """
    used: set[str] = set()
    names: dict[str, str] = {}
    renamed: list[str] = []
    for image_id in sorted(ids):
        rel = PurePosixPath(image_id)
        stem = rel.with_suffix("").as_posix()
        if flat:
            stem = stem.replace("/", "_")
        candidate, n = stem, 0
        while (candidate + suffix).lower() in used:
            n += 1
            candidate = f"{stem}-{n}"
        if n:
            renamed.append(image_id)
        used.add((candidate + suffix).lower())
        names[image_id] = candidate + suffix
    return names, renamed


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write a PNG through a temporary name so a killed stage never leaves half a file."""
    import imageio.v3 as iio

    atomic_write(path, lambda tmp: iio.imwrite(tmp, image, extension=".png"))


def relative_name(path: Path, folder: Path) -> str:
    """The id an image keeps through every stage: its path relative to the image root."""
    return path.relative_to(image_root(folder)).as_posix()


def contact_sheet(images: list[np.ndarray], ncols: int = 6, pad: int = 2) -> np.ndarray:
    """Tile H x W x 3 uint8 images (same size) into one grid image with a dark border."""
    assert images and all(im.shape == images[0].shape and im.ndim == 3 for im in images), \
        "contact_sheet needs a non-empty list of equally sized H x W x 3 images"
    h, w, _ = images[0].shape
    nrows = -(-len(images) // ncols)
    sheet = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 30, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return sheet
