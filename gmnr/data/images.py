"""Listing and reading images without ever dying on one bad file (no torch, no TensorFlow)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_root(folder: Path) -> Path:
    """``folder/images`` when it exists (the layout every stage writes), else ``folder``."""
    folder = Path(folder)
    return folder / "images" if (folder / "images").is_dir() else folder


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive), sorted by their relative path."""
    root = image_root(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8. Grey images are repeated, alpha is dropped; raises on unreadable files."""
    import imageio.v3 as iio

    img = np.asarray(iio.imread(path))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"{path}: expected an RGB(A) or grey image, got array shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8) \
            if np.issubdtype(img.dtype, np.integer) else np.clip(img * 255, 0, 255).astype(np.uint8)
    return img


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write a PNG through a temporary name so a killed stage never leaves half a file."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    iio.imwrite(tmp, image, extension=".png")
    tmp.replace(path)


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
